"""``tiny-synth``: a procedural two-class dataset with object masks for smoke runs and tests.

Class 0 ("square") mostly on a blue background, class 1 ("disc") mostly on a green one, in the
``train`` split; the ``target`` split flips the backgrounds (the shifted domain). Items follow the
:class:`~advprompts.data.folder.FolderDataset` format. Nothing is read from disk.
"""

from __future__ import annotations

import torch

from advprompts.data.folder import register_dataset

CLASS_NAMES = {0: "square", 1: "disc"}
_BACKGROUNDS = {"blue": (0.15, 0.3, 0.8), "green": (0.2, 0.7, 0.25)}


class TinySynth(torch.utils.data.Dataset):
    """``n`` seeded procedural images of ``image_size`` pixels for ``split`` in {train, target}."""

    def __init__(self, split: str | None = None, image_size: int | None = None, n: int = 16, seed: int = 0):
        self.split = split or "train"
        if self.split not in ("train", "target"):
            from advprompts.errors import DataError

            raise DataError(f"tiny-synth has splits train and target, not {self.split!r}")
        self.size, self.n, self.seed = image_size or 16, n, seed
        self.class_names = dict(CLASS_NAMES)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> dict:
        g = torch.Generator().manual_seed(self.seed * 100_003 + index + (0 if self.split == "train" else 50_000))
        s = self.size
        label = index % 2
        place = ("blue" if label == 0 else "green") if self.split == "train" else ("green" if label == 0 else "blue")
        image = torch.tensor(_BACKGROUNDS[place]).view(3, 1, 1).expand(3, s, s).clone()
        image += 0.08 * torch.randn(3, s, s, generator=g)
        r = max(2, s // 4 + int(torch.randint(-1, 2, (1,), generator=g)))
        cy, cx = (int(v) for v in torch.randint(r, s - r, (2,), generator=g))
        yy, xx = torch.meshgrid(torch.arange(s), torch.arange(s), indexing="ij")
        if label == 0:
            mask = ((yy - cy).abs() <= r) & ((xx - cx).abs() <= r)
        else:
            mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        colour = torch.tensor((0.9, 0.85, 0.1) if label == 0 else (0.85, 0.15, 0.1)).view(3, 1, 1)
        image = torch.where(mask[None], colour.expand(3, s, s), image).clamp(0, 1)
        return {"image": image, "mask": mask[None].float(), "dense": None, "label": label,
                "label_name": CLASS_NAMES[label], "file_name": f"{self.split}/{index:04d}.png", "group":
                f"{CLASS_NAMES[label]}-{place}", "place": place, "location": "", "time": "", "split": self.split,
                "mask_file": "", "depth_file": "", "caption": ""}


@register_dataset("tiny-synth")
def tiny_synth(split: str | None = None, image_size: int | None = None) -> TinySynth:
    return TinySynth(split=split, image_size=image_size)

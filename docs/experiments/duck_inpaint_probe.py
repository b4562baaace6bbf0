"""Probe: how often does the inpainting generator keep a pasted duck as the only object? 64 waterbirds-synth
train ducks (seed 0) are inpainted by a zoo's 9-channel UNet through diffusers' StableDiffusionInpaintPipeline
(15 DDIM steps, paste-back), and the oracle names the object of each image: a second object painted beside
the duck shows up as another answer (usually dikdik or sparrow).

    python docs/experiments/duck_inpaint_probe.py [--zoo DIR] [--cfg 7] [--negative TEXT] [--ceiling] \
        ["a photo of a bird in nature" ...]

Without prompts: the five of FINDINGS ("a photo of a bird in" nature, the snow, a desert, a bamboo forest,
a forest). `--ceiling` also pastes the same ducks (and 64 sparrows) onto empty renders of every place: what
the oracle makes of pasted birds with no generator involved. Grids go to `--grids` (default: none).
"""

import argparse
from pathlib import Path

import numpy as np
import torch

from advprompts.data.folder import FolderDataset
from advprompts.world.benchmarks import cached_export
from advprompts.world.places import PLACES
from advprompts.world.render import random_scene, render
from advprompts.zoo.corpus import OBJECT_NAMES
from advprompts.zoo.oracle import Oracle
from advprompts.zoo.paths import zoo_dir

PROMPTS = [f"a photo of a bird in {p}" for p in ("nature", "the snow", "a desert", "a bamboo forest", "a forest")]


def birds(label: int, n: int = 64):
    ds = FolderDataset(cached_export("waterbirds-synth"), split="train")
    idx = [i for i in range(len(ds)) if int(ds.rows[i]["label"]) == label]
    items = [ds[int(i)] for i in np.random.default_rng(0).choice(idx, n, replace=False)]
    return torch.stack([it["image"] for it in items]), torch.stack([it["mask"] for it in items]).float()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("prompts", nargs="*", default=PROMPTS)
    ap.add_argument("--zoo", type=Path, default=None)
    ap.add_argument("--cfg", type=float, default=7.0)
    ap.add_argument("--negative", default=None)
    ap.add_argument("--ceiling", action="store_true")
    ap.add_argument("--grids", type=Path, default=None)
    args = ap.parse_args()
    from diffusers import StableDiffusionInpaintPipeline, StableDiffusionPipeline, UNet2DConditionModel

    zoo = args.zoo or zoo_dir()
    oracle = Oracle.load(zoo / "oracle")
    names = [*OBJECT_NAMES, "empty"]
    x, m = birds(1)
    if args.ceiling:
        for label, bird in ((1, "duck"), (0, "sparrow")):
            bx, bm = birds(label)
            kept = []
            for place in PLACES:
                rng = np.random.default_rng(1)
                bg = np.stack([render(random_scene(rng, None, place))[0] for _ in range(len(bx))])
                comp = bm * bx + (1 - bm) * torch.from_numpy(bg).permute(0, 3, 1, 2).float() / 255
                kept.append(float(np.mean(oracle.predict(comp)["object"] == OBJECT_NAMES.index(bird))))
            print(f"pasted {bird} on empty renders: " + " ".join(f"{p} {k:.2f}" for p, k in zip(PLACES, kept)),
                  f"| mean {np.mean(kept):.3f}")
    pipe = StableDiffusionPipeline.from_pretrained(zoo / "sd", torch_dtype=torch.float32)
    unet = UNet2DConditionModel.from_pretrained(zoo / "sd" / "unet_inpaint", torch_dtype=torch.float32)
    inpaint = StableDiffusionInpaintPipeline(**{**pipe.components, "unet": unet})
    inpaint.set_progress_bar_config(disable=True)
    kept = []
    for prompt in args.prompts:
        out = inpaint([prompt] * len(x), image=x, mask_image=1 - m, num_inference_steps=15, guidance_scale=args.cfg,
                      negative_prompt=[args.negative] * len(x) if args.negative else None, strength=1.0,
                      height=x.shape[-2], width=x.shape[-1], generator=torch.Generator().manual_seed(0),
                      output_type="pt").images.float().clamp(0, 1)
        out = m * x + (1 - m) * out
        pred = oracle.predict(out)["object"]
        kept.append(float(np.mean(pred == OBJECT_NAMES.index("duck"))))
        other = np.bincount(pred[pred != OBJECT_NAMES.index("duck")], minlength=len(names))
        print(f"{prompt!r} (CFG {args.cfg:g}): duck kept {kept[-1]:.3f}; instead " +
              (", ".join(f"{names[k]} {c}" for k, c in enumerate(other) if c) or "-"), flush=True)
        if args.grids:
            from torchvision.utils import save_image

            args.grids.mkdir(parents=True, exist_ok=True)
            save_image(out[:32], args.grids / f"{prompt.replace(' ', '_')}.png", nrow=8)
    print(f"mean duck kept over {len(kept)} prompts: {np.mean(kept):.3f}")


if __name__ == "__main__":
    main()

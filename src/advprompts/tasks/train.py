"""Train, fine-tune and evaluate task classifiers with one recipe shared by every method.

A split is held in memory as uint8 tensors (:class:`Tensors`; 4,800 Waterbirds images at 224 px
are 0.7 GB) and batches are cut from them and moved to the model's device: no per-sample I/O.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

logger = logging.getLogger(__name__)


class TrainRecipe(BaseModel):
    """How a classifier is trained (from scratch) or fine-tuned (from the base model)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    epochs: int = Field(20, ge=1)                  # passes over the training set (train + extra)
    lr: float = Field(2e-3, gt=0)                  # AdamW peak learning rate (one-cycle schedule)
    weight_decay: float = Field(5e-4, ge=0)        # AdamW weight decay
    batch_size: int = Field(64, ge=1)              # images per step
    mode: Literal["full", "last_layer"] = "full"   # fine-tune every weight, or only the classifier head
    flip: bool = True                              # random horizontal flips
    blur: float = Field(0.0, ge=0, le=1)           # probability of a random Gaussian blur (sigma 0.3-1.5): makes
                                                   # the model indifferent to the generator's softer textures
    extra_weight: float = Field(1.0, gt=0)         # sampling weight of an extra image relative to a train image
    autocast: Literal["bf16"] | None = None        # bfloat16 autocast of forward and backward (opt-in fast path,
                                                   # not bit-identical; docs/performance.md measures it)
    channels_last: bool = False                    # channels-last convolutions (opt-in; pays together with bf16)


@dataclass
class Tensors:
    """A labelled split in memory: images (N, 3, H, W) uint8 (or float in [0, 1]), labels (N,), groups."""

    images: torch.Tensor
    labels: torch.Tensor
    groups: list[str] = field(default_factory=list)
    augment: torch.Tensor | None = None  # bool (N,): apply the extra-data augmentation to this sample

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, idx) -> "Tensors":
        idx = torch.as_tensor(idx, dtype=torch.long)
        return Tensors(self.images[idx], self.labels[idx], [self.groups[i] for i in idx.tolist()] if self.groups else [],
                       None if self.augment is None else self.augment[idx])

    @staticmethod
    def concat(parts: list["Tensors"]) -> "Tensors":
        parts = [p for p in parts if len(p)]
        aug = [p.augment if p.augment is not None else torch.zeros(len(p), dtype=torch.bool) for p in parts]
        return Tensors(torch.cat([p.images for p in parts]), torch.cat([p.labels for p in parts]),
                       sum((p.groups or [""] * len(p) for p in parts), []), torch.cat(aug))


def load_tensors(spec, split: str | None = None, image_size: int | None = 64) -> Tensors:
    """Load a dataset (spec string, folder, or dataset object) into memory as uint8."""
    from advprompts.data import resolve_dataset

    ds = resolve_dataset(str(spec), split=split, image_size=image_size) if isinstance(spec, (str, Path)) else spec
    images, labels, groups = [], [], []
    for i in range(len(ds)):
        it = ds[i]
        images.append((it["image"] * 255).round().to(torch.uint8))
        labels.append(it["label"])
        groups.append(it.get("group", ""))
    return Tensors(torch.stack(images), torch.tensor(labels), groups)


def as_float(images: torch.Tensor, device: torch.device | str = "cpu") -> torch.Tensor:
    """A batch in [0, 1] float32 on ``device`` (uint8 storage is converted on the way)."""
    images = images.to(device)
    return images.float() / 255 if images.dtype == torch.uint8 else images.float()


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def _head(model: torch.nn.Module) -> torch.nn.Module:
    """The final linear layer of a task network (the part `mode=last_layer` trains)."""
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    if not linears:
        raise ValueError("the task model has no linear layer to fine-tune")
    return linears[-1]


def train_classifier(model: torch.nn.Module, data: Tensors, recipe: TrainRecipe, seed: int = 0,
                     augment: str = "none", progress: bool = False, desc: str = "train") -> torch.nn.Module:
    """Train ``model`` (a TaskModel: images in [0, 1] -> logits) on ``data`` in place and return it.

    ``augment`` (``none``, ``randaugment``, ``cutmix``) applies to the samples flagged in
    ``data.augment`` only: the augmentation baselines add augmented copies as their extra data.
    """
    from tqdm.auto import tqdm

    g = torch.Generator().manual_seed(seed)
    device = model_device(model)
    memory_format = torch.channels_last if recipe.channels_last else torch.contiguous_format
    model.to(memory_format=memory_format)  # before the optimiser is built, so that it holds the converted weights
    params = list(_head(model).parameters()) if recipe.mode == "last_layer" else list(model.parameters())
    model.requires_grad_(recipe.mode == "full")
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=recipe.lr, weight_decay=recipe.weight_decay)
    n = len(data)
    steps_per_epoch = max(1, math.ceil(n / recipe.batch_size))
    total = recipe.epochs * steps_per_epoch
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=recipe.lr, total_steps=total, pct_start=0.15)
    weights = torch.ones(n)
    if data.augment is not None and recipe.extra_weight != 1.0:
        weights[data.augment] = recipe.extra_weight
    aug = _augmenter(augment, int(data.labels.max()) + 1, g)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=recipe.autocast == "bf16")
    model.train()
    if recipe.mode == "last_layer":  # frozen features: keep BatchNorm statistics too
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.eval()
    bar = tqdm(total=total, desc=desc, disable=not progress, leave=False)
    for _ in range(recipe.epochs):
        order = torch.multinomial(weights, n, replacement=True, generator=g) if recipe.extra_weight != 1.0 \
            else torch.randperm(n, generator=g)
        for b in range(steps_per_epoch):
            idx = order[b * recipe.batch_size:(b + 1) * recipe.batch_size]
            if len(idx) < 2:
                continue
            x = as_float(data.images[idx], device)
            y = F.one_hot(data.labels[idx], int(data.labels.max()) + 1).float().to(device)
            if recipe.flip:
                flip = (torch.rand(len(idx), generator=g) < 0.5).to(device)
                x = torch.where(flip[:, None, None, None], x.flip(-1), x)
            if recipe.blur:
                x = _random_blur(x, recipe.blur, g)
            if aug is not None and data.augment is not None and bool(data.augment[idx].any()):
                sel = data.augment[idx].to(device)
                x_aug, y_aug = aug(x[sel], y[sel])
                x, y = x.clone(), y.clone()
                x[sel], y[sel] = x_aug, y_aug
            with autocast:
                logits = model(x.contiguous(memory_format=memory_format))
            loss = torch.sum(-y * F.log_softmax(logits.float(), 1), 1).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bar.update(1)
    bar.close()
    model.to(memory_format=torch.contiguous_format)  # safetensors saves contiguous tensors only
    return model.eval()


def _random_blur(x: torch.Tensor, p: float, g: torch.Generator) -> torch.Tensor:
    from torchvision.transforms.v2.functional import gaussian_blur

    sigma = float(torch.empty(1).uniform_(0.3, 1.5, generator=g))
    pick = (torch.rand(len(x), generator=g) < p).to(x.device)
    if not bool(pick.any()):
        return x
    x = x.clone()
    x[pick] = gaussian_blur(x[pick], kernel_size=[5, 5], sigma=[sigma, sigma])
    return x


def _augmenter(name: str, num_classes: int, g: torch.Generator):
    """torchvision v2 RandAugment / CutMix applied to a batch (images in [0, 1], one-hot labels)."""
    if name == "none":
        return None
    from torchvision.transforms import v2

    if name == "randaugment":
        ra = v2.RandAugment()

        def randaugment(x, y):
            torch.manual_seed(int(torch.randint(1 << 31, (1,), generator=g)))
            u8 = (x * 255).round().to(torch.uint8)
            return torch.stack([ra(im) for im in u8]).float() / 255, y

        return randaugment
    if name == "cutmix":
        cm = v2.CutMix(num_classes=num_classes)

        def cutmix(x, y):
            if len(x) < 2:
                return x, y
            torch.manual_seed(int(torch.randint(1 << 31, (1,), generator=g)))
            return cm(x, y.argmax(1))

        return cutmix
    raise ValueError(f"unknown augmentation {name!r}; use none, randaugment or cutmix")


@dataclass
class Evaluation:
    avg_acc: float
    worst_group_acc: float
    group_acc: dict[str, float]
    n: int
    macro_f1: float = float("nan")  # mean F1 over the classes present (WILDS' iWildCam metric)

    def row(self) -> dict:
        return {"avg_acc": round(self.avg_acc, 4), "worst_group_acc": round(self.worst_group_acc, 4),
                "macro_f1": round(self.macro_f1, 4),
                **{f"acc_{g}": round(a, 4) for g, a in sorted(self.group_acc.items())}}


@torch.no_grad()
@torch.no_grad()
def predict(model: torch.nn.Module, images: torch.Tensor, batch: int = 256) -> torch.Tensor:
    model.eval()
    device = model_device(model)
    return torch.cat([model(as_float(images[i:i + batch], device)).argmax(1).cpu() for i in range(0, len(images), batch)])


def evaluate(model: torch.nn.Module, data: Tensors) -> Evaluation:
    """Average accuracy, per-group accuracy and worst-group accuracy (groups from ``data.groups``)."""
    predicted, labels = predict(model, data.images).numpy(), data.labels.numpy()
    correct = predicted == labels
    groups = np.array(data.groups or [""] * len(data))
    group_acc = {str(gname): float(correct[groups == gname].mean()) for gname in sorted(set(groups))}
    return Evaluation(float(correct.mean()), min(group_acc.values()), group_acc, len(data),
                      macro_f1(predicted, labels))


def macro_f1(predicted: np.ndarray, labels: np.ndarray) -> float:
    """F1 averaged over the classes that occur in ``labels`` (as WILDS computes it for iWildCam: a class
    never predicted scores 0, a class absent from the labels is not counted)."""
    scores = []
    for c in np.unique(labels):
        tp = float(np.sum((predicted == c) & (labels == c)))
        precision = tp / max(1, int(np.sum(predicted == c)))
        recall = tp / int(np.sum(labels == c))
        scores.append(0.0 if tp == 0 else 2 * precision * recall / (precision + recall))
    return float(np.mean(scores))


def save_task_weights(model: torch.nn.Module, path: str | Path) -> Path:
    """Save a TaskModel's network weights as safetensors, atomically."""
    from advprompts.checkpoints import save_weights

    return save_weights(path, model.net.state_dict())

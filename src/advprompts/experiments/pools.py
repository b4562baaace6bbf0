"""Each method's extra data for one seed: a pool of up to ``max_extra`` images, in a fixed random
order, so that every budget takes a prefix of the same pool (as in the paper).

Generated pools are image folders with ``metadata.csv`` (``pools/<method>-s<seed>/``), built by
``advprompts.generate`` from train-split sources (the object mask is kept, so the label is too);
a finished pool is reused, an interrupted one resumes where generation stopped.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import shutil
from pathlib import Path

import numpy as np
import torch

from advprompts.fsio import read_csv, write_csv
from advprompts.tasks.train import Tensors, load_tensors

logger = logging.getLogger(__name__)


class Subset(torch.utils.data.Dataset):
    """Some samples of a FolderDataset, keeping its class names."""

    def __init__(self, dataset, indices: list[int]):
        self.dataset, self.indices = dataset, list(indices)
        self.class_names = getattr(dataset, "class_names", {})

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict:
        return self.dataset[self.indices[i]]


def fresh_text_side(components):
    """Components sharing the frozen UNet/VAE but with their own tokenizer and text encoder, so that
    placeholder tokens of one method never meet another's."""
    return dataclasses.replace(components, tokenizer=copy.deepcopy(components.tokenizer),
                               text_encoder=copy.deepcopy(components.text_encoder))


def dataset_labels(dataset) -> np.ndarray:
    """Every sample's label, read from the rows when the dataset has them (no image is decoded)."""
    rows = getattr(dataset, "rows", None)
    return np.array([r["label"] for r in rows] if rows is not None else [dataset[i]["label"] for i in range(len(dataset))])


def source_picks(dataset, n_images: int, prompts_per_source: int, seed: int, label: int | None = None,
                 among: np.ndarray | None = None, stream: int = 0) -> list[int]:
    """Random train sources (of one class, or all; only where ``among`` is true when given) so that
    sources x prompts ~ ``n_images``; ``stream`` separates the draws of several calls."""
    labels = dataset_labels(dataset)
    keep = np.ones(len(labels), dtype=bool) if among is None else np.asarray(among, dtype=bool)
    candidates = np.flatnonzero(keep & (labels == label)) if label is not None else np.flatnonzero(keep)
    rng = np.random.default_rng([seed, 7, 0 if label is None else label + 1, *([stream] if stream else [])])
    n = min(len(candidates), math.ceil(n_images / prompts_per_source))
    return sorted(rng.choice(candidates, n, replace=False).tolist())


def generate_units(units: list[dict], pool_dir: Path, components, settings, seed: int, dataset,
                   device: str = "auto") -> Path:
    """Generate every unit (``prompt_files`` or ``prompts``, ``sources``) into ``pool_dir/u<k>`` and merge
    their metadata into ``pool_dir/metadata.csv`` (written last: its presence marks a finished pool)."""
    from advprompts.config.schema import GenerateConfig, ModelConfig, SamplerConfig
    from advprompts.generate import generate_dataset

    rows: list[dict] = []
    for k, unit in enumerate(units):
        if not unit["sources"]:
            continue
        config = GenerateConfig(
            model=ModelConfig(diffusion=components.source or "embedded", device=device,
                              autocast=settings.autocast or "none"),
            sampler=SamplerConfig(num_steps=settings.steps, guidance_scale=settings.guidance_scale,
                                  strength=settings.strength, eta=settings.eta, conditioning="inpaint", paste=True,
                                  latent_mask=settings.latent_mask, negative_prompt=settings.negative_prompt),
            source=str(getattr(dataset, "root", "")) or "in-memory", prompt_files=[str(p) for p in unit.get("prompt_files", [])],
            prompts=unit.get("prompts", []), batch_size=settings.batch_size, seed=seed * 1000 + k,
            class_words=settings.class_words)
        out = pool_dir / f"u{k}"
        generate_dataset(config, out, components=components, dataset=Subset(dataset, unit["sources"]))
        for row in read_csv(out / "metadata.csv"):
            row["file_name"] = f"u{k}/{row['file_name']}"
            rows.append(row)
    if not rows:
        raise RuntimeError(f"pool {pool_dir} received no sources")
    write_csv(pool_dir / "metadata.csv", rows, list(rows[0]))
    return pool_dir


def load_pool(pool_dir: Path, seed: int, max_extra: int, image_size: int) -> Tensors:
    """A finished generated pool, shuffled with ``seed`` and cut to ``max_extra`` images."""
    data = load_tensors(pool_dir, image_size=image_size)
    order = np.random.default_rng([seed, 11]).permutation(len(data))[:max_extra]
    return data.subset(order.tolist())


def real_pool(benchmark: str, split: str, seed: int, max_extra: int, image_size: int) -> Tensors:
    """The benchmark's real OOD images (upper bound), shuffled with ``seed``."""
    data = load_tensors(benchmark, split=split, image_size=image_size)
    order = np.random.default_rng([seed, 13]).permutation(len(data))[:max_extra]
    return data.subset(order.tolist())


def with_label_noise(pool: Tensors, rate: float, seed: int, num_classes: int) -> Tensors:
    """The pool with ``rate`` of its labels replaced by a random other class (an ablation). Image i is
    relabelled when floor((i + 1) * rate) > floor(i * rate), so every budget's prefix holds exactly that
    share of wrong labels (to one image); the pool's order is already random."""
    i = np.arange(len(pool))
    flip = torch.from_numpy(np.floor((i + 1) * rate) > np.floor(i * rate))
    shift = torch.from_numpy(np.random.default_rng([seed, 19]).integers(1, num_classes, len(pool)))
    labels = torch.where(flip, (pool.labels + shift) % num_classes, pool.labels)
    return dataclasses.replace(pool, labels=labels)


def augment_pool(train: Tensors, seed: int, max_extra: int) -> Tensors:
    """Copies of random train images, flagged for the fine-tuning augmentation (CutMix / RandAugment)."""
    rng = np.random.default_rng([seed, 17])
    idx = rng.choice(len(train), max_extra, replace=max_extra > len(train))
    pool = train.subset(idx.tolist())
    pool.augment = torch.ones(len(pool), dtype=torch.bool)
    return pool


def export_group_images(dataset, out: Path, max_per_group: int | None = None) -> dict[str, Path]:
    """Copy a target split's images into one plain image folder per group (image-guidance targets)."""
    groups: dict[str, list[dict]] = {}
    for row in dataset.rows:
        groups.setdefault(row.get("group") or "all", []).append(row)
    folders = {}
    for group, rows in sorted(groups.items()):
        folder = out / group
        if not folder.is_dir():
            tmp = out / f".{group}.partial"
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            for row in rows[:max_per_group]:
                src = Path(dataset.root) / row["file_name"]
                shutil.copyfile(src, tmp / Path(row["file_name"]).name)
            tmp.replace(folder)
        folders[group] = folder
    return folders

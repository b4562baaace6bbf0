"""The dataset format used everywhere: a folder with images and a ``metadata.csv``.

Columns: ``file_name,label[,label_name][,group][,place][,location][,time][,split][,mask_file]
[,depth_file][,caption]``; ``file_name``, ``mask_file`` and ``depth_file`` are relative to the
folder. A mask is a grayscale PNG (255 = object); a depth file is ``.npy`` or a grayscale PNG.
The same folder layout is what ``advprompts generate`` writes, and ``datasets.load_dataset(
"imagefolder", data_dir=...)`` reads it too. Everything is validated when the dataset is opened,
so a bad file fails before any compute is spent.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from advprompts.errors import DataError

logger = logging.getLogger(__name__)

REQUIRED = ("file_name", "label")
OPTIONAL = ("label_name", "group", "place", "location", "time", "split", "mask_file", "depth_file", "caption")
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")

_DATASETS: dict[str, Callable[..., Any]] = {}


def register_dataset(name: str):
    """Decorator registering a factory ``f(split=None, image_size=None) -> dataset`` under ``name``."""

    def wrap(factory):
        if name in _DATASETS:
            raise ValueError(f"dataset {name!r} is already registered")
        _DATASETS[name] = factory
        return factory

    return wrap


def list_datasets() -> list[str]:
    return sorted(_DATASETS)


def _read_image(path: Path, mode: str) -> Image.Image:
    try:
        with Image.open(path) as im:
            return im.convert(mode)
    except FileNotFoundError as exc:
        raise DataError(f"image {str(path)!r} is missing; fix file_name in metadata.csv or add the file") from exc
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise DataError(f"image {str(path)!r} is corrupt or unreadable ({exc}); replace or remove it") from exc


def _to_tensor(im: Image.Image) -> torch.Tensor:
    arr = np.asarray(im, dtype=np.float32) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous() if arr.ndim == 3 else torch.from_numpy(arr)[None]


class FolderDataset(torch.utils.data.Dataset):
    """Images + labels (+ object masks, dense targets) from a folder with ``metadata.csv``.

    Args:
        root: the folder.
        split: keep only rows whose ``split`` column equals this (needs the column).
        image_size: resize images (bilinear) and masks (nearest) to this square size.

    Each item is a dict: ``image`` (3, H, W) in [0, 1], ``mask`` (1, H, W) in {0, 1} or None,
    ``dense`` (1, H, W) or None, ``label`` int, ``file_name`` str and every other present column
    as str (missing ones are "").

    Raises:
        DataError: missing folder/metadata/columns, empty selection, missing or corrupt image,
            mask whose size differs from its image.
    """

    def __init__(self, root: str | Path, split: str | None = None, image_size: int | None = None):
        self.root = Path(root)
        self.image_size = image_size
        meta = self.root / "metadata.csv"
        if not self.root.is_dir():
            raise DataError(f"dataset folder {str(self.root)!r} does not exist; pass a folder holding metadata.csv")
        if not meta.is_file():
            raise DataError(f"dataset folder {str(self.root)!r} has no metadata.csv; add one with columns file_name,label")
        try:
            with open(meta, newline="") as fh:
                reader = csv.DictReader(fh)
                columns = reader.fieldnames or []
                rows = list(reader)
        except (UnicodeDecodeError, csv.Error) as exc:
            raise DataError(f"{str(meta)!r} is not a readable CSV ({exc}); rewrite it as UTF-8 CSV") from exc
        missing = [c for c in REQUIRED if c not in columns]
        if missing:
            raise DataError(f"{str(meta)!r} lacks column {missing[0]!r}; required columns: file_name,label")
        if split is not None:
            if "split" not in columns:
                raise DataError(f"{str(meta)!r} has no split column but split={split!r} was requested")
            rows = [r for r in rows if r["split"] == split]
        if not rows:
            raise DataError(f"dataset {str(self.root)!r} is empty" + (f" for split {split!r}" if split else "")
                            + "; add rows to metadata.csv")
        self.columns = columns
        self.rows = [self._check_row(r, i + 2) for i, r in enumerate(rows)]
        self.class_names = {r["label"]: r.get("label_name") or str(r["label"]) for r in self.rows}
        logger.info("dataset %s: %d samples", self.root, len(self.rows))

    def _check_row(self, row: dict, line: int) -> dict:
        try:
            row["label"] = int(float(row["label"]))
        except (TypeError, ValueError) as exc:
            raise DataError(f"metadata.csv line {line}: label {row['label']!r} is not an integer") from exc
        image_path = self.root / row["file_name"]
        try:
            with Image.open(image_path) as im:
                im.verify()
                size = im.size
        except FileNotFoundError as exc:
            raise DataError(f"image {str(image_path)!r} (metadata.csv line {line}) is missing; add it or drop the row") from exc
        except (UnidentifiedImageError, OSError, SyntaxError) as exc:
            raise DataError(f"image {str(image_path)!r} is corrupt or unreadable; replace or remove it") from exc
        if row.get("mask_file"):
            mask = _read_image(self.root / row["mask_file"], "L")
            if mask.size != size:
                raise DataError(f"mask {row['mask_file']!r} is {mask.size[0]}x{mask.size[1]} but its image "
                                f"{row['file_name']!r} is {size[0]}x{size[1]}; masks must match their image size")
        return row

    def __len__(self) -> int:
        return len(self.rows)

    def _resize(self, x: torch.Tensor, mode: str) -> torch.Tensor:
        if self.image_size is None or tuple(x.shape[-2:]) == (self.image_size, self.image_size):
            return x
        kwargs = {"antialias": True, "align_corners": False} if mode == "bilinear" else {}
        return F.interpolate(x[None], size=(self.image_size, self.image_size), mode=mode, **kwargs)[0]

    def _dense(self, name: str) -> torch.Tensor:
        path = self.root / name
        if path.suffix == ".npy":
            arr = np.load(path).astype(np.float32)
            return torch.from_numpy(arr.reshape(1, *arr.shape[-2:]))
        with Image.open(path) as im:
            arr = np.asarray(im, dtype=np.float32)
        return torch.from_numpy(arr / (65535.0 if arr.max() > 255 else 255.0))[None]

    def __getitem__(self, index: int) -> dict:
        row = self.rows[index]
        image = self._resize(_to_tensor(_read_image(self.root / row["file_name"], "RGB")), "bilinear").clamp(0, 1)
        mask = None
        if row.get("mask_file"):
            mask = (self._resize(_to_tensor(_read_image(self.root / row["mask_file"], "L")), "nearest") > 0.5).float()
        dense = self._resize(self._dense(row["depth_file"]), "bilinear") if row.get("depth_file") else None
        item = {k: row.get(k) or "" for k in OPTIONAL}
        item.update(image=image, mask=mask, dense=dense, label=row["label"], file_name=row["file_name"])
        item["label_name"] = item["label_name"] or self.class_names[row["label"]]
        return item


def collate(items: list[dict]) -> dict:
    """Stack a list of dataset items into a batch (masks/dense become None unless all have one)."""
    out: dict[str, Any] = {}
    for key in items[0]:
        values = [it[key] for it in items]
        if isinstance(values[0], torch.Tensor) and all(isinstance(v, torch.Tensor) for v in values):
            out[key] = torch.stack(values)
        elif key == "label":
            out[key] = torch.tensor(values, dtype=torch.long)
        elif key in ("mask", "dense", "image"):
            out[key] = None
        else:
            out[key] = values
    return out


def resolve_dataset(spec: str, split: str | None = None, image_size: int | None = None):
    """A dataset from a registered name (``name`` or ``name:split``) or a folder path.

    Raises:
        DataError: when ``spec`` is neither a registered name nor a dataset folder.
    """
    name, _, name_split = spec.partition(":")
    if spec in _DATASETS or name in _DATASETS:
        factory = _DATASETS.get(spec) or _DATASETS[name]
        return factory(split=split or (name_split if spec not in _DATASETS else None) or None, image_size=image_size)
    path = Path(spec).expanduser()
    if not path.exists() and name_split and Path(name).is_dir():
        path, split = Path(name), split or name_split
    if not path.is_dir():
        known = ", ".join(list_datasets()) or "none registered"
        raise DataError(f"dataset {spec!r} is neither a folder nor a registered dataset ({known})")
    return FolderDataset(path, split=split, image_size=image_size)


def load_images(spec: str, max_images: int = 100, image_size: int | None = None) -> torch.Tensor:
    """Up to ``max_images`` images (N, 3, S, S) in [0, 1] from a dataset spec or a plain image folder
    (unlabelled target images need no metadata.csv). Images are resized to ``image_size`` or to
    the first image's size."""
    path = Path(spec).expanduser()
    if path.is_dir() and not (path / "metadata.csv").is_file():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_EXTS)[:max_images]
        if not files:
            raise DataError(f"image folder {spec!r} holds no images ({', '.join(IMAGE_EXTS)})")
        images = [_to_tensor(_read_image(p, "RGB")) for p in files]
    else:
        ds = resolve_dataset(spec, image_size=image_size)
        images = [ds[i]["image"] for i in range(min(len(ds), max_images))]
    size = image_size or images[0].shape[-1]
    images = [F.interpolate(im[None], size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0]
              if tuple(im.shape[-2:]) != (size, size) else im for im in images]
    return torch.stack(images).clamp(0, 1)

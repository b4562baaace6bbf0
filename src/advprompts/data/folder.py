"""The dataset format used everywhere: a folder with images and a ``metadata.csv``.

Columns: ``file_name,label[,label_name][,group][,place][,location][,time][,split][,mask_file]
[,depth_file][,caption]``; ``file_name``, ``mask_file`` and ``depth_file`` are relative to the
folder and must stay inside it, symlinks included. A mask is a grayscale PNG (object = above half
of 255, or 1 in a 0/1 mask); a depth file is ``.npy`` or a grayscale PNG. Images of any mode are
read as RGB as displayed (:mod:`~advprompts.data.files`). ``root`` may also be the CSV file itself.
The same folder layout is what ``advprompts generate`` writes, and ``datasets.load_dataset(
"imagefolder", data_dir=...)`` reads it too. Everything is validated when the dataset is opened,
so a bad file fails before any compute is spent.

Dataset specs (``data.source``, ``--source``, target images): a folder, or a registered name as
``NAME[:SPLIT][@ROOT][?KEY=VALUE&...]``, e.g. ``waterbirds:train_majority@/data/waterbirds?masks=none``.
"""

from __future__ import annotations

import csv
import inspect
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from advprompts.data.files import escapes, image_problem, read_mask, read_rgb
from advprompts.errors import DataError
from advprompts.registry import Registry

logger = logging.getLogger(__name__)

REQUIRED = ("file_name", "label")
OPTIONAL = ("label_name", "group", "place", "location", "time", "split", "mask_file", "depth_file", "caption")
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")

_DATASETS = Registry("dataset")  # name -> factory(split=None, image_size=None, ...)
_WHY = {"missing": "is missing; {fix}", "corrupt": "is corrupt or unreadable; replace or remove it",
        "nonfinite": "has NaN or infinite pixels; replace it"}
_PATHS = (("file_name", "image"), ("mask_file", "mask"), ("depth_file", "depth file"))


def register_dataset(name: str):
    """Decorator registering a factory ``f(split=None, image_size=None) -> dataset`` under ``name``."""
    return _DATASETS.register(name)


def list_datasets() -> list[str]:
    """Every registered name: the core's loaders and the plugins' (the embedded world's benchmarks)."""
    return _DATASETS.names()


def row_problems(root: Path, row: dict, where: str = "", decode: bool = False) -> list[str]:
    """Every problem of one row (label, image, mask), each a one-line message naming the file.

    Paths must stay inside ``root``: those of a metadata.csv (rows marked ``_confined``) even through
    symlinks; a loader's ``file_name`` by its text (its folders may be symlinks; its masks may live
    elsewhere, where the user pointed it)."""
    confined = bool(row.get("_confined"))
    for key, what in _PATHS:
        if row.get(key) and (confined or key == "file_name") and escapes(root, row[key], follow_links=confined):
            return [f"{what} {row[key]!r}{where} is outside the dataset folder {str(root)!r}; a dataset may only "
                    "name files inside its folder (copy the file in)"]
    problems = []
    try:
        int(float(row["label"]))
    except (TypeError, ValueError):
        problems.append(f"label {row['label']!r}{where} is not an integer")
    image_path = root / row["file_name"]
    size, why = image_problem(image_path, decode)
    if why:
        problems.append(f"image {str(image_path)!r}{where} " + _WHY[why].format(fix="add it or drop the row"))
    if row.get("mask_file"):
        mask_path = root / row["mask_file"]
        msize, why = image_problem(mask_path, decode)
        if why:
            problems.append(f"mask {str(mask_path)!r}{where} " + _WHY[why].format(fix="add it or clear mask_file"))
        elif size is not None and msize != size:
            problems.append(f"mask {row['mask_file']!r} is {msize[0]}x{msize[1]} but its image {row['file_name']!r} is "
                            f"{size[0]}x{size[1]}; masks must match their image size")
    return problems


def read_metadata(path: str | Path) -> tuple[Path, Path, list[str], list[dict]]:
    """``(root, csv_file, columns, rows)`` of a folder with metadata.csv, or of a CSV file whose
    paths are relative to its folder; each row carries its CSV line number as ``_line``."""
    path = Path(path).expanduser()
    root, meta = (path.parent, path) if path.suffix.lower() == ".csv" else (path, path / "metadata.csv")
    if not root.is_dir():
        raise DataError(f"dataset folder {str(root)!r} does not exist; pass a folder holding metadata.csv")
    if not meta.is_file():
        raise DataError(f"dataset folder {str(root)!r} has no {meta.name}; add one with columns file_name,label")
    try:
        with open(meta, newline="") as fh:
            reader = csv.DictReader(fh)
            columns = list(reader.fieldnames or [])
            rows = [dict(r, _line=i + 2, _file=meta.name, _confined=True) for i, r in enumerate(reader)]
    except (UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{str(meta)!r} is not a readable CSV ({exc}); rewrite it as UTF-8 CSV") from exc
    missing = [c for c in REQUIRED if c not in columns]
    if missing:
        raise DataError(f"{str(meta)!r} lacks column {missing[0]!r}; required columns: file_name,label")
    return root, meta, columns, rows


class FolderDataset(torch.utils.data.Dataset):
    """Images + labels (+ object masks, dense targets) from a folder with ``metadata.csv``.

    Args:
        root: the folder (or the CSV file; paths in it are relative to its folder).
        split: keep only rows whose ``split`` column equals this (needs the column).
        image_size: resize images (bilinear) and masks (nearest) to this square size.
        rows: rows in this format given directly (loaders of other layouts); no CSV is read.
        class_names: label -> name (default: from ``label_name``, else the label).
        instance_masks: masks hold instance ids (0 = background); every non-zero pixel is object.
        empty_mask_if_missing: a row without mask gets an all-zero mask (the whole image is
            regenerated) instead of None.

    Each item is a dict: ``image`` (3, H, W) in [0, 1], ``mask`` (1, H, W) in {0, 1} or None,
    ``dense`` (1, H, W) or None, ``label`` int, ``file_name`` str and every other present column
    as str (missing ones are "").

    Raises:
        DataError: missing folder/metadata/columns, empty selection, missing or corrupt image,
            mask whose size differs from its image.
    """

    def __init__(self, root: str | Path, split: str | None = None, image_size: int | None = None, *,
                 rows: list[dict] | None = None, class_names: dict[int, str] | None = None,
                 instance_masks: bool = False, empty_mask_if_missing: bool = False):
        self.image_size = image_size
        self.instance_masks, self.empty_mask_if_missing = instance_masks, empty_mask_if_missing
        if rows is None:
            self.root, meta, self.columns, rows = read_metadata(root)
            if split is not None:
                if "split" not in self.columns:
                    raise DataError(f"{str(meta)!r} has no split column but split={split!r} was requested")
                rows = [r for r in rows if r["split"] == split]
        else:
            self.root, self.columns = Path(root), sorted({k for r in rows for k in r if not k.startswith("_")})
        if not rows:
            raise DataError(f"dataset {str(self.root)!r} is empty" + (f" for split {split!r}" if split else "")
                            + "; add rows to metadata.csv")
        self.rows = [self._check_row(r) for r in rows]
        self.class_names = dict(class_names) if class_names else \
            {r["label"]: r.get("label_name") or str(r["label"]) for r in self.rows}
        logger.info("dataset %s: %d samples", self.root, len(self.rows))

    def _check_row(self, row: dict) -> dict:
        # Header-only checks at open time (cheap); `advprompts data summary` decodes every file.
        where = f" ({row.get('_file', 'metadata.csv')} line {row['_line']})" if "_line" in row else ""
        problems = row_problems(self.root, row, where)
        if problems:
            raise DataError(problems[0])
        row["label"] = int(float(row["label"]))
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
            arr = np.load(path).astype(np.float32)  # allow_pickle is False: a .npy cannot run code
            if not np.isfinite(arr).all():
                raise DataError(f"depth file {str(path)!r} has NaN or infinite values; replace it")
            return torch.from_numpy(arr.reshape(1, *arr.shape[-2:]))
        with Image.open(path) as im:
            arr = np.asarray(im, dtype=np.float32)
        return torch.from_numpy(arr / (65535.0 if arr.max() > 255 else 255.0))[None]

    def _mask(self, row: dict, size: tuple[int, int]) -> torch.Tensor | None:
        if not row.get("mask_file"):
            return torch.zeros(1, *size) if self.empty_mask_if_missing else None
        keep = read_mask(self.root / row["mask_file"], self.instance_masks)
        return self._resize(torch.from_numpy(keep.astype(np.float32))[None], "nearest")

    def __getitem__(self, index: int) -> dict:
        row = self.rows[index]
        image = self._resize(read_rgb(self.root / row["file_name"]), "bilinear").clamp(0, 1)
        mask = self._mask(row, tuple(image.shape[-2:]))
        dense = self._resize(self._dense(row["depth_file"]), "bilinear") if row.get("depth_file") else None
        item = {k: str(row.get(k) or "") for k in OPTIONAL}
        item.update(image=image, mask=mask, dense=dense, label=row["label"], file_name=str(row["file_name"]))
        item["label_name"] = item["label_name"] or self.class_names.get(row["label"], str(row["label"]))
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


def parse_spec(spec: str) -> tuple[str, str | None, str | None, dict[str, str]]:
    """Split ``NAME[:SPLIT][@ROOT][?KEY=VALUE&...]`` into ``(name, split, root, options)``."""
    head, _, query = spec.partition("?")
    head, _, root = head.partition("@")
    name, _, split = head.partition(":")
    options = {}
    for part in filter(None, query.split("&")):
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise DataError(f"dataset {spec!r}: option {part!r} is not KEY=VALUE")
        options[key.strip()] = value.strip()
    return name, split or None, root or None, options


def _open(name: str, split, image_size, root, options):
    factory = _DATASETS[name]
    params = inspect.signature(factory).parameters
    if (root is not None and "root" not in params) or \
            (options and not any(p.kind is p.VAR_KEYWORD for p in params.values())):
        raise DataError(f"dataset {name!r} takes no @ROOT or ?options; use {name}[:SPLIT]")
    return factory(split=split, image_size=image_size, **({"root": root} if root else {}), **options)


def resolve_dataset(spec: str, split: str | None = None, image_size: int | None = None):
    """A dataset from a registered name (``NAME[:SPLIT][@ROOT][?KEY=VALUE&...]``) or a folder path.

    Raises:
        DataError: when ``spec`` is neither a registered name nor a dataset folder.
    """
    if _DATASETS.find(spec) is not None:  # a miss loads the plugins' names first
        return _open(spec, split, image_size, None, {})
    name, name_split, root, options = parse_spec(spec)
    if name in _DATASETS:
        return _open(name, split or name_split, image_size, root, options)
    name, _, name_split = spec.partition(":")
    path = Path(spec).expanduser()
    if not path.exists() and name_split and Path(name).is_dir():
        path, split = Path(name), split or name_split
    if not path.is_dir() and not (path.is_file() and path.suffix.lower() == ".csv"):
        known = ", ".join(list_datasets()) or "none registered"
        raise DataError(f"dataset {spec!r} is neither a folder nor a registered dataset ({known})")
    return FolderDataset(path, split=split, image_size=image_size)


@register_dataset("folder")
def folder_dataset(split: str | None = None, image_size: int | None = None, root: str | None = None) -> FolderDataset:
    """``folder[:SPLIT]@DIR``: the generic format by name (DIR holds metadata.csv, or is the CSV)."""
    if root is None:
        raise DataError("dataset 'folder' needs its location: folder[:SPLIT]@DIR (DIR holds metadata.csv, or is a CSV)")
    return FolderDataset(root, split=split, image_size=image_size)


def load_images(spec: str, max_images: int = 100, image_size: int | None = None) -> torch.Tensor:
    """Up to ``max_images`` images (N, 3, S, S) in [0, 1] from a dataset spec or a plain image folder
    (unlabelled target images need no metadata.csv). Images are resized to ``image_size`` or to
    the first image's size."""
    path = Path(spec).expanduser()
    if path.is_dir() and not (path / "metadata.csv").is_file():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_EXTS)[:max_images]
        if not files:
            raise DataError(f"image folder {spec!r} holds no images ({', '.join(IMAGE_EXTS)})")
        images = [read_rgb(p) for p in files]
    else:
        ds = resolve_dataset(spec, image_size=image_size)
        images = [ds[i]["image"] for i in range(min(len(ds), max_images))]
    size = image_size or images[0].shape[-1]
    images = [F.interpolate(im[None], size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0]
              if tuple(im.shape[-2:]) != (size, size) else im for im in images]
    return torch.stack(images).clamp(0, 1)

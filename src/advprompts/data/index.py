"""Datasets in other layouts (Waterbirds, iWildCam, ...) as an index of rows in the folder format.

A loader of a real dataset reads its metadata into a :class:`DatasetIndex` (no image is opened):
rows in the :mod:`~advprompts.data.folder` format and the splits one can ask for. The same index
serves :class:`~advprompts.data.folder.FolderDataset` (every sample has the same structure, so
optimise, generate and training need no dataset-specific code) and ``advprompts data summary``.
``register_index(name)`` registers both, so ``NAME[:SPLIT][@ROOT][?KEY=VALUE]`` resolves anywhere.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from advprompts.data.folder import FolderDataset, read_metadata, register_dataset
from advprompts.errors import DataError

_INDEXES: dict[str, Callable[..., "DatasetIndex"]] = {}


@dataclass
class DatasetIndex:
    """Every sample of a dataset as folder-format rows, before any file is opened.

    Attributes:
        name: the registered name.
        root: the folder that relative ``file_name`` / ``mask_file`` paths start from.
        rows: every sample once; ``split`` is its primary split.
        class_names: label -> name.
        splits: every split one can ask for, primary and derived (subsets of the rows), in order.
        masks: where masks come from (shown by the summary); "" when there are none.
        masks_required: a row without ``mask_file`` is a problem (a mask source exists).
        instance_masks, empty_mask_if_missing: passed to :class:`FolderDataset`.
        notes: facts worth showing in the summary (rows dropped, defaults used).
    """

    name: str
    root: Path
    rows: list[dict]
    class_names: dict[int, str]
    splits: dict[str, list[dict]]
    masks: str = ""
    masks_required: bool = False
    instance_masks: bool = False
    empty_mask_if_missing: bool = False
    notes: list[str] = field(default_factory=list)

    def split_rows(self, split: str | None) -> list[dict]:
        """The rows of ``split`` (every row for None); DataError naming the splits otherwise."""
        if split is None:
            return self.rows
        if split not in self.splits:
            raise DataError(f"{self.name} has no split {split!r}; splits: {', '.join(self.splits)}")
        return self.splits[split]

    def dataset(self, split: str | None = None, image_size: int | None = None,
                label: int | None = None) -> FolderDataset:
        """A :class:`FolderDataset` of one split, optionally one class (files checked when opened)."""
        rows = [dict(r, split=split or r.get("split", "")) for r in self.split_rows(split)
                if label is None or r["label"] == label]
        missing = [r for r in rows if self.masks_required and not r.get("mask_file")]
        if missing:
            raise DataError(f"{self.name}: no mask for image {str(self.root / missing[0]['file_name'])!r} "
                            f"({len(missing)} in split {split}) in {self.masks}; add the masks or pass ?masks=none")
        if not rows:
            which = f"split {split!r}" + (f" with label {label}" if label is not None else "")
            raise DataError(f"{self.name} {which} is empty; check the dataset at {self.root}")
        return FolderDataset(self.root, rows=rows, image_size=image_size, class_names=self.class_names,
                             instance_masks=self.instance_masks, empty_mask_if_missing=self.empty_mask_if_missing)


def register_index(name: str):
    """Decorator registering ``index(root=None, **options) -> DatasetIndex`` under ``name``; the
    dataset ``name[:split][@root][?options]`` is registered with it, where the option ``label=N``
    (any such dataset) keeps one class, e.g. to generate from per-class prompts."""

    def wrap(fn):
        if name in _INDEXES:
            raise ValueError(f"dataset index {name!r} is already registered")
        _INDEXES[name] = fn

        def factory(split: str | None = None, image_size: int | None = None, root: str | None = None,
                    label: str | None = None, **options):
            if label is not None and not str(label).lstrip("-").isdigit():
                raise DataError(f"dataset {name!r}: option label={label!r} is not an integer")
            return fn(root, **options).dataset(split, image_size, None if label is None else int(label))

        factory.__doc__ = fn.__doc__
        register_dataset(name)(factory)
        return fn

    return wrap


def get_index(name: str) -> Callable[..., DatasetIndex] | None:
    return _INDEXES.get(name)


def check_options(name: str, options: dict[str, str], known: dict[str, str]) -> None:
    """DataError for an option the loader does not know (``known``: option -> meaning)."""
    for key in options:
        if key not in known:
            listed = "; ".join(f"{k}: {v}" for k, v in known.items())
            raise DataError(f"dataset {name!r} has no option {key!r}; options: {listed}")


def find_root(name: str, root: str | Path | None, env: str, folder_names: tuple[str, ...]) -> Path:
    """The dataset folder: ``root`` or ``$env`` or ``$ADVPROMPTS_DATA_DIR``, or one of their
    sub-folders named as the official release (``folder_names``); DataError saying how to pass it."""
    candidates = [Path(p).expanduser() for p in (root or os.environ.get(env) or os.environ.get("ADVPROMPTS_DATA_DIR"),)
                  if p]
    if not candidates:
        raise DataError(f"dataset {name!r} needs its folder: write {name}:SPLIT@DIR (data summary: --root DIR), "
                        f"or set {env} (or ADVPROMPTS_DATA_DIR holding {' or '.join(folder_names)})")
    base = candidates[0]
    for folder in (base, *(base / n for n in folder_names)):
        if (folder / "metadata.csv").is_file():
            return folder
    if not base.is_dir():
        raise DataError(f"{name} folder {str(base)!r} does not exist; download the dataset (see docs/real-data.md)")
    raise DataError(f"{name} folder {str(base)!r} has no metadata.csv (nor a sub-folder "
                    f"{' or '.join(folder_names)} with one); point to the unpacked release")


def folder_index(root: str | Path | None = None) -> DatasetIndex:
    """The generic folder format as an index, for the summary (``folder@DIR`` opens the datasets)."""
    if root is None:
        raise DataError("dataset 'folder' needs its location: --root DIR (DIR holds metadata.csv, or is a CSV)")
    base, meta, columns, rows = read_metadata(root)
    for r in rows:
        r.setdefault("split", "")
    splits: dict[str, list[dict]] = {}
    for r in rows:
        splits.setdefault(r.get("split") or "all", []).append(r)
    names = {}
    for r in rows:
        try:
            names.setdefault(int(float(r["label"])), r.get("label_name") or str(r["label"]))
        except (TypeError, ValueError):
            pass
    with_masks = sum(1 for r in rows if r.get("mask_file"))
    notes = [f"{with_masks} of {len(rows)} rows name a mask"] if "mask_file" in columns else ["no mask_file column"]
    return DatasetIndex("folder", base, rows, dict(sorted(names.items())), splits,
                        masks="mask_file column" if with_masks else "", notes=notes)

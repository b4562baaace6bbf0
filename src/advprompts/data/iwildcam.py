"""iWildCam in the WILDS ``iwildcam_v2.0`` layout, with the paper's 7-class subset and target groups.

Folder ``iwildcam_v2.0/``: ``metadata.csv`` (a leading index column, then ``split,
location_remapped,location,sequence_remapped,seq_id,y,category_id,datetime,filename,image_id``;
splits train/val/test/id_val/id_test), ``categories.csv`` (``y,category_id,name``) and every
image under ``train/``.

- Subset: ``<split>_subset.csv`` files with the same columns (the paper's subset, as released
  with ALIA: ``train``, ``val``, ``test`` at locations 287 and 288, ``train_extra``), read from
  ``?subset=DIR`` or the dataset folder; each file is a split. Without them (or ``?subset=none``)
  the WILDS splits are used.
- Classes (``?classes=paper``, default): WILDS y 0, 24, 32, 36, 48, 49, 52 = background, cattle,
  elephants, impalas, zebras, giraffes, dik-diks (labels 0-6); other rows are dropped.
  ``?classes=all``: every class, label = y, names from categories.csv.
- Time of day from ``datetime``: day = hour 9-17, night = hour >= 20 or <= 5, else twilight.
  Groups: ``<location_remapped>-<day|night|twilight>``.
- Unlabelled target images for image guidance: split ``target`` = ``?n=64`` images per
  (location, day/night) group of the ``?target_from=test`` split, drawn with ``?seed=0``;
  ``target-<location>-<day|night>`` = one group.
- Instance masks ``<image_id>.png`` (0 = background, k = the k-th detection) in ``?masks=DIR``
  (default ``masks/`` in the dataset folder); an image without one gets an all-zero mask, so the
  whole image is regenerated.

Use as ``iwildcam:train@DIR`` or set ``ADVPROMPTS_IWILDCAM_ROOT``.
"""

from __future__ import annotations

import csv
import zlib
from datetime import datetime
from pathlib import Path

import numpy as np

from advprompts.data.index import DatasetIndex, check_options, find_root, register_index
from advprompts.errors import DataError

#: The paper's classes: WILDS y -> name; labels follow this order.
PAPER_CLASSES = {0: "background", 24: "cattle", 32: "elephants", 36: "impalas", 48: "zebras", 49: "giraffes",
                 52: "dik-diks"}
WILDS_SPLITS = ("train", "val", "test", "id_val", "id_test")
REQUIRED = ("filename", "y", "location_remapped", "datetime")
FOLDERS = ("iwildcam_v2.0",)
ENV = "ADVPROMPTS_IWILDCAM_ROOT"
OPTIONS = {"subset": "folder of <split>_subset.csv files, or none", "classes": "paper (7 classes) or all",
           "masks": "folder of <image_id>.png instance masks", "n": "target images per group (64)",
           "seed": "seed of the target draw (0)", "target_from": "split the target images come from (test)"}


def time_of_day(hour: int) -> str:
    """day (9-17 h), night (>= 20 h or <= 5 h) or twilight."""
    return "day" if 9 <= hour <= 17 else "night" if hour >= 20 or hour <= 5 else "twilight"


def _read(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in REQUIRED if c not in (reader.fieldnames or [])]
        if missing:
            raise DataError(f"{str(path)!r} lacks column {missing[0]!r}; expected the WILDS iwildcam_v2.0 columns "
                            "split,location_remapped,location,sequence_remapped,seq_id,y,category_id,datetime,"
                            "filename,image_id")
        return [dict(r, _line=i + 2, _file=path.name) for i, r in enumerate(reader)]


def _sources(root: Path, option: str) -> dict[str, list[dict]]:
    """split -> records, from subset files if there are any, else from metadata.csv."""
    folder = Path(option).expanduser() if option and option != "none" else root
    files = sorted(folder.glob("*_subset.csv")) if option != "none" else []
    if option and option != "none" and not files:
        raise DataError(f"subset folder {str(folder)!r} holds no <split>_subset.csv files (e.g. train_subset.csv)")
    if files:
        known = {s: i for i, s in enumerate(("train", "val", "test", "train_extra"))}
        files.sort(key=lambda f: (known.get(f.name[: -len("_subset.csv")], len(known)), f.name))
        return {f.name[: -len("_subset.csv")]: _read(f) for f in files}
    out: dict[str, list[dict]] = {}
    for r in _read(root / "metadata.csv"):
        out.setdefault(r.get("split", ""), []).append(r)
    return {s: out[s] for s in [*WILDS_SPLITS, *sorted(set(out) - set(WILDS_SPLITS))] if s in out}


def _category_names(root: Path) -> dict[int, str]:
    path = root / "categories.csv"
    if not path.is_file():
        return {}
    with open(path, newline="") as fh:
        return {int(r["y"]): r.get("name", r["y"]) for r in csv.DictReader(fh) if r.get("y", "").strip().isdigit()}


def _int(value: str, what: str, r: dict) -> int:
    try:
        return int(float(value))
    except (TypeError, ValueError):
        raise DataError(f"{r['_file']} line {r['_line']}: {what} {value!r} is not a number") from None


def _hour(r: dict) -> int:
    try:
        return datetime.fromisoformat(r["datetime"].strip()).hour
    except ValueError:
        raise DataError(f"{r['_file']} line {r['_line']}: datetime {r['datetime']!r} is not "
                        "YYYY-MM-DD HH:MM:SS") from None


def _targets(rows: list[dict], n: int, seed: int) -> dict[str, list[dict]]:
    """``n`` rows per (location, day/night) group, drawn reproducibly (per-group seed)."""
    groups: dict[str, list[dict]] = {}
    for r in rows:
        if r["time"] in ("day", "night"):
            groups.setdefault(r["group"], []).append(r)
    out = {}
    for group in sorted(groups, key=lambda g: (int(g.split("-")[0]) if g.split("-")[0].isdigit() else 0, g)):
        members = sorted(groups[group], key=lambda r: r["file_name"])
        rng = np.random.default_rng([seed, zlib.crc32(group.encode())])
        out[f"target-{group}"] = [members[i] for i in sorted(rng.permutation(len(members))[:n])]
    return out


@register_index("iwildcam")
def iwildcam_index(root: str | Path | None = None, **options: str) -> DatasetIndex:
    """Read iWildCam's metadata (or the subset CSVs) into an index (no image is opened).

    Raises:
        DataError: no folder / metadata.csv, wrong columns or values, unknown option or split.
    """
    check_options("iwildcam", options, OPTIONS)
    root = find_root("iwildcam", root, ENV, FOLDERS)
    classes = options.get("classes", "paper")
    if classes not in ("paper", "all"):
        raise DataError(f"iwildcam option classes={classes!r} is invalid; use paper or all")
    try:
        n, seed = int(options.get("n", 64)), int(options.get("seed", 0))
    except ValueError:
        raise DataError("iwildcam options n and seed must be integers") from None
    masks = Path(options["masks"]).expanduser() if options.get("masks") else root / "masks"
    if options.get("masks") and not masks.is_dir():
        raise DataError(f"iwildcam masks folder {str(masks)!r} does not exist; pass a folder of <image_id>.png masks")
    names = _category_names(root)
    label_of = {y: i for i, y in enumerate(PAPER_CLASSES)} if classes == "paper" else None
    class_names = dict(enumerate(PAPER_CLASSES.values())) if classes == "paper" else names
    rows, splits, dropped, with_mask = [], {}, 0, 0
    for split, records in _sources(root, options.get("subset", "")).items():
        splits[split] = []
        for r in records:
            y = _int(r["y"], "y", r)
            if label_of is not None and y not in label_of:
                dropped += 1
                continue
            label = label_of[y] if label_of is not None else y
            location, time = str(_int(r["location_remapped"], "location_remapped", r)), time_of_day(_hour(r))
            image_id = r.get("image_id") or Path(r["filename"]).stem
            mask = masks / f"{image_id}.png"
            with_mask += mask.is_file()
            row = {"file_name": f"train/{r['filename']}", "label": label,
                   "label_name": class_names.get(label, str(label)), "group": f"{location}-{time}",
                   "location": location, "time": time, "split": split, "place": "",
                   "mask_file": str(mask) if mask.is_file() else "", "caption": "", "_line": r["_line"],
                   "_file": r["_file"]}
            rows.append(row)
            splits[split].append(row)
    source = options.get("target_from", "test")
    if source not in splits:
        raise DataError(f"iwildcam option target_from={source!r}: no such split; splits: {', '.join(splits)}")
    targets = _targets(splits[source], n, seed)
    splits["target"] = [r for group in targets.values() for r in group]
    splits.update(targets)
    notes = [f"masks: {with_mask} of {len(rows)} images in {masks} (the others are regenerated whole)",
             f"target: {n} images per (location, day/night) group of split {source!r}, seed {seed}"]
    if dropped:
        notes.append(f"{dropped} rows of classes outside the paper's 7 dropped (?classes=all keeps them)")
    return DatasetIndex("iwildcam", root, rows, class_names, splits, masks=str(masks) if with_mask else "",
                        instance_masks=True, empty_mask_if_missing=True, notes=notes)

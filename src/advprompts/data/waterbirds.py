"""Waterbirds in its release layout, with foreground masks and the paper's training variant.

Folder ``waterbird_complete95_forest2water2/`` (or ``waterbirds_v1.0/``): ``metadata.csv`` with
``img_id,img_filename,y,split,place,place_filename`` (y 0 landbird / 1 waterbird, place 0 land /
1 water, split 0/1/2 = train/val/test) and the images (sizes vary) in ``NNN.Species/`` folders.

Masks (object = the bird), the first found per image:

1. ``<image stem>_mask.png`` beside the image (e.g. the paper's SAM masks);
2. CUB-200-2011 segmentations ``DIR/<NNN.Species>/<stem>.png``, thresholded at 0.5, where DIR is
   ``?masks=DIR``, ``$ADVPROMPTS_CUB_SEGMENTATIONS``, or next to the dataset (``segmentations/``,
   ``../segmentations/``, ``../CUB_200_2011/segmentations/``).

``?masks=none`` drops masks (classification only). Splits: the release's ``train``, ``val``,
``test``; the paper's ``train_majority`` (train restricted to waterbirds on water and landbirds on
land) and ``ood_pool`` (train's two missing groups: the real-OOD data). Groups:
``{landbird|waterbird}-{land|water}``. Use as ``waterbirds:train_majority@DIR`` or set
``ADVPROMPTS_WATERBIRDS_ROOT``.
"""

from __future__ import annotations

import csv
import logging
import os
from pathlib import Path

from advprompts.data.index import DatasetIndex, check_options, find_root, register_index
from advprompts.errors import DataError

logger = logging.getLogger(__name__)

CLASSES = {0: "landbird", 1: "waterbird"}
PLACES = {0: "land", 1: "water"}
SPLIT_CODES = {"0": "train", "1": "val", "2": "test"}
COLUMNS = ("img_id", "img_filename", "y", "split", "place", "place_filename")
MAJORITY = ("landbird-land", "waterbird-water")
FOLDERS = ("waterbird_complete95_forest2water2", "waterbirds_v1.0")
ENV = "ADVPROMPTS_WATERBIRDS_ROOT"
OPTIONS = {"masks": "CUB-200-2011 segmentations folder, or none"}


def _segmentations(root: Path, option: str) -> Path | None:
    given = option or os.environ.get("ADVPROMPTS_CUB_SEGMENTATIONS", "")
    if given:
        path = Path(given).expanduser()
        if not path.is_dir():
            raise DataError(f"CUB segmentations folder {str(path)!r} does not exist; pass the segmentations/ "
                            "folder of CUB-200-2011 (NNN.Species/<stem>.png) or ?masks=none")
        return path
    for path in (root / "segmentations", root.parent / "segmentations", root.parent / "CUB_200_2011" / "segmentations"):
        if path.is_dir():
            return path
    return None


def _code(value: str, codes: dict, what: str, meta: Path, line: int):
    try:
        return codes[str(int(float(value)))]
    except (KeyError, ValueError):
        raise DataError(f"{str(meta)!r} line {line}: {what} {value!r} is not one of "
                        f"{', '.join(map(str, codes))}") from None


@register_index("waterbirds")
def waterbirds_index(root: str | Path | None = None, **options: str) -> DatasetIndex:
    """Read Waterbirds' metadata.csv and find its masks (no image is opened).

    Raises:
        DataError: no folder / metadata.csv, wrong columns or codes, unknown option.
    """
    check_options("waterbirds", options, OPTIONS)
    root = find_root("waterbirds", root, ENV, FOLDERS)
    meta = root / "metadata.csv"
    with open(meta, newline="") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise DataError(f"{str(meta)!r} lacks column {missing[0]!r}; Waterbirds' metadata.csv has "
                            f"{','.join(COLUMNS)}")
        records = list(reader)
    want_masks = options.get("masks", "") != "none"
    seg = _segmentations(root, options.get("masks", "")) if want_masks else None
    rows, found, beside_found = [], 0, 0
    for i, r in enumerate(records):
        line = i + 2
        y = _code(r["y"], {str(k): k for k in CLASSES}, "y", meta, line)
        place = PLACES[_code(r["place"], {str(k): k for k in PLACES}, "place", meta, line)]
        rel = Path(r["img_filename"])
        mask, expected = "", ""
        if want_masks:
            beside = rel.with_name(rel.stem + "_mask.png")
            cub = seg / rel.parent.name / f"{rel.stem}.png" if seg is not None else None
            if (root / beside).is_file():
                mask = str(beside)
                beside_found += 1
            elif cub is not None and cub.is_file():
                mask = str(cub)
            expected = str(cub if cub is not None else root / beside)
            found += bool(mask)
        rows.append({"file_name": r["img_filename"], "label": y, "label_name": CLASSES[y],
                     "group": f"{CLASSES[y]}-{place}", "place": place,
                     "split": _code(r["split"], SPLIT_CODES, "split", meta, line), "mask_file": mask,
                     "caption": "", "_line": line, "_file": meta.name, "_mask_expected": expected})
    splits = {s: [r for r in rows if r["split"] == s] for s in SPLIT_CODES.values()}
    splits["train_majority"] = [r for r in splits["train"] if r["group"] in MAJORITY]
    splits["ood_pool"] = [r for r in splits["train"] if r["group"] not in MAJORITY]
    required = want_masks and (seg is not None or found > 0)
    source = ", ".join(filter(None, [f"{beside_found} <stem>_mask.png beside the images" if beside_found else "",
                                     f"CUB segmentations in {seg}" if seg is not None else ""]))
    notes = [f"masks: {found} of {len(rows)} images ({source or 'none found'})"]
    if want_masks and not required:
        notes.append("no masks found (no <stem>_mask.png beside the images, no CUB segmentations folder); "
                     "inpainting needs them: pass ?masks=DIR or set ADVPROMPTS_CUB_SEGMENTATIONS")
        logger.warning("waterbirds at %s: %s", root, notes[-1])
    return DatasetIndex("waterbirds", root, rows, dict(CLASSES), splits, masks=source if required else "",
                        masks_required=required, notes=notes)

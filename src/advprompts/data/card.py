"""A dataset card for a generated folder, so that the Hugging Face ``datasets`` library types it.

``datasets.load_dataset("imagefolder", data_dir=out)`` infers every column from ``metadata.csv``
(``label`` a plain integer, an empty column a float) and reads nothing else in the folder. Given the
folder itself, ``load_dataset(out)`` reads ``README.md``'s YAML header (``configs: ... features:``),
so the card written here makes ``label`` a ``ClassLabel`` with the class names and types the other
columns. A parquet copy of the metadata could carry the features too, but imagefolder refuses a
folder holding both metadata.csv and metadata.parquet. A moved or copied folder keeps its card's
fingerprint: if datasets then serves the original's cache, pass ``download_mode="force_redownload"``.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import yaml

#: Metadata columns that hold integers; every other column but file_name and label is a string.
INT_COLUMNS = ("seed", "index")


def class_label_names(rows: list[dict], class_names: dict | None = None) -> list[str] | None:
    """Names for labels 0..max of the rows and of ``class_names`` (from ``class_names``, else the rows'
    label_name, else the number), or None when a label is not a non-negative integer (then ``label``
    stays an integer column)."""
    try:
        labels = {int(r["label"]) for r in rows}
    except (KeyError, TypeError, ValueError):
        return None
    if not labels or min(labels) < 0:
        return None
    names = {int(k): str(v) for k, v in (class_names or {}).items() if str(k).lstrip("-").isdigit()}
    for r in rows:
        names.setdefault(int(r["label"]), r.get("label_name") or "")
    # Every class the source names, also one no row holds (a shard of one class): the ClassLabel then
    # matches the source's classes and the classifier's outputs.
    return [names.get(i) or str(i) for i in range(max(labels | set(names)) + 1)]


def features_yaml(columns: list[str], label_names: list[str] | None) -> list[dict]:
    """The ``features`` list of a card for metadata ``columns`` (file_name becomes ``image``)."""
    out = []
    for col in columns:
        if col == "file_name":
            out.append({"name": "image", "dtype": "image"})
        elif col == "label" and label_names is not None:
            out.append({"name": "label", "dtype": {"class_label": {"names": dict(
                (str(i), name) for i, name in enumerate(label_names))}}})
        elif col == "label" or col in INT_COLUMNS:
            out.append({"name": col, "dtype": "int64"})
        else:
            out.append({"name": col, "dtype": "string"})
    return out


def _fingerprint(out: Path, run_file: str) -> str:
    digest = hashlib.sha256(str(out.resolve()).encode())
    for name in ("metadata.csv", run_file):
        if (out / name).is_file():
            digest.update((out / name).read_bytes())
    return digest.hexdigest()[:16]


def write_dataset_card(out: str | Path, columns: list[str], rows: list[dict], class_names: dict | None = None,
                       run_file: str = "generate.yaml", class_label: bool = True) -> Path:
    """Write ``out/README.md``: a YAML header typing ``metadata.csv`` for ``datasets`` and a short note.

    ``class_label=False`` keeps ``label`` an integer (text-to-image sets, whose label is a constant 0).
    """
    from advprompts import __version__
    from advprompts.fsio import atomic_write_text

    label_names = class_label_names(rows, class_names) if class_label and "label" in columns else None
    header = {"configs": [{
        "config_name": "default",
        "data_files": [{"split": "train", "path": ["metadata.csv", "images/*.png"]}],
        # datasets caches a card-configured folder under its name and a hash of this YAML (not of its
        # files), and the cache points at the images by path: a fingerprint of the folder and its run
        # keeps another folder of the same name, or this one regenerated, from reading a stale cache.
        "description": f"advprompts generated set {_fingerprint(Path(out), run_file)}",
        "features": features_yaml(columns, label_names),
    }]}
    classes = f" Classes: {', '.join(f'{i} {n}' for i, n in enumerate(label_names))}." if label_names else ""
    typed = "columns typed, label a ClassLabel" if label_names else "columns typed"
    body = (f"# Generated training set\n\nWritten by advprompts {__version__}; `{run_file}` holds the run's settings. "
            f"{len(rows)} images in `images/`, one row each in `metadata.csv`.{classes}\n\n"
            "```python\nfrom datasets import load_dataset\n"
            f"ds = load_dataset(\"path/to/this/folder\", split=\"train\")   # {typed}\n```\n\n"
            "`load_dataset(\"imagefolder\", data_dir=...)` reads the same images and rows but not this card "
            "(label is then a plain integer).\n")
    path = Path(out) / "README.md"
    atomic_write_text(path, "---\n" + yaml.safe_dump(header, sort_keys=False, allow_unicode=True) + "---\n\n" + body)
    return path

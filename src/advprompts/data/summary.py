"""``advprompts data summary``: counts per split and group, and every image and mask checked.

Problems (missing or corrupt images and masks, masks of the wrong size, missing masks where a
mask source exists) are all listed with their paths, then :meth:`Summary.raise_for_problems`
raises one :class:`~advprompts.errors.DataError` (exit status 2 in the CLI).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from advprompts.data.folder import list_datasets, parse_spec, resolve_dataset, row_problems
from advprompts.data.index import DatasetIndex, folder_index, get_index
from advprompts.errors import DataError


@dataclass
class Summary:
    """What ``data summary`` found.

    Attributes:
        name, root: the dataset and its folder (None for a dataset without files).
        class_names: label -> name.
        counts: split -> group -> number of samples.
        images, masks: how many image / mask files were checked.
        problems: one line per problem, naming the file.
        notes: loader facts (mask source, dropped rows, target draw).
    """

    name: str
    root: Path | None
    class_names: dict[int, str]
    counts: dict[str, dict[str, int]]
    images: int = 0
    masks: int = 0
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        """The report, one line per entry (problems last)."""
        out = [f"{self.name}: {self.root if self.root is not None else '(generated, no files)'}",
               "classes: " + ", ".join(f"{k} {v}" for k, v in self.class_names.items())]
        for split, groups in self.counts.items():
            total = sum(groups.values())
            if len(groups) == 1:
                out.append(f"split {split}: {total} images (group {next(iter(groups)) or '-'})")
                continue
            out.append(f"split {split}: {total} images")
            width = max(len(g) for g in groups)
            out += [f"  {g or '-':{width}s} {n:7d}" for g, n in groups.items()]
        out += [f"note: {n}" for n in self.notes]
        out.append(f"checked {self.images} images and {self.masks} masks: "
                   + (f"{len(self.problems)} problem(s)" if self.problems else "all readable"))
        out += [f"problem: {p}" for p in self.problems]
        return out

    def raise_for_problems(self) -> None:
        """DataError (one line) when any problem was found."""
        if self.problems:
            raise DataError(f"{len(self.problems)} problem(s) in {self.name} at {self.root} (listed above), "
                            f"first: {self.problems[0]}")


def parse_options(items: list[str]) -> dict[str, str]:
    """``["masks=DIR", ...]`` -> ``{"masks": "DIR"}`` (DataError on an item without '=')."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise DataError(f"--option {item!r} is not KEY=VALUE (e.g. masks=/data/CUB_200_2011/segmentations)")
        out[key.strip()] = value.strip()
    return out


def _counts(splits: dict[str, list[dict]]) -> dict[str, dict[str, int]]:
    counts: dict[str, dict[str, int]] = {}
    for split, rows in splits.items():
        groups: dict[str, int] = {}
        for r in rows:
            groups[str(r.get("group") or "")] = groups.get(str(r.get("group") or ""), 0) + 1
        counts[split] = dict(sorted(groups.items()))
    return counts


def _check(index: DatasetIndex, decode: bool) -> tuple[int, int, list[str]]:
    seen, rows = set(), []
    for r in [*index.rows, *(r for split in index.splits.values() for r in split)]:
        if id(r) not in seen:
            seen.add(id(r))
            rows.append(r)

    def one(r: dict) -> list[str]:
        where = f" ({r.get('_file', 'metadata.csv')} line {r['_line']})" if "_line" in r else ""
        problems = row_problems(index.root, r, where, decode=decode)
        if index.masks_required and not r.get("mask_file"):
            expected = r.get("_mask_expected") or "(no path)"
            problems.append(f"mask {expected!r} of image {str(index.root / r['file_name'])!r} is missing; add it "
                            "or pass masks=none")
        return problems

    # Decoding releases the GIL: threads check a large dataset several times faster.
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        problems = [p for ps in pool.map(one, rows) for p in ps]
    return len(rows), sum(1 for r in rows if r.get("mask_file")), problems


def summarize(dataset: str, root: str | Path | None = None, options: dict[str, str] | None = None,
              decode: bool = True) -> Summary:
    """Count the samples of a dataset per split and group, and check every file.

    Args:
        dataset: ``waterbirds``, ``iwildcam``, ``folder``, another registered name
            (``waterbirds-synth``), or a spec ``NAME[:SPLIT][@ROOT][?KEY=VALUE&...]`` / folder path.
        root: the dataset folder (overrides ``@ROOT``).
        options: loader options (``masks``, ``subset``, ...), over those in the spec.
        decode: decode every image (catches truncated files), not only its header.

    Returns:
        A :class:`Summary`; call :meth:`Summary.raise_for_problems` to fail on problems.

    Raises:
        DataError: unknown dataset, unreadable layout (no folder, no metadata.csv, wrong columns).
    """
    name, _, spec_root, spec_options = parse_spec(dataset)
    root = root if root is not None else spec_root
    options = {**spec_options, **(options or {})}
    if name == "folder" or (name not in list_datasets() and Path(dataset).expanduser().exists()):
        index = folder_index(root if name == "folder" else dataset)
    elif get_index(name) is not None:
        index = get_index(name)(root, **options)
    elif name in list_datasets():
        if root is not None or options:
            raise DataError(f"dataset {name!r} takes no --root or options")
        ds = resolve_dataset(name)
        if not hasattr(ds, "rows"):  # generated in memory: nothing to check
            items = [ds[i] for i in range(len(ds))]
            return Summary(name, None, dict(getattr(ds, "class_names", {})),
                           _counts({str(items[0].get("split") or "all"): items}))
        index = folder_index(ds.root)
        index.name = name
    else:
        raise DataError(f"dataset {dataset!r} is unknown; use waterbirds, iwildcam, folder or one of: "
                        f"{', '.join(list_datasets())}")
    images, masks, problems = _check(index, decode)
    return Summary(index.name, index.root, index.class_names, _counts(index.splits), images, masks, problems,
                   list(index.notes))

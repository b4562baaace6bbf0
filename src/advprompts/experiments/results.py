"""An experiment's results table: ``results.csv`` (one row per evaluated cell) and its summary over seeds."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from advprompts.fsio import write_csv

BASE_COLUMNS = ["benchmark", "method", "n_extra", "seed", "avg_acc", "worst_group_acc", "macro_f1"]
POOL_COLUMNS = ["pool_faithfulness", "pool_missing_groups", "pool_target_places", "pool_night"]


def write_results(out: Path, rows: list[dict]) -> Path:
    """``OUT/results.csv``: one row per cell, then its pool's composition (``pool_*``, when judged) and one
    ``acc_<group>`` column per group."""
    pool = [k for k in POOL_COLUMNS if any(k in r for r in rows)]
    groups = sorted({k for r in rows for k in r if k.startswith("acc_")})
    write_csv(out / "results.csv", rows, BASE_COLUMNS + pool + groups, extrasaction="ignore")
    return out / "results.csv"


def summarize(rows: list[dict]) -> list[dict]:
    """Mean and sample std (ddof 1; 0 for one seed) over seeds per (method, n_extra)."""
    cells: dict[tuple[str, int], list[dict]] = {}
    for r in rows:
        cells.setdefault((r["method"], int(r["n_extra"])), []).append(r)
    out = []
    for (method, n), rs in cells.items():
        wg = np.array([float(r["worst_group_acc"]) for r in rs])
        avg = np.array([float(r["avg_acc"]) for r in rs])
        f1 = np.array([float(r.get("macro_f1") or "nan") for r in rs])  # nan: a cell from before the metric
        out.append({"method": method, "n_extra": n, "seeds": len(rs), "worst_group_mean": wg.mean(),
                    "worst_group_std": _sample_std(wg), "avg_mean": avg.mean(), "avg_std": _sample_std(avg),
                    "macro_f1_mean": f1.mean(), "macro_f1_std": _sample_std(f1)})
    return out


def _sample_std(values: np.ndarray) -> float:
    """The sample standard deviation (ddof 1), 0 for a single value."""
    return float(values.std(ddof=1)) if len(values) > 1 else 0.0

"""Where an experiment's time goes: ``profile.csv``, one row per stage run (or reused) in the run folder.

Columns: ``stage`` (``base_training``, ``prompts``, ``generation``, ``pool``, ``finetune``, ``evaluate``),
``method``, ``seed``, ``n_extra``, ``seconds`` and ``cached``. A stage that a resumed run finds done (a
base model, a generated pool, an evaluated cell) is written once per run with ``cached=1`` and no
seconds, so a resumed run keeps the earlier rows and their times and never reports a reused stage as 0 s. The file is
rewritten atomically after every row. It is a timing record: two runs of the same experiment give the
same results but not the same ``profile.csv``.
"""

from __future__ import annotations

import contextlib
import csv
import time
from pathlib import Path

from advprompts.fsio import read_csv, write_csv

COLUMNS = ["stage", "method", "seed", "n_extra", "seconds", "cached"]


class StageProfile:
    """The rows of ``out/profile.csv`` (earlier rows are read back on a resumed run)."""

    def __init__(self, out: str | Path):
        self.path = Path(out) / "profile.csv"
        try:
            self.rows = read_csv(self.path) if self.path.is_file() else []
        except (OSError, csv.Error, UnicodeDecodeError):  # a foreign or damaged file: start over
            self.rows = []
        self.rows = [r for r in self.rows if set(COLUMNS) <= set(r)]
        self.seen: set[tuple] = set()  # stages this run has written (a reused one is written once)

    def _key(self, row: dict) -> tuple:
        return tuple(str(row.get(c, "")) for c in COLUMNS[:4])

    def add(self, stage: str, method: str = "", seed: int | str = "", n_extra: int | str = "",
            seconds: float | None = None) -> None:
        """One row: a stage that took ``seconds``, or (``seconds=None``) one reused from an earlier run,
        written once per run (and not at all after this run timed it)."""
        row = {"stage": stage, "method": method, "seed": seed, "n_extra": n_extra,
               "seconds": "" if seconds is None else round(seconds, 3), "cached": int(seconds is None)}
        if seconds is None and self._key(row) in self.seen:
            return
        self.seen.add(self._key(row))
        self.rows.append(row)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_csv(self.path, self.rows, COLUMNS, extrasaction="ignore")

    @contextlib.contextmanager
    def stage(self, stage: str, method: str = "", seed: int | str = "", n_extra: int | str = ""):
        """Time the block as one row (nothing is written when the block raises)."""
        t0 = time.perf_counter()
        yield
        self.add(stage, method, seed, n_extra, time.perf_counter() - t0)

    def summary(self) -> list[dict]:
        """Per stage, in first-seen order: rows timed, rows reused, total and mean seconds."""
        out: dict[str, dict] = {}
        for r in self.rows:
            s = out.setdefault(r["stage"], {"stage": r["stage"], "runs": 0, "cached": 0, "seconds": 0.0})
            if str(r["cached"]) == "1" or r["seconds"] in ("", None):
                s["cached"] += 1
            else:
                s["runs"] += 1
                s["seconds"] += float(r["seconds"])
        total = sum(s["seconds"] for s in out.values()) or 1.0
        for s in out.values():
            s["mean_s"] = s["seconds"] / s["runs"] if s["runs"] else 0.0
            s["share"] = s["seconds"] / total
        return list(out.values())

    def format_summary(self) -> str:
        """The summary as a plain-text table (what ``advprompts experiment`` prints at the end)."""
        rows = self.summary()
        lines = [f"{'stage':<14} {'runs':>5} {'cached':>6} {'total s':>9} {'mean s':>8} {'share':>6}"]
        lines += [f"{s['stage']:<14} {s['runs']:>5} {s['cached']:>6} {s['seconds']:>9.1f} {s['mean_s']:>8.2f} "
                  f"{100 * s['share']:>5.1f}%" for s in rows]
        lines.append(f"{'all':<14} {sum(s['runs'] for s in rows):>5} {sum(s['cached'] for s in rows):>6} "
                     f"{sum(s['seconds'] for s in rows):>9.1f}")
        return "\n".join(lines)

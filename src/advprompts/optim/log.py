"""The optimisation's log: ``log.csv`` rows (rewritten atomically after each checkpoint) and optional
TensorBoard scalars, one row per (prompt, step); shards keep their own part and merge at the end."""

from __future__ import annotations

from pathlib import Path

from advprompts.errors import require_extra
from advprompts.fsio import read_csv, write_csv


def require_tensorboard() -> None:
    """TensorBoard is an optional extra: a one-line error naming it (and log.tensorboard=false) when missing."""
    require_extra("tensorboard", "tensorboard", "log.tensorboard=true", "set log.tensorboard=false")


class OptimLog:
    """log.csv rows (rewritten atomically) + optional TensorBoard."""

    def __init__(self, out: Path, columns: list[str], tensorboard: bool, purge_step: int | None,
                 part: str | None = None, keys: set[str] | None = None, order: dict[str, int] | None = None):
        # A shard keeps its rows in .parts/<part> (seeded from log.csv for its own prompts, so a run
        # started unsharded can go on sharded); merge() gathers the parts into log.csv. ``order``
        # (prompt -> index): rows are written by prompt, then step (prompts trained together interleave).
        self.out, self.columns, self.order = out, ["prompt", "step", *columns, "total", "seconds"], order
        self.path = out / ".parts" / part if part else out / "log.csv"
        source = self.path if self.path.is_file() or not part else out / "log.csv"
        self.rows = read_csv(source) if source.is_file() else []
        if part:
            self.path.parent.mkdir(exist_ok=True)
            self.rows = [r for r in self.rows if r["prompt"] in keys]
        self.tb = None
        if tensorboard:
            require_tensorboard()
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(out / "tensorboard"), purge_step=purge_step)

    def truncate(self, key: str, after_step: int) -> None:
        self.rows = [r for r in self.rows if r["prompt"] != key or int(r["step"]) <= after_step]

    def add(self, key: str, step: int, values: dict[str, float]) -> None:
        self.rows.append({"prompt": key, "step": step, **values})
        if self.tb is not None:
            for name, value in values.items():
                self.tb.add_scalar(f"{key}/{name}", value, step)

    def _write(self, path: Path, rows: list[dict]) -> None:
        write_csv(path, rows, self.columns, extrasaction="ignore")

    def flush(self) -> None:
        if self.order is not None:
            self.rows.sort(key=lambda r: (self.order.get(r["prompt"], len(self.order)), int(r["step"])))
        self._write(self.path, self.rows)
        if self.tb is not None:
            self.tb.flush()

    def merge(self, order: dict[str, int]) -> None:
        """log.csv = every shard's rows (and earlier log.csv rows of prompts no part holds)."""
        parts = [r for p in sorted((self.out / ".parts").glob("log-*.csv")) for r in read_csv(p)]
        held = {r["prompt"] for r in parts}
        old = self.out / "log.csv"
        rows = [r for r in (read_csv(old) if old.is_file() else []) if r["prompt"] not in held]
        rows = sorted({(r["prompt"], int(r["step"])): r for r in rows + parts}.values(),
                      key=lambda r: (order.get(r["prompt"], len(order)), int(r["step"])))
        self._write(old, rows)

    def close(self) -> None:
        self.flush()
        if self.tb is not None:
            self.tb.close()

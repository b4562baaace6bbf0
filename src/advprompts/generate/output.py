"""What every generation run writes: ``images/NNNNN.png`` (atomically, on a background thread) and
``metadata.csv`` rows (appended per shard to ``.parts/``, merged when the run finishes), and the seed
of each image."""

from __future__ import annotations

import csv
import io
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from advprompts.fsio import atomic_write_bytes, csv_text, write_csv

COLUMNS = ["file_name", "label", "label_name", "source_file", "prompt", "prompt_file", "seed", "index", "group"]


@dataclass
class GenerateResult:
    """Outcome of a generation run: folder, images written now, images skipped as already done."""

    out_dir: Path
    written: int
    skipped: int
    total: int


def image_seed(run_seed: int, index: int) -> int:
    """The seed of image ``index`` (stable across batch sizes, shards and restarts)."""
    return int(np.random.SeedSequence([run_seed, index]).generate_state(1)[0])


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) in [0, 1] -> (B, H, W, 3) uint8, rounding as diffusers' ``numpy_to_pil``
    (one device-to-host copy per batch instead of one per image)."""
    return (images.detach().float().cpu().permute(0, 2, 3, 1).numpy() * 255).round().astype("uint8")


def save_png(path: Path, array: np.ndarray) -> None:
    buf = io.BytesIO()  # encoded in memory, so a failed write (disk full) leaves no temp file behind
    Image.fromarray(array).save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())


def read_part(path: Path, repair: bool = False) -> list[dict]:
    """Rows of a ``.parts`` file, without a partial last line (a crash mid-append); ``repair``
    also cuts it from the file so that the next append starts on a fresh line."""
    if not path.is_file():
        return []
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        data = data[: data.rfind(b"\n") + 1]
        if repair:
            atomic_write_bytes(path, data)
    return list(csv.DictReader(io.StringIO(data.decode())))


class Rows:
    """This shard's metadata rows, appended to ``.parts/`` (O(batch) per batch, not O(run));
    merged into metadata.csv on :meth:`merge`."""

    def __init__(self, out: Path, shard: tuple[int, int]):
        self.out = out
        self.parts = out / ".parts"
        self.parts.mkdir(exist_ok=True)
        self.path = self.parts / f"shard-{shard[0]}-of-{shard[1]}.csv"
        self.rows = read_part(self.path, repair=True)

    def done(self) -> set[int]:
        return {int(r["index"]) for r in self.rows if (self.out / r["file_name"]).is_file()}

    def add(self, rows: list[dict]) -> None:
        header = not self.path.is_file() or self.path.stat().st_size == 0
        with open(self.path, "a", newline="") as f:
            f.write(csv_text(rows, COLUMNS, extrasaction="ignore", header=header))
        self.rows.extend(rows)

    def merge(self, state=None, card: dict | None = None) -> None:
        """Write metadata.csv from every shard's rows; under a launcher once all processes are done.
        ``card``: arguments of :func:`~advprompts.data.card.write_dataset_card` (README.md beside it)."""
        if state is not None:
            state.wait_for_everyone()
            if not state.is_main_process:
                return
        rows = {int(r["index"]): r for part in sorted(self.parts.glob("shard-*.csv")) for r in read_part(part)}
        write_csv(self.out / "metadata.csv", [rows[k] for k in sorted(rows)], COLUMNS, extrasaction="ignore")
        if card is not None:  # types the columns for `datasets.load_dataset(out)` (label: ClassLabel)
            from advprompts.data.card import write_dataset_card

            write_dataset_card(self.out, COLUMNS, list(rows.values()), **card)


class Writer:
    """Saves a batch's PNGs on a background thread while the next batch is denoised (PNG encoding
    releases the GIL); a batch's rows are appended only once its images exist."""

    def __init__(self, rows: Rows):
        self.rows, self.pool, self.pending = rows, ThreadPoolExecutor(1), None

    def submit(self, paths: list[Path], arrays: np.ndarray, new_rows: list[dict]) -> None:
        futures = [self.pool.submit(save_png, p, a) for p, a in zip(paths, arrays)]
        self.flush()
        self.pending = (futures, new_rows)

    def flush(self) -> None:
        pending, self.pending = self.pending, None
        if pending is not None:
            for future in pending[0]:
                future.result()  # re-raises a failed save
            self.rows.add(pending[1])

"""Work split over processes: ``--shard i/n`` by hand (job arrays) and launched processes
(``accelerate launch``, ``torchrun``), shared by ``generate`` and ``optimize``."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import torch

from advprompts.device import resolve_device
from advprompts.errors import ShardError
from advprompts.rundir import prepare_run_dir


def parse_shard(spec: str | tuple[int, int] | None) -> tuple[int, int]:
    """``"i/n"`` (0-based i) or ``(i, n)`` -> ``(i, n)``; ShardError when invalid."""
    if spec is None:
        return 0, 1
    if isinstance(spec, str):
        head, sep, tail = spec.partition("/")
        if not sep or not head.strip().isdigit() or not tail.strip().isdigit():
            raise ShardError(f"--shard {spec!r} is invalid; use i/n with 0 <= i < n, e.g. 0/4")
        spec = (int(head), int(tail))
    i, n = spec
    if n < 1 or not 0 <= i < n:
        raise ShardError(f"--shard {i}/{n} is invalid; use i/n with 0 <= i < n, e.g. 0/4")
    return i, n


def launch_state():
    """accelerate's ``PartialState`` when this process is one of several started by a launcher
    (``accelerate launch``, ``torchrun``, ``mpirun``), else None (a plain single process)."""
    world = next((int(os.environ[k]) for k in ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE")
                  if os.environ.get(k, "").isdigit()), 1)
    if world <= 1:
        return None
    from accelerate import PartialState

    # On a CPU-only host PartialState() would see one process; cpu=True selects its gloo backend.
    return PartialState(cpu=not torch.cuda.is_available())


def resolve_shard(shard: str | tuple[int, int] | None, state=None) -> tuple[int, int]:
    """The shard this process makes: ``shard`` (i/n, by hand) split over the launched processes.

    Process p of P takes ``i + n * p`` of ``n * P``. Since ``k % (n P) == i + n p`` implies
    ``k % n == i``, the P processes of one launch make exactly the items of ``i/n``, and a job
    array of n launches (``--shard 0/n`` ... ``--shard n-1/n``) covers the run once.
    """
    i, n = parse_shard(shard)
    if state is None or state.num_processes <= 1:
        return i, n
    return i + n * state.process_index, n * state.num_processes


def launch_device(spec: str, state) -> torch.device:
    """``spec`` as ``resolve_device``; ``auto`` under a launcher is this process's ``cuda:<local rank>``."""
    if state is None or spec != "auto":
        return resolve_device(spec)
    return torch.device("cpu") if state.device.type == "cpu" else state.device


def open_run(out: Path, fingerprint: dict, name: str, overwrite: bool, state, write,
             shard: tuple[int, int] | None = None) -> None:
    """Create or continue a shared run folder and call ``write()`` when it is new. Under a
    launcher the main process goes first and alone may ``overwrite``; the others then join.
    ``shard``: this process's resolved ``(i, n)`` (its lock on the folder, see ``prepare_run_dir``)."""
    with state.main_process_first() if state is not None else contextlib.nullcontext():
        main = state is None or state.is_main_process
        if not prepare_run_dir(out, fingerprint, name, resume=False, overwrite=overwrite and main, auto_resume=True,
                               shard=shard):
            write()

"""Kill anywhere, resume to the same bytes: run a command in a child process, SIGKILL it at a seeded
moment, rerun it with the same arguments, and compare its outputs with an uninterrupted run's.

Commands run in processes forked from one "zygote" (``python tests/killharness.py``) that imported
torch, diffusers and advprompts once: a fresh ``python -m advprompts`` spends about 8 s importing on a
loaded 2-core machine, a fork starts in milliseconds. Each child restores the RNG states the zygote
had before its warm-up, so it starts as a fresh process does, and runs the CLI's ``main()`` (or a
Python snippet) as ``python -m advprompts`` would.

A kill moment is a file event under the command's working folder, named by (kind, path, occurrence),
so it lands at the same place whatever the thread interleaving; the child SIGKILLs itself there.
Kinds: ``open`` (opened for writing), ``save`` (``torch.save`` / safetensors ``save_file``, written in
C), ``rename``, ``mkdir``, ``remove``, ``rmtree``. Modes: ``before`` (just before the event takes
effect) and ``torn`` (``open``/``save`` only: half the bytes reach the file, then the process dies).
Kill points are drawn with a seeded generator from the events an uninterrupted run records.
"""

from __future__ import annotations

import csv
import io
import json
import os
import random
import re
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

KINDS = ("open", "save", "rename", "mkdir", "remove", "rmtree")
WRITES = ("open", "save")
_TMP_PID = re.compile(r"\.\d+\.tmp$")  # fsio's temp files: ".<name>.<pid>.tmp"


def normalize(path: str, root: str) -> str | None:
    """``path`` relative to ``root``, the writer's pid in temp names replaced; None outside ``root`` and
    for lock files (os-level, not part of the output)."""
    full = os.path.abspath(path)
    if not full.startswith(root + os.sep):
        return None
    rel = os.path.relpath(full, root)
    if os.path.basename(rel).startswith(".advprompts") and rel.endswith(".lock"):
        return None
    return re.sub(r"\.partial-\d+", ".partial-PID", _TMP_PID.sub(".PID.tmp", rel))  # export's "<out>.partial-<pid>"


# ---------------------------------------------------------------------------------------------- the child
class _Torn:
    """A file opened for writing whose first write reaches the disk half-way before the process dies.
    ``fileno`` is hidden so that writers (PIL) go through ``write``."""

    def __init__(self, f):
        self._f = f

    def write(self, data):
        self._f.write(data[: max(1, len(data) // 2)])
        self._f.flush()
        _die()

    def writelines(self, lines):
        self.write("".join(lines) if lines and isinstance(lines[0], str) else b"".join(lines))

    def fileno(self):
        raise io.UnsupportedOperation("fileno")

    def close(self):
        _die()  # nothing was written: the file exists, empty

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __getattr__(self, name):
        return getattr(self._f, name)


def _die():
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def _install(root: str, kill: dict | None, events: list) -> None:
    """Count this process's file events under ``root`` (its working folder) into ``events`` and die at ``kill``."""
    import builtins
    import threading

    import safetensors.torch
    import torch

    seen: dict[tuple[str, str], int] = {}
    lock = threading.Lock()

    def event(kind: str, path) -> str | None:
        """Record one event; returns the kill mode when this is the kill point."""
        rel = normalize(os.fsdecode(path), root) if isinstance(path, (str, bytes, os.PathLike)) else None
        if rel is None:
            return None
        with lock:
            n = seen[(kind, rel)] = seen.get((kind, rel), 0) + 1
            events.append([kind, rel, n])
        if kill and (kind, rel, n) == (kill["kind"], kill["path"], kill["n"]):
            if kill["mode"] == "before":
                _die()
            return kill["mode"]
        return None

    def audit(name, args):
        if name == "os.rename":
            event("rename", args[1])
        elif name in ("os.mkdir", "os.remove", "shutil.rmtree"):
            event({"os.mkdir": "mkdir", "os.remove": "remove", "shutil.rmtree": "rmtree"}[name], args[0])

    def wrap_open(original):
        def opened(file, mode="r", *args, **kwargs):
            writing = isinstance(file, (str, bytes, os.PathLike)) and any(c in mode for c in "wax+")
            torn = writing and event("open", file) == "torn"
            f = original(file, mode, *args, **kwargs)
            return _Torn(f) if torn else f
        return opened

    def wrap_save(original, path_arg):
        def saved(*args, **kwargs):
            path = args[path_arg] if len(args) > path_arg else kwargs.get("filename", kwargs.get("f"))
            if event("save", path) != "torn":
                return original(*args, **kwargs)
            original(*args, **kwargs)
            os.truncate(path, os.path.getsize(path) // 2)
            _die()
        return saved

    sys.addaudithook(audit)
    builtins.open = io.open = wrap_open(io.open)
    # Rebind every module's reference to the C-level writers (``from safetensors.torch import save_file``).
    for original, replacement in ((torch.save, wrap_save(torch.save, 1)),
                                  (safetensors.torch.save_file, wrap_save(safetensors.torch.save_file, 1))):
        for module in list(sys.modules.values()):
            try:
                names = [k for k, v in vars(module).items() if v is original]
            except TypeError:
                continue
            for name in names:
                setattr(module, name, replacement)


def _child(request: dict, rng_states) -> None:
    """Run the request in this forked process, then exit (never returns)."""
    log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    import numpy as np
    import torch

    torch.set_rng_state(rng_states[0])
    np.random.set_state(rng_states[1])
    random.setstate(rng_states[2])
    os.chdir(request["cwd"])
    events: list = []
    _install(os.getcwd(), request.get("kill"), events)
    code = 1
    try:
        if request.get("argv") is not None:
            from advprompts.cli.app import main

            sys.argv = ["advprompts", *request["argv"]]
            main()
        else:
            exec(request["python"], {"__name__": "__killharness__"})
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:  # noqa: BLE001 (reported in the log, exit 1)
        import traceback

        traceback.print_exc()
    finally:
        if request.get("record"):
            Path(request["record"]).write_text(json.dumps(events))
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def serve() -> None:
    """The zygote: import and warm up once, then fork one child per request line on stdin."""
    import numpy as np
    import torch

    rng_states = (torch.get_rng_state(), np.random.get_state(), random.getstate())
    import importlib
    import pkgutil

    import advprompts

    # Every module the commands import lazily, imported once here (by walking the package, whatever its layout).
    for module in pkgutil.walk_packages(advprompts.__path__, "advprompts.", onerror=lambda name: None):
        if not module.name.endswith("__main__"):
            try:
                importlib.import_module(module.name)
            except Exception:  # noqa: BLE001 (an optional dependency: the command imports it itself)
                pass
    from advprompts.models.loading import load_components

    load_components("tiny", device="cpu")  # and what building the tiny models imports
    torch.set_num_threads(1)
    out = sys.stdout
    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            _child(request, rng_states)
        print(json.dumps({"pid": pid}), file=out, flush=True)
        _, status = os.waitpid(pid, 0)
        print(json.dumps({"rc": os.waitstatus_to_exitcode(status)}), file=out, flush=True)


# ---------------------------------------------------------------------------------------------- the test side
@dataclass(frozen=True)
class Kill:
    """Where a run dies: the ``n``-th ``kind`` event on ``path`` (normalised), ``before`` it or ``torn``."""

    kind: str
    path: str
    n: int
    mode: str

    def __str__(self) -> str:
        return f"{self.mode} {self.kind} #{self.n} {self.path}"


class Zygote:
    """The forking server; one per test module (:func:`zygote` fixture below)."""

    def __init__(self, root: Path, env: dict | None = None):
        self.root = Path(root)
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "",
               "TQDM_DISABLE": "1", **(env or {})}
        self.proc = subprocess.Popen([sys.executable, __file__], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     env=env, text=True, cwd=self.root)
        self.runs = 0

    def run(self, cwd: Path, argv: list[str] | None = None, python: str | None = None, kill: Kill | None = None,
            record: bool = False, timeout: float = 300) -> tuple[int, list | None, str]:
        """Run one command in ``cwd``; returns ``(exit status, events or None, its output)``; -9: killed."""
        import threading

        self.runs += 1
        log = self.root / f"run-{self.runs}.log"
        events = self.root / f"run-{self.runs}.events.json"
        request = {"argv": argv, "python": python, "cwd": str(cwd), "log": str(log),
                   "kill": kill.__dict__ if kill else None, "record": str(events) if record else None}
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the zygote died before the command started")
        pid, fired = json.loads(line)["pid"], []

        def stop():  # a hung command fails its test instead of hanging the suite
            fired.append(True)
            os.kill(pid, signal.SIGKILL)

        watchdog = threading.Timer(timeout, stop)
        watchdog.start()
        line = self.proc.stdout.readline()
        watchdog.cancel()
        if fired or not line:
            raise RuntimeError(f"the command {'ran over {timeout} s' if fired else 'lost its zygote'}; see {log}")
        rc = json.loads(line)["rc"]
        return rc, json.loads(events.read_text()) if record else None, log.read_text() if log.exists() else ""

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def kill_point(events: list, seed: str, mode: str, kinds: str, pattern: str) -> Kill:
    """A ``mode`` kill at one of the ``kinds`` events (comma-separated, or "*") of an uninterrupted run
    whose path matches the regex ``pattern``, drawn with ``seed``."""
    allowed = set(WRITES if mode == "torn" else KINDS) & (set(KINDS) if kinds == "*" else set(kinds.split(",")))
    matching = [e for e in events if e[0] in allowed and re.search(pattern, e[1])]
    assert matching, f"no {kinds} event matches {pattern!r} (events: {sorted({e[1] for e in events})})"
    kind, path, n = random.Random(seed).choice(matching)
    return Kill(kind, path, n, mode)


def _csv_without(data: bytes, columns: set[str]) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in columns} for row in csv.DictReader(io.StringIO(data.decode()))]


def _json_without(data: bytes, keys: set[str]):
    value = json.loads(data)
    return {k: v for k, v in value.items() if k not in keys} if isinstance(value, dict) else value


#: Timing fields, the only ones allowed to differ: a log's or cell's seconds, a zoo manifest's clocks.
TIMING = {"seconds", "build_times_s"}


def _checkpoint_without_rng(path: Path):
    """An optimisation checkpoint's content but the process RNG states it records (see ``Harness``)."""
    if path.suffix == ".json":
        return _json_without(path.read_bytes(), {"rng", "sha256"})
    from safetensors.torch import load_file

    return {k: (v.dtype, v.shape, v.numpy().tobytes()) for k, v in load_file(path).items() if k != "rng.torch"}


def snapshot(folder: Path, ignore: str | None = None, checkpoint_rng: bool = True) -> dict[str, object]:
    """Every file under ``folder`` (lock files and paths matching ``ignore`` aside): bytes, or for logs
    and cached cells their content without :data:`TIMING` fields; ``checkpoint_rng=False``: optimisation
    checkpoints without their RNG states."""
    files = {}
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder).as_posix()
        if not p.is_file() or (p.name.startswith(".advprompts") and p.name.endswith(".lock")):
            continue
        if p.name == "profile.csv":  # an experiment's stage times: a resumed run also marks reused stages
            continue
        if ignore and re.search(ignore, rel):
            continue
        if not checkpoint_rng and p.parent.name == "checkpoints":
            files[rel] = _checkpoint_without_rng(p)
            continue
        data = p.read_bytes()
        if p.suffix == ".csv" and (p.name == "log.csv" or p.name.startswith("log-")):
            files[rel] = _csv_without(data, TIMING)
        elif p.suffix == ".json" and (p.parent.name == "cells" or p.name == "manifest.json"):
            files[rel] = _json_without(data, TIMING)
        else:
            files[rel] = data
    return files


def differences(expected: dict, got: dict) -> list[str]:
    """What differs between two snapshots, in words (empty when identical)."""
    out = [f"missing {k}" for k in sorted(set(expected) - set(got))]
    out += [f"extra {k}" for k in sorted(set(got) - set(expected))]
    out += [f"differs {k}" for k in sorted(set(expected) & set(got)) if expected[k] != got[k]]
    return out


Step = dict  # {"argv": [...]} (the CLI) or {"python": "..."}: one command line of a run


class Harness:
    """Runs a command (a list of steps, e.g. the shards of one run) uninterrupted once, then killed at
    given points and rerun, always in the same folder ``work`` (outputs may name their own path).

    ``ignore``: a regex of paths not compared. ``checkpoint_rng=False``: optimisation checkpoints are
    compared without the global RNG states they record, which within ``experiment`` depend on the stages
    a resumed process skipped (nothing the prompts depend on).
    """

    def __init__(self, zygote: Zygote, work: Path, steps: list[Step], ignore: str | None = None,
                 checkpoint_rng: bool = True):
        import shutil

        self.zygote, self.work, self.steps = zygote, Path(work), steps
        self.ignore, self.checkpoint_rng = ignore, checkpoint_rng
        shutil.rmtree(self.work, ignore_errors=True)
        self.work.mkdir(parents=True)
        self.events = []
        for step in steps:
            rc, events, log = zygote.run(self.work, **step, record=True)
            assert rc == 0, log[-3000:]
            self.events.append(events)
        self.expected = snapshot(self.work, ignore, checkpoint_rng)

    def resume_differences(self, step: int, kill: Kill) -> list[str]:
        """Kill step ``step`` at ``kill``, rerun it with the same arguments, run the steps after it, and
        return what differs from the uninterrupted run (empty: the same bytes)."""
        import shutil

        shutil.rmtree(self.work)
        self.work.mkdir()
        for i, args in enumerate(self.steps):
            if i == step:
                rc, _, log = self.zygote.run(self.work, **args, kill=kill)
                assert rc == -signal.SIGKILL, f"{kill} was not reached (exit {rc}): {log[-2000:]}"
            rc, _, log = self.zygote.run(self.work, **args)
            if rc != 0:
                return [f"the rerun after {kill} failed (exit {rc}): {log[-2000:]}"]
        return differences(self.expected, snapshot(self.work, self.ignore, self.checkpoint_rng))


if __name__ == "__main__":
    serve()

"""Run-folder locks: one writer per folder, the shards of one run sharing it.

:func:`lock_run_dir` takes an advisory lock (``fcntl.flock``) on ``<folder>/.advprompts.lock``,
exclusive for an unsharded run; the shards of one run (``--shard i/n``, the processes of ``accelerate
launch``) share that lock and each takes its own part's lock, ``.advprompts.shard-<i>-of-<n>.lock``,
exclusively. A second writer of the same folder (or shard) fails at once with
:class:`~advprompts.errors.OutputLockedError` naming the holder's pid, which the holder writes into the
lock file (for information only). The OS drops a lock when its process dies, so a lock file left by a
killed run never blocks a rerun. Locks live in a per-process registry: taking one this process already
holds is a no-op (the experiment runner opens folders again from the same process), and they are held
until :func:`release_run_dir`, the end of a function wrapped by :func:`releases_run_dir`, or the
process's exit. Where ``flock`` is missing (not POSIX) or unsupported by the filesystem nothing is locked.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import inspect
import logging
import os
import threading
from pathlib import Path

from advprompts.errors import OutputLockedError
from advprompts.fsio import pid_alive

try:
    import fcntl
except ImportError:  # pragma: no cover (not POSIX)
    fcntl = None

logger = logging.getLogger(__name__)
LOCK_NAME = ".advprompts.lock"
_HELD: dict[str, tuple[int, int]] = {}  # lock file (real path) -> (open fd, fcntl.LOCK_SH or LOCK_EX)
_GUARD = threading.RLock()


def _forget_inherited() -> None:
    """In a forked child (a data-loader worker, say): the child is not the writer. It closes its copies of
    the parent's lock descriptors, which, unlike unlocking them, leaves the parent's locks in place."""
    global _GUARD
    _GUARD = threading.RLock()
    for fd, _ in _HELD.values():
        with contextlib.suppress(OSError):
            os.close(fd)
    _HELD.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_inherited)


def is_lock_file(path: str | Path) -> bool:
    """Whether ``path`` is one of the run folder's lock files (not part of the run's output)."""
    name = Path(path).name
    return name.startswith(".advprompts") and name.endswith(".lock")


def _lock_files(out: Path, shard: tuple[int, int] | None) -> list[tuple[str, int]]:
    """``(real path, mode)`` of the locks a writer of ``out`` takes: the folder's, exclusive, or shared
    with the other shards plus this shard's own, exclusive."""
    folder = os.path.realpath(out)
    if shard is None or shard[1] <= 1:
        return [(os.path.join(folder, LOCK_NAME), fcntl.LOCK_EX)]
    return [(os.path.join(folder, LOCK_NAME), fcntl.LOCK_SH),
            (os.path.join(folder, f".advprompts.shard-{shard[0]}-of-{shard[1]}.lock"), fcntl.LOCK_EX)]


def _same_file(fd: int, path: str) -> bool:
    try:
        a, b = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _read_pid(path: str | Path) -> int | None:
    try:
        text = Path(path).read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _locked(out: Path, path: str, shard: tuple[int, int] | None) -> OutputLockedError:
    """The error for a lock another process holds, naming the holders' pids (live ones, as far as known)."""
    candidates = [_read_pid(path)]
    if os.path.basename(path) == LOCK_NAME:  # shards hold it shared; their pids are in their part locks
        candidates += [_read_pid(p) for p in sorted(Path(path).parent.glob(".advprompts.shard-*.lock"))]
    pids = sorted({p for p in candidates if p is not None and p != os.getpid() and pid_alive(p)})
    who = (f"pid {pids[0]}" if len(pids) == 1 else f"pids {', '.join(map(str, pids))}") if pids else "pid unknown"
    what = "" if os.path.basename(path) == LOCK_NAME else f"shard {shard[0]}/{shard[1]} of "
    return OutputLockedError(f"{what}output folder {str(out)!r} is being written by another process ({who}); "
                             "wait for it to finish or pick another --out")


def _take(out: Path, path: str, mode: int, create: bool, shard) -> bool:
    """Hold ``path``'s lock in ``mode``; True when newly taken (False: already held here, or no lock
    file and ``create`` is False, or locks unsupported). Raises OutputLockedError when another process
    holds it."""
    held = _HELD.get(path)
    if held is not None and not _same_file(held[0], path):  # deleted or replaced (a parent overwritten)
        _drop(path)
        held = None
    if held is not None:
        fd, have = held
        if mode == fcntl.LOCK_EX and have == fcntl.LOCK_SH:  # a shard's process now writes the whole folder
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                try:  # the conversion may have dropped the shared lock: take it back
                    fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                except OSError:
                    _drop(path)
                raise _locked(out, path, shard) from None
            _HELD[path] = (fd, fcntl.LOCK_EX)
            _write_pid(fd)
        return False
    for _ in range(3):  # retry if the file was replaced between opening and locking it
        try:
            fd = os.open(path, os.O_RDWR | (os.O_CREAT if create else 0), 0o644)
        except FileNotFoundError:
            return False
        except PermissionError:  # a lock file we may not write: a read-only descriptor locks as well
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                return False
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise _locked(out, path, shard) from None
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                logger.warning("cannot lock %s (%s); a second writer of %s would not be stopped", path,
                               os.strerror(exc.errno), out)
                return False
            raise
        if _same_file(fd, path):
            break
        os.close(fd)
    else:
        return False
    if mode == fcntl.LOCK_EX:
        _write_pid(fd)
    _HELD[path] = (fd, mode)
    return True


def _write_pid(fd: int) -> None:
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except OSError:
        pass  # informational only


def _drop(path: str) -> None:
    fd, _ = _HELD.pop(path)
    try:
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def lock_run_dir(out: str | Path, shard: tuple[int, int] | None = None, *, create: bool = True,
                 keep: bool = True) -> list[str]:
    """Take the locks a writer of ``out`` needs (see the module docstring); ``shard`` is this process's
    resolved ``(i, n)``. With ``create=False`` only lock files that exist are locked; with ``keep=False``
    the locks taken here are released again (a check that no other process writes ``out``).

    Returns:
        The lock files newly taken (not those this process already held).

    Raises:
        OutputLockedError: another live process holds one of them.
    """
    if fcntl is None:
        return []
    out = Path(out)
    taken = []
    with _GUARD:
        try:
            for path, mode in _lock_files(out, shard):
                if _take(out, path, mode, create, shard):
                    taken.append(path)
        except BaseException:  # all or nothing
            for path in taken:
                _drop(path)
            raise
        if not keep:
            for path in taken:
                _drop(path)
            return []
    return taken


def held_locks(out: str | Path) -> set[str]:
    """The lock files of ``out`` this process holds."""
    folder = os.path.realpath(out)
    with _GUARD:
        return {path for path in _HELD if os.path.dirname(path) == folder}


def release_run_dir(out: str | Path, only: set[str] | None = None) -> None:
    """Release this process's locks on ``out`` (``only`` those of ``only``); the lock files stay."""
    with _GUARD:
        for path in held_locks(out) if only is None else only & held_locks(out):
            _drop(path)


def releases_run_dir(param: str = "out"):
    """Decorator: the locks the wrapped function takes on the folder passed as ``param`` are released
    when it returns or raises (those held before the call stay held)."""

    def wrap(fn):
        signature = inspect.signature(fn)

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            out = signature.bind(*args, **kwargs).arguments[param]
            before = held_locks(out)
            try:
                return fn(*args, **kwargs)
            finally:
                release_run_dir(out, only=held_locks(out) - before)

        return wrapper

    return wrap

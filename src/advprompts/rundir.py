"""Run folders: refuse to mix runs, resume the same run, one writer at a time, write files atomically.

:func:`prepare_run_dir` makes a folder ready for one run and takes its lock, so that it has one writer
(:mod:`advprompts.runlock`: advisory locks shared by the shards of one run, dropped when their process dies).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import yaml

from advprompts.errors import OutputExistsError
from advprompts.fsio import check_writable, remove_stale_temp_files, temp_file_pid
from advprompts.runlock import is_lock_file, lock_run_dir
logger = logging.getLogger(__name__)


def _first_difference(a, b, prefix: str = "") -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b), key=str):
            if a.get(key) != b.get(key):
                return _first_difference(a.get(key), b.get(key), f"{prefix}{key}.")
    return prefix.rstrip(".") or "(root)"


def _off(value) -> bool:
    """What an option added in a later version holds while it is off: None, False, 0 or empty."""
    return value is None or value is False or (type(value) in (int, float) and value == 0) or value in ([], {})


def _unset_new_keys_dropped(config, stored):
    """``config`` without the keys ``stored`` lacks whose value is off (None, False, 0, empty): an option
    added in a later version, left unset, does not make a run written before it another run."""
    if not (isinstance(config, dict) and isinstance(stored, dict)):
        return config
    return {k: _unset_new_keys_dropped(v, stored.get(k)) for k, v in config.items()
            if k in stored or not _off(v)}


def _empty(out: Path) -> None:
    """Delete ``out``'s contents except its lock files (held: deleting them would let a second writer in)."""
    for child in out.iterdir():
        if is_lock_file(child):
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


def prepare_run_dir(out: str | Path, config: dict, config_name: str, *, resume: bool, overwrite: bool,
                    auto_resume: bool = False, create: bool = True, shard: tuple[int, int] | None = None) -> bool:
    """Make ``out`` ready for a run described by ``config``, as its only writer.

    A fresh or empty folder is created. A folder holding the same run (same ``config_name``
    content) is continued when ``resume`` or ``auto_resume``; ``overwrite`` empties a folder that
    an advprompts run wrote. Anything else is refused.

    With ``create=True`` the folder's lock is taken and kept (:func:`lock_run_dir`; ``shard``: this
    process's resolved ``(i, n)``, whose shards share the folder and lock only their part). With
    ``create=False`` nothing is touched (a dry check before loading models, so that errors leave no
    partial output; a folder another process is writing fails it already); call again with
    ``create=True`` afterwards.

    Returns:
        True when an existing run is continued.

    Raises:
        FileSystemError: the OS refuses to create or write ``out`` (:func:`check_writable`).
        OutputLockedError: another live process is writing the folder (or this shard).
        OutputExistsError: the folder holds a different run, foreign files, or the same run
            without ``resume``.
    """
    out = Path(out)
    if resume and overwrite:
        raise OutputExistsError("--resume and --overwrite exclude each other; pick one")
    stored_path = out / config_name
    check_writable(out)
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"output {str(out)!r} is a file; pass a folder path")
    if out.is_dir():  # another writer fails us first (existing lock files only: nothing is created)
        lock_run_dir(out, shard, create=False, keep=create)
    # A killed writer's temp files are not content: a folder holding only those (say a run killed while
    # writing its config) is continued as empty, and they are deleted once this process holds the folder.
    if out.is_dir() and any(not is_lock_file(p) and temp_file_pid(p) is None for p in out.iterdir()):
        if not stored_path.is_file():
            raise OutputExistsError(f"output folder {str(out)!r} is not empty and holds no advprompts run; "
                                    "pick an empty or new folder")
        if overwrite:
            if create:
                lock_run_dir(out, shard)
                logger.info("overwriting %s", out)
                _empty(out)
        else:
            stored = yaml.safe_load(stored_path.read_text())
            current = _unset_new_keys_dropped(config, stored)
            if stored != current:
                raise OutputExistsError(
                    f"output folder {str(out)!r} holds a different run ({_first_difference(stored, current)!r} "
                    "differs); use another --out or pass --overwrite")
            if not (resume or auto_resume):
                raise OutputExistsError(f"output folder {str(out)!r} already holds this run; pass --resume to "
                                        "continue it or --overwrite to start again")
            if create:
                lock_run_dir(out, shard)  # a run written before locks existed gets its lock file now
                remove_stale_temp_files(out)
            return True
    if create:
        out.mkdir(parents=True, exist_ok=True)
        lock_run_dir(out, shard)
        remove_stale_temp_files(out)
    return False

"""Run folders: refuse to mix runs, resume the same run, write files atomically."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import yaml

from advprompts.errors import OutputExistsError

logger = logging.getLogger(__name__)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to a temp file next to ``path`` and rename it into place."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def _first_difference(a, b, prefix: str = "") -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b), key=str):
            if a.get(key) != b.get(key):
                return _first_difference(a.get(key), b.get(key), f"{prefix}{key}.")
    return prefix.rstrip(".") or "(root)"


def _unset_new_keys_dropped(config, stored):
    """``config`` without the keys ``stored`` lacks whose value is None: an option added in a later
    version, left unset, does not make a run written before it another run."""
    if not (isinstance(config, dict) and isinstance(stored, dict)):
        return config
    return {k: _unset_new_keys_dropped(v, stored.get(k)) for k, v in config.items()
            if k in stored or v is not None}


def prepare_run_dir(out: str | Path, config: dict, config_name: str, *, resume: bool, overwrite: bool,
                    auto_resume: bool = False, create: bool = True) -> bool:
    """Make ``out`` ready for a run described by ``config``.

    A fresh or empty folder is created. A folder holding the same run (same ``config_name``
    content) is continued when ``resume`` or ``auto_resume``; ``overwrite`` empties a folder that
    an advprompts run wrote. Anything else is refused.

    With ``create=False`` nothing is touched (a dry check before loading models, so that errors
    leave no partial output); call again with ``create=True`` afterwards.

    Returns:
        True when an existing run is continued.

    Raises:
        OutputExistsError: the folder holds a different run, foreign files, or the same run
            without ``resume``.
    """
    out = Path(out)
    if resume and overwrite:
        raise OutputExistsError("--resume and --overwrite exclude each other; pick one")
    stored_path = out / config_name
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"output {str(out)!r} is a file; pass a folder path")
    if out.is_dir() and any(out.iterdir()):
        if not stored_path.is_file():
            raise OutputExistsError(f"output folder {str(out)!r} is not empty and holds no advprompts run; "
                                    "pick an empty or new folder")
        if overwrite:
            if create:
                logger.info("overwriting %s", out)
                shutil.rmtree(out)
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
            return True
    if create:
        out.mkdir(parents=True, exist_ok=True)
    return False

"""Files that never lie: atomic writes, cached results checked before use, folder manifests.

* :func:`atomic_write_bytes` writes a temp file beside the target and renames it into place, so a
  reader sees the old file or the new one, never half of one. When the write fails (disk full,
  read-only file system, permission denied, ...) the temp file is removed and the error becomes a
  :class:`~advprompts.errors.FileSystemError` naming the target path and what to do.
* :func:`remove_stale_temp_files` deletes the temp files of writers that died (SIGKILL mid-write); a
  run folder's new writer calls it.
* :func:`check_writable` fails before any work when the OS would refuse to create an output folder.
* :func:`read_json` reads a cached result (a file written last, whose presence marks work done) and
  returns None, with a warning, for a file that is torn or not what the cache writes: the caller
  recomputes it instead of trusting it or crashing.
* :func:`csv_text` / :func:`write_csv` / :func:`read_csv`: the one table format (``csv.DictWriter``'s,
  a header row then one line per row), written atomically.
* :func:`write_manifest` / :func:`manifest_problem`: the sha256 of every file of a folder, written
  last, and the check that the folder still matches it (a cache whose files changed is rebuilt).
"""

from __future__ import annotations

import contextlib
import csv
import errno
import hashlib
import io
import json
import logging
import os
import re
from pathlib import Path

from advprompts.errors import FileSystemError

logger = logging.getLogger(__name__)
MANIFEST = "manifest.json"
_VERIFIED: dict[str, tuple] = {}  # folder -> stat signature of its files when their hashes last matched


def _write(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:  # the one place bytes reach the disk (tests inject OS errors here)
        f.write(data)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to a temp file next to ``path`` and rename it into place.

    Raises:
        FileSystemError: the operating system refused (no space left, read-only, ...); nothing is left
            behind, and ``path`` keeps its old content if it had one.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        _write(tmp, data)
        tmp.replace(path)
    except OSError as exc:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass  # e.g. the parent folder is not a folder: there is no temp file
        if exc.errno not in FileSystemError.HINTS:  # not a path problem the user can fix
            raise
        raise FileSystemError.from_os_error(exc, path) from exc


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def csv_text(rows, columns: list[str], *, extrasaction: str = "raise", header: bool = True) -> str:
    """``rows`` (dicts) as CSV text with ``columns``: a header line (unless ``header`` is False), then one
    line per row. ``extrasaction="ignore"`` drops keys that are not columns; missing keys are empty."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction=extrasaction)
    if header:
        writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def write_csv(path: str | Path, rows, columns: list[str], *, extrasaction: str = "raise") -> None:
    """Write ``rows`` as a CSV table (:func:`csv_text`) to ``path``, atomically."""
    atomic_write_text(path, csv_text(rows, columns, extrasaction=extrasaction))


def read_csv(path: str | Path) -> list[dict]:
    """The rows of a CSV table with a header line, as dicts (every value a string)."""
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def temp_file_pid(path: str | Path) -> int | None:
    """The writer's pid when ``path`` is one of :func:`atomic_write_bytes`' temp files, else None."""
    match = re.fullmatch(r"\..+\.(\d+)\.tmp", Path(path).name)
    return int(match.group(1)) if match else None


def remove_stale_temp_files(folder: str | Path) -> None:
    """Delete the temp files under ``folder`` whose writer is dead: a process killed mid-write leaves its
    temp file behind, and its rerun writes under another pid."""
    for root, _, names in os.walk(folder):
        for name in names:
            pid = temp_file_pid(name)
            if pid is not None and not pid_alive(pid):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(root, name))


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (another user's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: alive, another user's
        return True
    return True


def check_writable(out: str | Path) -> None:
    """Fail before any work when the OS would refuse to create or write the folder ``out``: a file on
    its path, a name too long, a folder this user may not write, a read-only disk (``out`` itself a
    file is left to the caller, which says so).

    Raises:
        FileSystemError: naming ``out`` and what to do.
    """
    out = Path(out)
    try:
        folder = next(p for p in (out, *out.parents) if p.exists())
        if folder == out and not folder.is_dir():
            return
        if not folder.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(out))
        if not os.access(folder, os.W_OK | os.X_OK):
            read_only = os.statvfs(folder).f_flag & os.ST_RDONLY
            code = errno.EROFS if read_only else errno.EACCES
            raise OSError(code, os.strerror(code), str(folder))
    except OSError as exc:
        if exc.errno not in FileSystemError.HINTS:  # not a path problem the user can fix
            raise
        raise FileSystemError.from_os_error(exc, out if exc.errno != errno.EACCES else None) from None


def read_json(path: str | Path, required: tuple[str, ...] = ()):
    """The JSON content of a cached result, or None when ``path`` is absent or cannot be trusted
    (torn, not JSON, not an object with the ``required`` keys): the caller then recomputes it."""
    path = Path(path)
    try:
        value = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError
        logger.warning("ignoring %s: not readable JSON (%s); recomputing it", path, exc)
        return None
    missing = [k for k in required if not isinstance(value, dict) or k not in value]
    if missing:
        logger.warning("ignoring %s: no %r entry; recomputing it", path, missing[0])
        return None
    return value


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)


def sha256(path: str | Path) -> str:
    """The hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(folder: str | Path) -> Path:
    """Write ``folder/manifest.json``: the sha256 of every file under ``folder``. Write it last."""
    folder = Path(folder)
    files = {p.relative_to(folder).as_posix(): sha256(p) for p in _files(folder)}
    atomic_write_text(folder / MANIFEST, json.dumps({"sha256": files}, indent=1, sort_keys=True))
    return folder / MANIFEST


def _signature(folder: Path, names) -> tuple:
    stats = [(folder / n).stat() for n in names]
    return tuple((n, s.st_size, s.st_mtime_ns, s.st_ino) for n, s in zip(names, stats))


def manifest_problem(folder: str | Path) -> str | None:
    """None when every file ``folder/manifest.json`` lists is there with its sha256, else the first
    problem in words. Files are hashed once per process; later calls compare their size, mtime and inode."""
    folder = Path(folder)
    listed = read_json(folder / MANIFEST, required=("sha256",))
    if listed is None or not isinstance(listed["sha256"], dict):
        return "it has no readable manifest.json (an interrupted or older export)"
    names = sorted(listed["sha256"])
    try:
        signature = _signature(folder, names)
    except (FileNotFoundError, NotADirectoryError) as exc:
        return f"{Path(exc.filename).relative_to(folder).as_posix()} is missing"
    if _VERIFIED.get(str(folder)) == signature:
        return None
    for name in names:
        if sha256(folder / name) != listed["sha256"][name]:
            return f"{name} differs from its checksum"
    _VERIFIED[str(folder)] = signature
    return None

"""The advprompts exception hierarchy.

Every error a user can cause (bad config, missing model, broken dataset, occupied output folder,
an output folder another process is writing, a path the operating system refuses, diverging
optimisation) is an :class:`AdvPromptsError`
whose message is one line saying what is wrong and what to do. The CLI prints that line and exits
with status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import errno
import importlib
import os


class AdvPromptsError(Exception):
    """Base class: a user-facing error with a one-line message naming the problem and the fix."""

    exit_code = 2

    def __init__(self, message: str):
        # Messages are printed as a single line by the CLI; fold accidental newlines.
        super().__init__(" ".join(str(message).split()))


class ConfigError(AdvPromptsError):
    """An unknown config key, a value of the wrong type or an invalid combination of settings."""


class ModelLoadError(AdvPromptsError):
    """A model folder or hub id that cannot be loaded (missing, incomplete, offline)."""


class DataError(AdvPromptsError):
    """An empty, unreadable or inconsistent dataset (missing column, corrupt image, bad mask)."""


class OutputExistsError(AdvPromptsError):
    """The output folder already holds a different run; pass --resume or --overwrite."""


class OutputLockedError(AdvPromptsError):
    """Another live process is writing the output folder (or this shard of it); the message names its pid."""


class ShardError(AdvPromptsError):
    """An invalid ``--shard i/n`` specification."""


class FileSystemError(AdvPromptsError, OSError):
    """The operating system refused a file operation on a path: not a folder, permission denied, no space
    left, read-only file system, name too long. Also an ``OSError`` (``errno``, ``filename`` kept), so code
    that handles OSError handles it too; build one with :meth:`from_os_error`."""

    # errno -> (what happened, what to do); the one mapping the library and the CLI share.
    _WRITABLE = "pick a folder you may write, or fix its permissions"
    _FREE = "free space or pick a folder on another disk, then rerun the same command (finished files are kept)"
    HINTS = {
        errno.ENOTDIR: ("a part of this path is a file, not a folder", "pick a path whose parents are folders"),
        errno.EACCES: ("permission denied", _WRITABLE),
        errno.EPERM: ("operation not permitted", _WRITABLE),
        errno.ENOSPC: ("no space left on the device", _FREE),
        errno.EDQUOT: ("disk quota exceeded", _FREE),
        errno.EROFS: ("read-only file system", "pick a folder on a writable disk"),
        errno.ENAMETOOLONG: ("a name in this path is too long", "pick a shorter path"),
    }

    def __init__(self, message: str, code: int | None = None, filename: str | None = None):
        super().__init__(message)
        self.errno, self.filename = code, filename
        self.strerror = os.strerror(code) if code is not None else None

    def __str__(self) -> str:  # the one-line message, not OSError's "[Errno n] ..." form
        return self.args[0]

    @classmethod
    def from_os_error(cls, exc: OSError, path: str | os.PathLike | None = None) -> "FileSystemError | None":
        """The one-line error for ``exc`` on ``path`` (default: the path ``exc`` names), or None when its
        errno is not one of :attr:`HINTS` (then it stays what it is)."""
        if isinstance(exc, FileSystemError):
            return exc
        if exc.errno not in cls.HINTS:
            return None
        where = path if path is not None else exc.filename
        what, fix = cls.HINTS[exc.errno]
        head = f"{os.fspath(where)!r}: " if where is not None else ""
        return cls(f"{head}{what}; {fix}", exc.errno, None if where is None else os.fspath(where))


class NaNLossError(AdvPromptsError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class MissingExtraError(AdvPromptsError):
    """A feature needs an optional dependency that is not installed; the message names the extra."""


def require_extra(module: str, extra: str, feature: str, otherwise: str = ""):
    """Import ``module``, an optional dependency of ``feature``, or raise :class:`MissingExtraError`
    naming ``pip install 'advprompts[extra]'`` (and ``otherwise``, a way to do without it)."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingExtraError(f"{feature} needs {module}, which is not installed: pip install "
                                f"'advprompts[{extra}]'{f', or {otherwise}' if otherwise else ''}") from None


__all__ = [
    "AdvPromptsError",
    "ConfigError",
    "DataError",
    "FileSystemError",
    "MissingExtraError",
    "ModelLoadError",
    "NaNLossError",
    "OutputExistsError",
    "OutputLockedError",
    "ShardError",
    "require_extra",
]

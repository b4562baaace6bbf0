"""Map our errors to one line on stderr and exit status 2 (a traceback only with --debug).

An ``OSError`` the operating system raises for a path (not a folder, permission denied, no space
left, read-only file system, name too long) is a user's problem too: it gets the same treatment
through :meth:`~advprompts.errors.FileSystemError.from_os_error` (naming the command's ``--out``
when the error names no path); any other exception is a bug.
"""

from __future__ import annotations

import functools

import typer

from advprompts.errors import AdvPromptsError, FileSystemError

_STATE = {"debug": False}


def set_debug(debug: bool) -> None:
    """``--debug``: let errors raise with their traceback instead of one line."""
    _STATE["debug"] = debug


def handle_errors(fn):
    """Turn an AdvPromptsError (or a mapped OSError) into one line on stderr and exit status 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (AdvPromptsError, OSError) as exc:
            error = exc
            if not isinstance(exc, AdvPromptsError):  # the path the OS names, else the command's --out
                error = FileSystemError.from_os_error(exc, None if exc.filename else kwargs.get("out"))
            if error is None or _STATE["debug"]:
                raise
            typer.echo(f"error: {error}", err=True)
            raise typer.Exit(code=error.exit_code) from None

    return wrapper

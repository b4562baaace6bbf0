"""Map our errors to one line on stderr and exit status 2 (a traceback only with --debug)."""

from __future__ import annotations

import functools

import typer

from advprompts.errors import AdvPromptsError

_STATE = {"debug": False}


def handle_errors(fn):
    """Turn an AdvPromptsError into one line on stderr and exit status 2 (traceback with --debug)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except AdvPromptsError as exc:
            if _STATE["debug"]:
                raise
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(code=exc.exit_code) from None

    return wrapper

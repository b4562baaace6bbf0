"""Shipped presets: list them all (optimisation and experiment), or print one to copy (show NAME)."""

from __future__ import annotations

from typing import Annotated

import typer

from advprompts.cli._errors import handle_errors

app = typer.Typer(help=__doc__.splitlines()[0], no_args_is_help=False)


@app.callback(invoke_without_command=True)
def list_presets(ctx: typer.Context):
    """List every preset by kind with its one-line description (usable as --config NAME)."""
    if ctx.invoked_subcommand is not None:
        return
    from advprompts.config.presets import PRESET_KINDS, describe, presets_by_kind

    kinds = presets_by_kind()
    width = max(len(name) for files in kinds.values() for name in files)
    for key, kind in PRESET_KINDS.items():
        typer.echo(f"{kind.heading} ({kind.usage}):")
        for name, path in kinds[key].items():
            typer.echo(f"  {name:{width}s}  {describe(path)}")
    typer.echo("print one to copy and edit: advprompts presets show NAME > my.yaml")


@app.command("show")
@handle_errors
def show(name: Annotated[str, typer.Argument(help="A preset name from `advprompts presets`.")]):
    """Print a preset's YAML, as shipped (comments included)."""
    from advprompts.config.presets import presets_by_kind
    from advprompts.errors import ConfigError

    kinds = presets_by_kind()
    for files in kinds.values():
        if name in files:
            typer.echo(files[name].read_text(), nl=False)
            return
    every = ", ".join(n for files in kinds.values() for n in files)
    raise ConfigError(f"unknown preset {name!r}; presets: {every} (`advprompts presets` describes them)")

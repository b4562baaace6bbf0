"""List the shipped config presets (usable as --config NAME)."""

from __future__ import annotations

import typer


def main() -> None:
    from advprompts.config.presets import list_presets, preset_description

    for name in list_presets():
        typer.echo(f"{name:24s} {preset_description(name)}")

"""Datasets: export the embedded benchmarks as image folders with metadata.csv."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from advprompts.cli._errors import handle_errors

app = typer.Typer(help=__doc__.splitlines()[0], no_args_is_help=True)


@app.command("export")
@handle_errors
def export(name: Annotated[str, typer.Argument(help="Benchmark name (waterbirds-synth, wildcam-synth) or YAML file.")],
           out: Annotated[Path, typer.Option(help="New folder: images/, masks/, metadata.csv.")],
           split: Annotated[Optional[list[str]], typer.Option(help="Only these splits (repeatable).")] = None):
    """Render a benchmark into an image folder with masks and metadata.csv."""
    from advprompts.world.benchmarks import export_benchmark, load_benchmark

    typer.echo(f"exported to {export_benchmark(load_benchmark(name), out, splits=split)}")


@app.command("benchmarks")
def benchmarks():
    """List the shipped benchmarks."""
    from advprompts.world.benchmarks import list_benchmarks, load_benchmark

    for name in list_benchmarks():
        typer.echo(f"{name:20s} {load_benchmark(name).description}")

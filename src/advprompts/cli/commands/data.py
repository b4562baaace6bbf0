"""Datasets: export the embedded benchmarks as image folders; summarise and check any dataset."""

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


@app.command("summary")
@handle_errors
def summary(dataset: Annotated[str, typer.Option(help="waterbirds, iwildcam, folder, or a registered name.")],
            root: Annotated[Optional[Path], typer.Option(help="Dataset folder (or a CSV, for folder).")] = None,
            option: Annotated[Optional[list[str]], typer.Option("--option", "-O", help="Loader option KEY=VALUE, "
                                                                 "e.g. masks=DIR, subset=DIR (repeatable).")] = None,
            quick: Annotated[bool, typer.Option(help="Check file headers only (no decoding).")] = False):
    """Counts per split and group; checks every image and mask (exit 2 when any is missing or corrupt)."""
    from advprompts.data.summary import parse_options, summarize

    result = summarize(dataset, root, parse_options(option or []), decode=not quick)
    for line in result.lines():
        typer.echo(line)
    result.raise_for_problems()

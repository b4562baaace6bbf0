"""Measure the engine: step overhead, generation speed-up over diffusers, checkpointing memory."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

Opt = typer.Option


def main(
    suite: Annotated[str, Opt("--suite", help="quick (tiny models, seconds) | full (the real measurement).")] = "full",
    json_file: Annotated[Optional[Path], Opt("--json", help="Write the results as JSON to this file.")] = None,
    threads: Annotated[Optional[int], Opt("--threads", help="torch threads (default: torch's choice).")] = None,
    device: Annotated[str, Opt("--device", help="auto | cpu | cuda.")] = "auto",
    plain: Annotated[bool, Opt("--plain", help="Plain-text table (no rich).")] = False,
) -> None:
    from advprompts.perf import format_table, get_suite, run_benchmark, table_rows

    get_suite(suite)  # reject an unknown suite before loading anything
    res = run_benchmark(suite, json_file, threads=threads, device=device,
                        progress=lambda line: typer.echo(line, err=True))
    try:
        if plain or not sys.stdout.isatty():  # piped output: the plain table keeps lines whole
            raise ImportError
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        typer.echo(format_table(res))
    else:
        from rich.text import Text

        table = Table(title=format_table(res).splitlines()[0])
        for col in ("measure", "value", "target"):
            table.add_column(col, no_wrap=True)
        table.add_column("details", overflow="fold")
        for row in table_rows(res):
            table.add_row(*map(Text, row))  # Text: names like generate[bf16] are not markup
        Console().print(table)
    if json_file is not None:
        typer.echo(f"results: {json_file}")

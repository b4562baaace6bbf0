"""Run methods x budgets x seeds on a benchmark: results.csv and report.md (resumable).

Every (method, budget, seed) cell is cached in --out, so a killed sweep resumes where it stopped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from advprompts.cli.commands import PromptBatch


def main(
    config: Annotated[str, typer.Option("--config", "-c", help="Experiment preset (waterbirds-synth, ...) or YAML.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Experiment folder.")],
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Override, e.g. seeds=[0] (YAML value).")] = None,
    methods: Annotated[Optional[str], typer.Option("--methods", help="Comma-separated subset of the methods.")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace the experiment in --out.")] = False,
    prompt_batch: PromptBatch = None,
    reuse: Annotated[Optional[Path], typer.Option(
        "--reuse", help="Another experiment folder: copy in its finished base models, pools and cells that this "
                        "config makes the same way (a new method or ablation beside a finished sweep).")] = None,
) -> None:
    from advprompts.experiments.session import run_and_report

    run_and_report(config, out, overrides=set_ or [], methods=methods.split(",") if methods else None,
                   overwrite=overwrite, echo=typer.echo, prompt_batch=prompt_batch, reuse=reuse)

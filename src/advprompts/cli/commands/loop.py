"""Multi-iteration loop: optimise prompts, generate, fine-tune, repeat (one row per iteration)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer


def main(
    config: Annotated[str, typer.Option("--config", "-c", help="Experiment preset or YAML.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Loop folder.")],
    iterations: Annotated[int, typer.Option("--iterations", "-k", min=1, help="Iterations.")] = 2,
    method: Annotated[str, typer.Option("--method", help="The experiment method to iterate.")] = "gap",
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Override (YAML value).")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace the loop in --out.")] = False,
) -> None:
    from advprompts.experiments.config import load_experiment_config
    from advprompts.experiments.loop import run_loop
    from advprompts.experiments.runner import ExperimentRunner

    cfg = load_experiment_config(config, set_ or [])
    runner = ExperimentRunner(cfg, out, overwrite=overwrite, say=typer.echo)
    rows = run_loop(runner, method, iterations)
    typer.echo("iteration  extra  worst-group  average")
    for r in rows:
        typer.echo(f"{r['iteration']:>9}  {r['n_extra']:>5}  {100 * r['worst_group_acc']:>10.1f}%  {100 * r['avg_acc']:>6.1f}%")
    typer.echo(f"loop.csv: {out / 'loop.csv'}")

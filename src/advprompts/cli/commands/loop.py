"""Multi-round loop: optimise prompts, generate, fine-tune, repeat (one chain per method and seed).

Round 1 equals the experiment's pool for the seed; each later round draws fresh prompt inits, sources
and noise and attacks the model of the round before. Finished rounds are cached, so a killed loop resumes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from advprompts.cli.commands import PromptBatch


def main(
    config: Annotated[str, typer.Option("--config", "-c", help="Experiment preset or YAML.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Loop folder (an experiment folder of the same config "
                                                          "reuses its pools as round 1).")],
    rounds: Annotated[int, typer.Option("--rounds", "--iterations", "-k", min=1, help="Rounds per chain.")] = 2,
    methods: Annotated[Optional[str], typer.Option(
        "--methods", "--method", help="Comma-separated methods to loop (default: every generated one).")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Override, e.g. seeds=[0] (YAML value).")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace the loop in --out.")] = False,
    prompt_batch: PromptBatch = None,
) -> None:
    from advprompts.experiments.config import load_experiment_config
    from advprompts.experiments.loop import loop_methods, run_loop
    from advprompts.experiments.report import loop_table
    from advprompts.experiments.runner import ExperimentRunner
    from advprompts.experiments.composition import embedded_oracle

    # The full config (not the --methods subset) is the folder's fingerprint: a loop shares its folder,
    # base models and round-1 pools with `advprompts experiment` of the same config.
    cfg = load_experiment_config(config, set_ or [])
    names = loop_methods(cfg, methods)  # a bad method fails before anything is written
    runner = ExperimentRunner(cfg, out, overwrite=overwrite, say=typer.echo, prompt_batch=prompt_batch)
    rows = run_loop(runner, names, rounds, oracle=embedded_oracle(cfg))
    typer.echo(f"\nworst-group accuracy (%) per round, mean ± std over seeds {list(cfg.seeds)}:\n")
    typer.echo(loop_table(rows))
    typer.echo(f"\nloop.csv: {out / 'loop.csv'}\nloop.md:  {out / 'loop.md'}")

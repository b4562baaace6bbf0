"""Run an experiment, write its report, print its table: what `experiment` and `demo` share."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable


def run_and_report(config: str, out: str | Path, *, overrides: list[str] = (), methods: list[str] | None = None,
                   overwrite: bool = False, echo: Callable[[str], None] = print, components=None,
                   prompt_batch: int | None = None, reuse: str | Path | None = None) -> Path:
    """Run (or resume) the experiment ``config`` into ``out``, write its report, print its table and the
    time per stage (``out/profile.csv``); ``prompt_batch``, ``reuse``: see :class:`ExperimentRunner`."""
    from advprompts.experiments.composition import (add_pool_columns, benchmark_root, composition_context,
                                                     embedded_oracle, finished_pools, pool_compositions)
    from advprompts.experiments.config import load_experiment_config
    from advprompts.experiments.report import results_table, write_report
    from advprompts.experiments.runner import ExperimentRunner

    from advprompts.errors import require_extra

    require_extra("matplotlib", "plot", "plotting the report's figures")  # before the run, not after it
    t0 = time.time()
    cfg = load_experiment_config(config, overrides, methods)
    runner = ExperimentRunner(cfg, out, overwrite=overwrite, components=components, say=echo, prompt_batch=prompt_batch,
                              reuse=reuse)
    rows = runner.run()
    oracle = embedded_oracle(cfg)
    ctx = composition_context(benchmark_root(cfg), cfg.train_split, cfg.eval_split) if oracle is not None else None
    if ctx is not None:  # each generated set's faithfulness and composition beside its cells in results.csv
        runner.write_results(add_pool_columns(rows, pool_compositions(finished_pools(Path(out)), ctx, oracle)))
    report = write_report(out, cfg, components=runner.components if runner._components is not None else None,
                          oracle=oracle)
    echo("")
    echo(results_table(rows))
    echo(f"\ntime per stage ({Path(out) / 'profile.csv'}; cached: reused from an earlier run):")
    echo(runner.profile.format_summary())
    echo(f"\nresults: {Path(out) / 'results.csv'}\nreport:  {report}  ({time.time() - t0:.0f} s)")
    return report

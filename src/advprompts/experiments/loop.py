"""`advprompts loop`: the multi-round variant, one independent chain per (method, seed). Each round
builds a fresh pool (optimised methods find prompts against the model of the round before), fine-tunes
that model on train + every pool of the chain so far, and evaluates it.

Round 1 is exactly the experiment's pool for the seed (``pools/<method>-s<seed>/``, so a loop run in
an experiment folder reuses it); round r >= 2 draws new prompt inits, optimisation batches and noise,
train sources and generation noise from ``draw_seed(seed, r)`` into ``prompts|pools/<method>-s<seed>-r<r>/``.
The chain's model is the method's adversary architecture (default task.arch)::

    OUT/models/loop/<method>-s<seed>-r<r>.safetensors   the model after round r
    OUT/cells/loop/<method>-s<seed>-r<r>.json           its evaluation (round 0 = base model); present = done
    OUT/loop.csv, OUT/loop.md                           one row per (method, seed, round); the table

With the embedded models, each round's pool is judged by the zoo's oracle as the experiment's pools are
(its share in the groups train lacks, its label faithfulness), so the table shows where each round's
data went, not only what it did.

Finished rounds are reused, so a killed loop resumes.
"""

from __future__ import annotations

import json
from pathlib import Path

from advprompts.errors import ConfigError
from advprompts.experiments.config import ExperimentConfig
from advprompts.experiments.runner import ExperimentRunner
from advprompts.fsio import atomic_write_text, read_json, write_csv
from advprompts.tasks.train import Tensors, evaluate, save_task_weights, train_classifier

LOOP_COLUMNS = ["method", "seed", "round", "n_extra", "avg_acc", "worst_group_acc",
                "pool_missing_groups", "pool_faithfulness"]


def loop_methods(config: ExperimentConfig, methods: str | list[str] | None = None) -> list[str]:
    """The methods to iterate (default: every generated one), checked before anything is written:
    methods without generated data have nothing to renew each round."""
    if methods is None:
        methods = [m for m, spec in config.methods.items() if spec.generated]
    elif isinstance(methods, str):
        methods = [m.strip() for m in methods.split(",") if m.strip()]
    if not methods:
        raise ConfigError("the experiment config has no generated method (text, random, optimized) to loop")
    for m in methods:
        if m not in config.methods:
            raise ConfigError(f"method {m!r} is not in the experiment config; its methods: {', '.join(config.methods)}")
        if not config.methods[m].generated:
            raise ConfigError(f"method {m!r} ({config.methods[m].kind}) generates no data, so it cannot loop; "
                              "pick text, random or optimized methods")
    return methods


def run_chain(runner: ExperimentRunner, method: str, seed: int, rounds: int) -> list[dict]:
    """Rounds 0..``rounds`` of one (method, seed) chain."""
    from advprompts.tasks.models import load_task_model

    c = runner.config
    spec = c.methods[method]
    arch = runner.adversary(spec)
    cells = runner.out / "cells" / "loop"
    key = f"{method}-s{seed}"

    def cached(rnd: int, model_file: Path | None, make) -> dict:
        path = cells / f"{key}-r{rnd}.json"
        row = read_json(path, required=("round", "worst_group_acc"))  # a torn file is recomputed
        if row is not None and (model_file is None or model_file.is_file()):
            return row
        row = {"method": method, "seed": seed, "round": rnd, **make()}
        cells.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(row))  # last: its presence marks the round done
        return row

    rows = [cached(0, None, lambda: {"n_extra": 0, **evaluate(runner.base_model(seed, arch), runner.eval_data).row()})]
    weights, pools = None, []  # None: round 1 attacks the base model, exactly as the experiment does
    for rnd in range(1, rounds + 1):
        pools.append(runner.pool(method, spec, seed, weights=weights, rnd=rnd))
        n_extra = sum(len(p) for p in pools)
        path = runner.out / "models" / "loop" / f"{key}-r{rnd}.safetensors"

        def fine_tune() -> dict:
            start = weights or runner.base_path(seed, arch)
            runner.base_model(seed, arch)  # makes sure the base weights exist
            runner.say(f"{method} s{seed} round {rnd}: fine-tuning on train + {n_extra} generated images")
            model = load_task_model(arch, runner.num_classes, weights=start,
                                    input_size=c.task.input_size).to(runner.device)
            train_classifier(model, Tensors.concat([runner.train_data, *pools]), c.finetune, seed=seed + rnd,
                             progress=runner.progress, desc=f"fine-tune {key} r{rnd}")
            path.parent.mkdir(parents=True, exist_ok=True)
            save_task_weights(model, path)
            return {"n_extra": n_extra, **evaluate(model, runner.eval_data).row()}

        row = cached(rnd, path, fine_tune)
        rows.append(row)
        weights = path
        runner.say(f"{method} s{seed} round {rnd}: worst-group {100 * row['worst_group_acc']:.1f}%, "
                   f"average {100 * row['avg_acc']:.1f}%")
    return rows


def add_round_compositions(runner: ExperimentRunner, rows: list[dict], oracle) -> list[dict]:
    """Each round's row gets its own pool's share in the missing groups and label faithfulness (not the
    chain's: every round adds one pool)."""
    from advprompts.experiments.composition import benchmark_root, composition_context, pool_compositions
    from advprompts.experiments.plan import round_tag

    c = runner.config
    ctx = composition_context(benchmark_root(c), c.train_split, c.eval_split) if oracle is not None else None
    if ctx is None:
        return rows
    for r in rows:
        pool = runner.out / "pools" / f"{r['method']}-s{r['seed']}{round_tag(int(r['round']))}"
        if int(r["round"]) >= 1 and (pool / "metadata.csv").is_file():
            comp = pool_compositions([pool], ctx, oracle)[pool.name]
            r.update(pool_missing_groups=round(comp["missing_groups"], 4), pool_faithfulness=round(comp["faithfulness"], 4))
    return rows


def run_loop(runner: ExperimentRunner, methods: str | list[str] | None, rounds: int,
             seeds: list[int] | None = None, oracle=None) -> list[dict]:
    """Every (method, seed) chain (default seeds: the config's); writes loop.csv and loop.md as chains
    finish. ``oracle``: judges each round's pool (the embedded models' oracle; None: not judged)."""
    methods = loop_methods(runner.config, methods)
    rows: list[dict] = []
    for seed in runner.config.seeds if seeds is None else seeds:
        for method in methods:
            rows += add_round_compositions(runner, run_chain(runner, method, seed, rounds), oracle)
            write_loop_files(runner.out, rows)
    return rows


def write_loop_files(out: Path, rows: list[dict]) -> Path:
    """``loop.csv`` (one row per method, seed and round; then one ``acc_<group>`` column per group) and
    ``loop.md`` (worst-group accuracy per round, mean ± std over seeds)."""
    from advprompts.experiments.report import loop_table

    groups = sorted({k for r in rows for k in r if k.startswith("acc_")})
    write_csv(out / "loop.csv", rows, LOOP_COLUMNS + groups, extrasaction="ignore")
    seeds = sorted({int(r["seed"]) for r in rows})
    text = ["# Loop", "", f"Worst-group accuracy (%) per round, mean ± std over seeds {seeds} "
            "(round 0: the base model; each round fine-tunes the previous round's model on train + every "
            "pool of its chain so far).", "", loop_table(rows), "", "Average accuracy (%):", "",
            loop_table(rows, "avg_acc"), ""]
    judged = [r for r in rows if r.get("pool_missing_groups") not in (None, "")]
    if judged:
        text += ["Each round's generated set as the zoo's oracle sees it (%): its share in the groups train "
                 "lacks, then its label faithfulness:", "", loop_table(judged, "pool_missing_groups"), "",
                 loop_table(judged, "pool_faithfulness"), ""]
    atomic_write_text(out / "loop.md", "\n".join(text))
    return out / "loop.csv"

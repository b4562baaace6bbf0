"""`advprompts loop`: the multi-iteration variant. Each iteration finds prompts against the current
model, generates a pool, fine-tunes the current model on train + every pool so far, evaluates.

Iteration i writes ``prompts/<method>-s<seed>-it<i>/``, ``pools/<method>-s<seed>-it<i>/`` and
``models/<method>-s<seed>-it<i>.safetensors``; ``loop.csv`` holds one row per iteration (iteration 0
is the base model). Finished iterations are reused, so a killed loop resumes.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from advprompts.experiments.runner import ExperimentRunner
from advprompts.rundir import atomic_write_text
from advprompts.tasks.train import Tensors, evaluate, save_task_weights, train_classifier


def run_loop(runner: ExperimentRunner, method: str, iterations: int, seed: int | None = None) -> list[dict]:
    from advprompts.tasks.models import load_task_model

    c = runner.config
    if method not in c.methods:
        raise ValueError(f"method {method!r} is not in the experiment config; its methods: {', '.join(c.methods)}")
    spec = c.methods[method]
    seed = c.seeds[0] if seed is None else seed
    weights = runner.out / "models" / f"base-{c.task.arch}-s{seed}.safetensors"
    model = runner.base_model(seed)
    rows = [{"iteration": 0, "n_extra": 0, **evaluate(model, runner.eval_data).row()}]
    pools: list[Tensors] = []
    for it in range(1, iterations + 1):
        tag = f"-it{it}"
        pools.append(runner.pool(method, spec, seed, tag=tag, weights=weights))
        path = runner.out / "models" / f"{method}-s{seed}{tag}.safetensors"
        done = path.with_suffix(".json")
        if done.is_file():
            row = json.loads(done.read_text())
        else:
            runner.say(f"iteration {it}: fine-tuning on train + {sum(len(p) for p in pools)} generated images")
            model = load_task_model(c.task.arch, runner.num_classes, weights=weights,
                                    input_size=c.task.input_size).to(runner.device)
            train_classifier(model, Tensors.concat([runner.train_data, *pools]), c.finetune, seed=seed + it,
                             progress=runner.progress, desc=f"fine-tune it{it}")
            save_task_weights(model, path)
            row = {"iteration": it, "n_extra": sum(len(p) for p in pools), **evaluate(model, runner.eval_data).row()}
            atomic_write_text(done, json.dumps(row))
        rows.append(row)
        weights = path
        runner.say(f"iteration {it}: worst-group {100 * row['worst_group_acc']:.1f}%, "
                   f"average {100 * row['avg_acc']:.1f}%")
    columns = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(runner.out / "loop.csv", buf.getvalue())
    return rows

"""Probe: do generated counterexamples transfer once the extra data also holds label-consistent images
in the same generated style? Fine-tunes the experiment's base model on train + AP's pool, on train + AP
+ agnostic pools, and on train + GAP + agnostic pools (128 images each), and prints the test accuracies.

    ADVPROMPTS_ZOO_DIR=<build> python docs/experiments/mixed_pool_probe.py <finished quick-demo folder> <copy>

Works on a copy of the demo folder, so the demo's own cells stay untouched.
"""

import json
import shutil
import sys
from pathlib import Path

import torch
import yaml

from advprompts.experiments.config import ExperimentConfig
from advprompts.experiments.pools import load_pool
from advprompts.experiments.runner import ExperimentRunner
from advprompts.tasks.train import Tensors, evaluate, train_classifier

src, out = Path(sys.argv[1]), Path(sys.argv[2])
if not out.exists():
    shutil.copytree(src, out)
cfg = ExperimentConfig(**yaml.safe_load((out / "experiment.yaml").read_text()))
runner = ExperimentRunner(cfg, out, progress=False)
pools = {n: load_pool(out / "pools" / f"{n}-s0", 0, cfg.max_extra, runner.task_size) for n in ("agnostic", "ap", "gap")}
for combo in (["ap"], ["ap", "agnostic"], ["gap", "agnostic"]):
    torch.manual_seed(0)
    model = runner.base_model(0)
    train_classifier(model, Tensors.concat([runner.train_data] + [pools[n] for n in combo]), cfg.finetune, seed=1)
    row = evaluate(model, runner.eval_data).row()
    print("+".join(combo), json.dumps({k: round(v, 3) for k, v in row.items()}), flush=True)

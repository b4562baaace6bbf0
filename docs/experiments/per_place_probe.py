"""Probe: where do generated missing-group images transfer? Fine-tunes a finished experiment's base model
(seed 0) on train + each method's pool, as its cells do, and prints test accuracy per place for the two
missing (bird, place type) groups of waterbirds-synth.

    ADVPROMPTS_ZOO_DIR=<zoo> python docs/experiments/per_place_probe.py <experiment folder> <config> \
        <method,method,...> [key=value overrides the experiment ran with]

e.g. `... .zoo-build7/inp/dq demo-quick no_extra,agnostic,ap,gap model=embedded-inpaint` (README, "The closed
loop"). Nothing in the experiment folder is written: the refitted models stay in memory.
"""

import csv
import sys
from pathlib import Path

import numpy as np
import torch

from advprompts.experiments.config import load_experiment_config
from advprompts.experiments.pools import load_pool
from advprompts.experiments.runner import ExperimentRunner
from advprompts.tasks.train import Tensors, predict, train_classifier
from advprompts.world.benchmarks import cached_export

torch.set_num_threads(2)
out, config, methods, overrides = sys.argv[1], sys.argv[2], sys.argv[3].split(","), sys.argv[4:]
cfg = load_experiment_config(config, overrides, None)
runner = ExperimentRunner(cfg, out, say=lambda s: None)
rows = [r for r in csv.DictReader(open(cached_export(cfg.benchmark) / "metadata.csv")) if r["split"] == cfg.eval_split]
places, groups = np.array([r["place"] for r in rows]), np.array([r["group"] for r in rows])
for method in methods:
    model = runner.base_model(0)
    if method != "no_extra":
        pool = load_pool(Path(out) / "pools" / f"{method}-s0", 0, cfg.max_extra, runner.task_size)
        train_classifier(model, Tensors.concat([runner.train_data, pool]), cfg.finetune, seed=1, augment="none",
                         progress=False)
    data = runner.eval_data
    assert list(data.groups) == list(groups), "the evaluation split is not in metadata order"
    with torch.no_grad():
        right = (predict(model, data.images) == data.labels).numpy()
    for group in ("waterbird-land", "landbird-water"):
        per_place = {str(p): round(float(right[(groups == group) & (places == p)].mean()), 2)
                     for p in sorted(set(places[groups == group]))}
        print(method, group, per_place)

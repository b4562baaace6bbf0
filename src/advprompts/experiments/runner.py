"""`advprompts experiment`: methods x budgets x seeds on one benchmark, every cell cached.

For each seed: train the base model on the train split; for each method build its pool of extra
data (generated, real or augmented); for each budget fine-tune the base model on train + the
pool's first ``n_extra`` images and evaluate on the eval split. Folder layout::

    OUT/experiment.yaml        the resolved config (a different config in OUT is refused)
    OUT/models/                base task models (safetensors)
    OUT/prompts/<method>-s<seed>/   optimisation runs (prompt files, log.csv)
    OUT/pools/<method>-s<seed>/     generated images + metadata.csv
                                    (``loop`` rounds r >= 2 add ``-r<r>`` to both)
    OUT/cells/<method>-n<n>-s<seed>.json   one evaluated cell; present = done
    OUT/results.csv, OUT/report.md, OUT/figures/
    OUT/profile.csv            wall time of every stage (see :mod:`advprompts.experiments.profile`)
"""

from __future__ import annotations

import functools
import json
import logging
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from advprompts.errors import ConfigError
from advprompts.experiments.config import ExperimentConfig, MethodSpec
from advprompts.experiments.plan import draw_seed, optimisation_runs, pool_units, round_tag
from advprompts.experiments.pools import (augment_pool, dataset_labels, fresh_text_side, generate_units, load_pool,
                                          real_pool, with_label_noise)
from advprompts.experiments.profile import StageProfile
from advprompts.experiments.results import write_results
from advprompts.fsio import read_json
from advprompts.fsio import atomic_write_text
from advprompts.rundir import prepare_run_dir
from advprompts.tasks.train import Tensors, evaluate, load_tensors, save_task_weights, train_classifier

logger = logging.getLogger(__name__)


class ExperimentRunner:
    """Runs (and resumes) one experiment into ``out``; ``say`` prints one-line progress messages.
    ``prompt_batch``: optimise up to that many prompts of a method together (``optimize``'s option; a
    ``per_group`` method's groups through ``optimize_together``; None: the config's ``prompt_batch``, whose
    default is one at a time). ``reuse``: another experiment
    folder whose finished stages that this config makes the same way are copied in first
    (:mod:`advprompts.experiments.reuse`). Every stage's wall time goes to ``out/profile.csv`` (``self.profile``)."""

    def __init__(self, config: ExperimentConfig, out: str | Path, *, overwrite: bool = False,
                 components=None, progress: bool = True, say: Callable[[str], None] = logger.info,
                 prompt_batch: int | None = None, reuse: str | Path | None = None):
        from advprompts.data import resolve_dataset

        self.config, self.out, self.progress, self.say = config, Path(out), progress, say
        self.prompt_batch = prompt_batch if prompt_batch is not None else config.prompt_batch
        fingerprint = config.model_dump(mode="json")
        prepare_run_dir(self.out, fingerprint, "experiment.yaml", resume=False, overwrite=overwrite,
                        auto_resume=True, create=False)
        self.train_ds = resolve_dataset(config.benchmark, split=config.train_split, image_size=config.image_size)
        self.class_names = [self.train_ds.class_names.get(i, str(i)) for i in range(self.num_classes)]
        self._components = components
        # Fail before anything is written: missing backbone or diffusion model.
        if config.task.init != "scratch":
            from advprompts.tasks.models import backbone_path, read_state

            read_state(backbone_path(config.task.arch, config.task.init))
        if any(m.generated for m in config.methods.values()):
            self.components  # noqa: B018 (loads, or raises ModelLoadError)
        if reuse is not None:
            from advprompts.experiments.reuse import reusable_config, reuse_stages

            reused = reusable_config(config, Path(reuse))  # a folder that cannot be reused is refused before any write
        if not prepare_run_dir(self.out, fingerprint, "experiment.yaml", resume=False, overwrite=overwrite,
                               auto_resume=True):
            import yaml

            atomic_write_text(self.out / "experiment.yaml", yaml.safe_dump(fingerprint, sort_keys=False))
        if reuse is not None:
            copied = reuse_stages(config, self.out, Path(reuse), reused)
            say(f"reused {len(copied)} finished stages of {reuse}")
        self._sources: dict[str, object] = {config.train_split: self.train_ds}
        self.profile = StageProfile(self.out)

    # ------------------------------------------------------------------ shared inputs
    @property
    def image_size(self) -> int:
        """The diffusion model's size: generation sources are loaded at it."""
        return self.config.image_size

    @property
    def task_size(self) -> int:
        """Task-model data is held at the task model's input size (memory: 224 px, not 384)."""
        return self.config.task.input_size or self.config.image_size

    @property
    def device(self) -> torch.device:
        from advprompts.device import resolve_device

        return resolve_device(self.config.device)

    @property
    def num_classes(self) -> int:
        return int(dataset_labels(self.train_ds).max()) + 1

    @property
    def components(self):
        if self._components is None:
            from advprompts.models.loading import load_components

            self._components = load_components(self.config.model, device=self.device)
        return self._components

    @functools.cached_property
    def train_data(self) -> Tensors:
        return load_tensors(self.config.benchmark, split=self.config.train_split, image_size=self.task_size)

    @functools.cached_property
    def eval_data(self) -> Tensors:
        return load_tensors(self.config.benchmark, split=self.config.eval_split, image_size=self.task_size)

    def new_model(self, arch: str | None = None):
        """A fresh task model: random init, or the configured pretrained backbone with a new head."""
        from advprompts.tasks.models import load_backbone, load_task_model

        arch = arch or self.config.task.arch
        model = load_task_model(arch, self.num_classes, input_size=self.config.task.input_size)
        if self.config.task.init != "scratch" and arch == self.config.task.arch:
            load_backbone(model, self.config.task.init)
        return model

    def sources(self, spec: MethodSpec):
        """The labelled images a generated method paints around: train's, or its ``source_split``'s."""
        return self.split(spec.source_split or self.config.train_split)

    def split(self, name: str):
        """One of the benchmark's splits, resolved once (a pool's units and its generation both read it)."""
        from advprompts.data import resolve_dataset

        if name not in self._sources:
            self._sources[name] = resolve_dataset(self.config.benchmark, split=name, image_size=self.config.image_size)
        return self._sources[name]

    def adversary(self, spec: MethodSpec) -> str:
        """The architecture a method's prompts are found against."""
        return spec.adversary or self.config.task.arch

    def base_path(self, seed: int, arch: str | None = None) -> Path:
        return self.out / "models" / f"base-{arch or self.config.task.arch}-s{seed}.safetensors"

    def base_model(self, seed: int, arch: str | None = None):
        """The task model trained on the train split (cached in OUT/models)."""
        from advprompts.tasks.models import load_task_model

        arch = arch or self.config.task.arch
        path = self.base_path(seed, arch)
        if not path.is_file():
            self.say(f"training the base {arch} on {self.config.benchmark}:{self.config.train_split} (seed {seed})")
            with self.profile.stage("base_training", arch, seed):
                torch.manual_seed(seed)
                model = train_classifier(self.new_model(arch).to(self.device), self.train_data, self.config.train,
                                         seed=seed, progress=self.progress, desc=f"base {arch} s{seed}")
                save_task_weights(model, path)
        else:
            self.profile.add("base_training", arch, seed)  # reused: written once, as cached
        return load_task_model(arch, self.num_classes, weights=path, input_size=self.config.task.input_size).to(self.device)

    # ------------------------------------------------------------------ pools
    def pool(self, name: str, spec: MethodSpec, seed: int, weights: Path | None = None, rnd: int = 1) -> Tensors:
        """The method's extra data. ``loop`` passes its round ``rnd`` (fresh random draws from round 2 on)
        and ``weights``, the model of the round before, which replaces the adversary's base model. A
        derived method's is its source method's pool; the ablations (``oracle_filter``, then
        ``label_noise``) change it after it is drawn."""
        if spec.kind == "derived":
            data = self.pool(spec.pool_of, self.config.methods[spec.pool_of], seed, weights, rnd)
        else:
            data = self._pool(name, spec, seed, weights, rnd)
        if spec.oracle_filter:
            data = data.subset(np.flatnonzero(self._faithful(data)).tolist())
        if spec.label_noise:
            data = with_label_noise(data, spec.label_noise, seed, self.num_classes)
        return data

    def _faithful(self, data: Tensors) -> np.ndarray:
        from advprompts.experiments.composition import oracle_faithful

        oracle, bench = self._judge
        return oracle_faithful(data, bench, oracle)

    @functools.cached_property
    def _judge(self):
        """The zoo's oracle and the benchmark it judges by, loaded once for every oracle-filtered pool."""
        from advprompts.experiments.composition import benchmark_root, composition_context, embedded_oracle

        oracle = embedded_oracle(self.config)
        ctx = composition_context(benchmark_root(self.config), self.config.train_split, self.config.eval_split)
        if oracle is None or ctx is None:
            raise ConfigError("oracle_filter needs the embedded models' oracle and an embedded benchmark")
        return oracle, ctx["bench"]

    def _pool(self, name: str, spec: MethodSpec, seed: int, weights: Path | None, rnd: int) -> Tensors:
        c = self.config
        if spec.kind == "no_extra":
            return self.train_data.subset([])
        if spec.kind == "real_ood":
            if c.ood_split is None:
                raise ConfigError(f"method {name!r} (real_ood) needs ood_split in the experiment config")
            with self.profile.stage("pool", name, seed):
                return real_pool(c.benchmark, c.ood_split, seed, c.max_extra, self.task_size)
        if spec.kind == "augment":
            with self.profile.stage("pool", name, seed):
                return augment_pool(self.train_data, seed, c.max_extra)
        pool_dir = self.out / "pools" / f"{name}-s{seed}{round_tag(rnd)}"
        draw, label = draw_seed(seed, rnd), name + round_tag(rnd)
        if not (pool_dir / "metadata.csv").is_file():
            comps = fresh_text_side(self.components)
            units = pool_units(self, name, spec, seed, pool_dir, comps, weights, rnd)
            self.say(f"{name}: generating {c.max_extra} images (seed {seed}" + (f", round {rnd})" if rnd > 1 else ")"))
            with self.profile.stage("generation", label, seed):
                generate_units(units, pool_dir, comps, c.generation, draw, self.sources(spec), device=c.device)
        else:
            self.profile.add("generation", label, seed)
        with self.profile.stage("pool", label, seed):
            return load_pool(pool_dir, draw, c.max_extra, self.task_size)

    def optimize_prompts(self, name: str, spec: MethodSpec, seed: int, comps, weights: Path | None = None,
                         rnd: int = 1) -> list:
        """Run the method's optimisation preset against this seed's base model of its adversary
        architecture, or against ``weights`` of that architecture (one run per target group with
        ``per_group``); finished runs are reused, interrupted ones resume."""
        from advprompts.config.schema import parse_config
        from advprompts.optim.loop import optimize, optimize_together

        if weights is None:
            weights = self.base_path(seed, self.adversary(spec))
            self.base_model(seed, self.adversary(spec))  # makes sure the weights exist
        owner = self.config.prompt_owner(name, spec)  # an ablation of the sources only paints with its owner's
        runs = [(group, parse_config(data, what=f"method {name} ({spec.optimize})"),
                 self.out / "prompts" / f"{owner}-s{seed}{round_tag(rnd)}" / (group or ""))
                for group, data in optimisation_runs(self, name, spec, seed, weights, draw_seed(seed, rnd), rnd)]
        together = len(runs) > 1 and (self.prompt_batch or 1) > 1  # the target groups' prompts in one batch
        results = []
        for chunk in [runs] if together else [[run] for run in runs]:
            groups = [group for group, _, _ in chunk if group]
            what = f"{len(groups)} groups" if together else (groups[0] if groups else "")  # the profile's label
            scope = f" for target groups {', '.join(groups)} together" if together else f" for target group {what}"
            self.say(f"{name}: optimising prompts{scope if groups else ''} (seed {seed})")
            done = {str(out): {p.name for p in out.glob("prompt_*.safetensors")} for _, _, out in chunk}
            t0 = time.perf_counter()
            if together:
                outcomes = optimize_together([(config, out) for _, config, out in chunk], resume=True,
                                             components=comps, dataset=self.train_ds, prompt_batch=self.prompt_batch)
            else:
                (_, config, out), = chunk
                outcomes = [optimize(config, out, resume=(out / "config.yaml").is_file(), components=comps,
                                     dataset=self.train_ds, prompt_batch=self.prompt_batch)]
            prompts = [r for o in outcomes for r in o.prompts]
            reused = bool(prompts) and all(r.file.name in done[str(o.out_dir)] for o in outcomes for r in o.prompts)
            self.profile.add("prompts", name + round_tag(rnd) + (f"/{what}" if what else ""), seed,
                             seconds=None if reused else time.perf_counter() - t0)  # reused: nothing was left to do
            results += prompts
        return results

    # ------------------------------------------------------------------ cells
    def cell(self, name: str, spec: MethodSpec, seed: int, n: int, pool: Tensors, arch: str | None = None) -> dict:
        label = name if arch is None or arch == self.config.task.arch else f"{name}->{arch}"
        path = self.out / "cells" / f"{label}-n{n}-s{seed}.json"
        cached = read_json(path, required=("avg_acc", "worst_group_acc"))  # a torn or foreign file is recomputed
        if cached is not None:
            for stage in ("finetune", "evaluate"):
                self.profile.add(stage, label, seed, n)
            return cached
        t0 = time.time()
        model = self.base_model(seed, arch)
        with self.profile.stage("finetune", label, seed, n):
            data = Tensors.concat([self.train_data, pool.subset(list(range(n)))]) if n else self.train_data
            source = self.config.methods[spec.pool_of] if spec.pool_of else spec  # a derived pool keeps its augmentation
            train_classifier(model, data, self.config.finetune, seed=seed + 1, augment=source.augment or "none",
                             progress=self.progress, desc=f"fine-tune {label} n={n} s{seed}")
        with self.profile.stage("evaluate", label, seed, n):
            ev = evaluate(model, self.eval_data)
        row = {"benchmark": Path(self.config.benchmark).name, "method": label, "n_extra": n, "seed": seed,
               **ev.row(), "seconds": round(time.time() - t0, 1)}
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(row))
        return row

    def run(self) -> list[dict]:
        from tqdm.auto import tqdm

        c = self.config
        rows = []
        budgets = sorted({c.n_extra(b) for b in c.budgets}, reverse=True)
        total = len(c.seeds) * sum(1 if s.kind == "no_extra" else len(budgets) for s in c.methods.values())
        bar = tqdm(total=total, desc="cells", disable=not self.progress)
        for seed in c.seeds:
            self.base_model(seed)
            for name, spec in c.methods.items():
                pool = self.pool(name, spec, seed)
                sizes = [0] if spec.kind == "no_extra" else [min(n, len(pool)) for n in budgets]
                archs = [None] + ([a for a in c.transfer] if not c.transfer_methods or name in c.transfer_methods else [])
                for n in sizes:
                    for arch in archs:
                        rows.append(self.cell(name, spec, seed, n, pool, arch))
                    bar.update(1)
                    self.write_results(rows)
        bar.close()
        self.write_results(rows)
        return rows

    def write_results(self, rows: list[dict]) -> Path:
        return write_results(self.out, rows)

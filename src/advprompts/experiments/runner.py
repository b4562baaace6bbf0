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
"""

from __future__ import annotations

import copy
import csv
import io
import json
import logging
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from advprompts.experiments.config import ExperimentConfig, MethodSpec
from advprompts.experiments.pools import (augment_pool, dataset_labels, export_group_images, fresh_text_side,
                                          generate_units, load_pool, real_pool, source_picks)
from advprompts.fsio import read_json
from advprompts.rundir import atomic_write_text, prepare_run_dir
from advprompts.tasks.train import Tensors, evaluate, load_tensors, save_task_weights, train_classifier

logger = logging.getLogger(__name__)
BASE_COLUMNS = ["benchmark", "method", "n_extra", "seed", "avg_acc", "worst_group_acc", "macro_f1"]
POOL_COLUMNS = ["pool_faithfulness", "pool_missing_groups", "pool_target_places", "pool_night"]


def draw_seed(seed: int, rnd: int = 1) -> int:
    """The seed of round ``rnd``'s random draws (prompt inits, sources, generation noise). Round 1 is
    the experiment's own seed, so a loop's first round rebuilds (and can reuse) the experiment's pool;
    later rounds get seeds >= 10**6, apart from any experiment seed and from each other."""
    if rnd == 1:
        return seed
    return 1_000_000 + int(np.random.SeedSequence([seed, rnd]).generate_state(1)[0]) % 1_000_000


def round_tag(rnd: int) -> str:
    """Folder suffix of a loop round's prompts and pool (round 1 shares the experiment's folders)."""
    return "" if rnd == 1 else f"-r{rnd}"


class ExperimentRunner:
    """Runs (and resumes) one experiment into ``out``; ``say`` prints one-line progress messages."""

    def __init__(self, config: ExperimentConfig, out: str | Path, *, overwrite: bool = False,
                 components=None, progress: bool = True, say: Callable[[str], None] = logger.info):
        from advprompts.data import resolve_dataset

        self.config, self.out, self.progress, self.say = config, Path(out), progress, say
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
        if not prepare_run_dir(self.out, fingerprint, "experiment.yaml", resume=False, overwrite=overwrite,
                               auto_resume=True):
            import yaml

            atomic_write_text(self.out / "experiment.yaml", yaml.safe_dump(fingerprint, sort_keys=False))
        self._train: Tensors | None = None
        self._eval: Tensors | None = None

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

    @property
    def train_data(self) -> Tensors:
        if self._train is None:
            self._train = load_tensors(self.config.benchmark, split=self.config.train_split, image_size=self.task_size)
        return self._train

    @property
    def eval_data(self) -> Tensors:
        if self._eval is None:
            self._eval = load_tensors(self.config.benchmark, split=self.config.eval_split, image_size=self.task_size)
        return self._eval

    def new_model(self, arch: str | None = None):
        """A fresh task model: random init, or the configured pretrained backbone with a new head."""
        from advprompts.tasks.models import load_backbone, load_task_model

        arch = arch or self.config.task.arch
        model = load_task_model(arch, self.num_classes, input_size=self.config.task.input_size)
        if self.config.task.init != "scratch" and arch == self.config.task.arch:
            load_backbone(model, self.config.task.init)
        return model

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
            torch.manual_seed(seed)
            model = train_classifier(self.new_model(arch).to(self.device), self.train_data, self.config.train, seed=seed,
                                     progress=self.progress, desc=f"base {arch} s{seed}")
            save_task_weights(model, path)
        return load_task_model(arch, self.num_classes, weights=path, input_size=self.config.task.input_size).to(self.device)

    # ------------------------------------------------------------------ pools
    def pool(self, name: str, spec: MethodSpec, seed: int, weights: Path | None = None, rnd: int = 1) -> Tensors:
        """The method's extra data. ``loop`` passes its round ``rnd`` (fresh random draws from round 2 on)
        and ``weights``, the model of the round before, which replaces the adversary's base model."""
        c = self.config
        if spec.kind == "no_extra":
            return self.train_data.subset([])
        if spec.kind == "real_ood":
            if c.ood_split is None:
                raise ValueError(f"method {name!r} (real_ood) needs ood_split in the experiment config")
            return real_pool(c.benchmark, c.ood_split, seed, c.max_extra, self.task_size)
        if spec.kind == "augment":
            return augment_pool(self.train_data, seed, c.max_extra)
        pool_dir = self.out / "pools" / f"{name}-s{seed}{round_tag(rnd)}"
        draw = draw_seed(seed, rnd)
        if not (pool_dir / "metadata.csv").is_file():
            comps = fresh_text_side(self.components)
            units = self._units(name, spec, seed, pool_dir, comps, weights, rnd)
            self.say(f"{name}: generating {c.max_extra} images (seed {seed}" + (f", round {rnd})" if rnd > 1 else ")"))
            generate_units(units, pool_dir, comps, c.generation, draw, self.train_ds, device=c.device)
        return load_pool(pool_dir, draw, c.max_extra, self.task_size)

    def _units(self, name: str, spec: MethodSpec, seed: int, pool_dir: Path, comps,
               weights: Path | None = None, rnd: int = 1) -> list[dict]:
        """What to generate: (prompts, train sources) units adding up to about ``max_extra`` images."""
        n, draw = self.config.max_extra, draw_seed(seed, rnd)
        if spec.kind == "text":
            texts = spec.prompts or self.target_descriptions()
            return [{"prompts": texts, "sources": source_picks(self.train_ds, n, len(texts), draw)}]
        if spec.kind == "random":
            from advprompts.prompts import LearnablePrompt

            files = []
            for i in range(spec.num_prompts):
                p = LearnablePrompt(comps.tokenizer, comps.text_encoder, num_tokens=spec.num_tokens,
                                    prefix=f"rand-s{draw}-{i}", init="vocab-gaussian", seed=draw * 1000 + i,
                                    template=spec.template)
                files.append(p.save(pool_dir / "prompts" / f"prompt_{i}.safetensors"))
            return [{"prompt_files": files, "sources": source_picks(self.train_ds, n, len(files), draw)}]
        results = self.optimize_prompts(name, spec, seed, comps, weights, rnd)
        by_class: dict[int | None, list[Path]] = {}
        for r in results:
            by_class.setdefault(r.class_label, []).append(r.file)
        if list(by_class) == [None]:
            files = by_class[None]
            return [{"prompt_files": files, "sources": source_picks(self.train_ds, n, len(files), draw)}]
        # Per-class prompts apply to sources of their class only (equal images per class).
        per_class = n / len(by_class)
        return [{"prompt_files": files, "sources": source_picks(self.train_ds, per_class, len(files), draw, label)}
                for label, files in sorted(by_class.items())]

    def target_descriptions(self) -> list[str]:
        import yaml

        bench = Path(getattr(self.train_ds, "root", "")) / "benchmark.yaml"
        texts = yaml.safe_load(bench.read_text()).get("target_descriptions", []) if bench.is_file() else []
        if not texts:
            raise ValueError("this benchmark has no target descriptions; give the method `prompts`")
        return texts

    def optimize_prompts(self, name: str, spec: MethodSpec, seed: int, comps, weights: Path | None = None,
                         rnd: int = 1) -> list:
        """Run the method's optimisation preset against this seed's base model of its adversary
        architecture, or against ``weights`` of that architecture (one run per target group with
        ``per_group``); finished runs are reused, interrupted ones resume."""
        from advprompts.config.presets import apply_overrides, read_yaml
        from advprompts.config.schema import parse_config
        from advprompts.optim.loop import optimize

        base = read_yaml(spec.optimize)
        base = apply_overrides(base, spec.set)
        arch, draw, tag = self.adversary(spec), draw_seed(seed, rnd), round_tag(rnd)
        if weights is None:
            weights = self.base_path(seed, arch)
            self.base_model(seed, arch)  # makes sure the weights exist
        base["data"] = {"source": self.config.benchmark, "split": self.config.train_split}
        base["task"] = {"arch": arch, "num_classes": self.num_classes, "weights": str(weights),
                        "input_size": self.config.task.input_size}
        base.setdefault("model", {}).update(diffusion=self.config.model, device=self.config.device)
        prompt = base.setdefault("prompt", {})
        prompt["seeds"] = [draw * 1000 + s for s in prompt.get("seeds", [0])]
        if rnd > 1:  # fresh batches and noise too (round 1 keeps the preset's, as the experiment does)
            optim = base.setdefault("optim", {})
            optim["seed"] = optim.get("seed", 0) + draw
        if self.config.generation.class_words:  # one vocabulary for optimising and generating
            prompt["class_words"] = self.config.generation.class_words
        base.setdefault("log", {})["progress"] = self.progress
        runs = [(None, base)]
        if spec.per_group:
            if self.config.target_split is None:
                raise ValueError(f"method {name!r} has per_group: true but the experiment has no target_split")
            from advprompts.data import resolve_dataset

            target = resolve_dataset(self.config.benchmark, split=self.config.target_split, image_size=self.image_size)
            runs = []
            for group, folder in export_group_images(target, self.out / "targets").items():
                data = copy.deepcopy(base)
                for loss in data["losses"]:
                    if loss["name"].startswith("image_") or loss["name"] == "ti_denoise":
                        loss.setdefault("params", {})["target_images"] = str(folder)
                data["prompt"]["prefix"] = f"{prompt.get('prefix', 'ap')}-{group}"
                runs.append((group, data))
        results = []
        for group, data in runs:
            config = parse_config(data, what=f"method {name} ({spec.optimize})")
            out = self.out / "prompts" / f"{name}-s{seed}{tag}" / (group or "")
            self.say(f"{name}: optimising prompts" + (f" for target group {group}" if group else "") + f" (seed {seed})")
            res = optimize(config, out, resume=(out / "config.yaml").is_file(), components=comps,
                           dataset=self.train_ds)
            results += res.prompts
        return results

    # ------------------------------------------------------------------ cells
    def cell(self, name: str, spec: MethodSpec, seed: int, n: int, pool: Tensors, arch: str | None = None) -> dict:
        label = name if arch is None or arch == self.config.task.arch else f"{name}->{arch}"
        path = self.out / "cells" / f"{label}-n{n}-s{seed}.json"
        cached = read_json(path, required=("avg_acc", "worst_group_acc"))  # a torn or foreign file is recomputed
        if cached is not None:
            return cached
        t0 = time.time()
        model = self.base_model(seed, arch)
        data = Tensors.concat([self.train_data, pool.subset(list(range(n)))]) if n else self.train_data
        train_classifier(model, data, self.config.finetune, seed=seed + 1, augment=spec.augment or "none",
                         progress=self.progress, desc=f"fine-tune {label} n={n} s{seed}")
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
        """``results.csv``: one row per cell, then its pool's composition (``pool_*``, when judged) and one
        ``acc_<group>`` column per group."""
        pool = [k for k in POOL_COLUMNS if any(k in r for r in rows)]
        groups = sorted({k for r in rows for k in r if k.startswith("acc_")})
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=BASE_COLUMNS + pool + groups, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
        return atomic_write_text(self.out / "results.csv", buf.getvalue()) or self.out / "results.csv"


def summarize(rows: list[dict]) -> list[dict]:
    """Mean and sample std (ddof 1; 0 for one seed) over seeds per (method, n_extra)."""
    cells: dict[tuple[str, int], list[dict]] = {}
    for r in rows:
        cells.setdefault((r["method"], int(r["n_extra"])), []).append(r)
    out = []
    for (method, n), rs in cells.items():
        wg = np.array([float(r["worst_group_acc"]) for r in rs])
        avg = np.array([float(r["avg_acc"]) for r in rs])
        f1 = np.array([float(r.get("macro_f1") or "nan") for r in rs])  # nan: a cell from before the metric
        out.append({"method": method, "n_extra": n, "seeds": len(rs), "worst_group_mean": wg.mean(),
                    "worst_group_std": _sample_std(wg), "avg_mean": avg.mean(), "avg_std": _sample_std(avg),
                    "macro_f1_mean": f1.mean(), "macro_f1_std": _sample_std(f1)})
    return out


def _sample_std(values: np.ndarray) -> float:
    """The sample standard deviation (ddof 1), 0 for a single value."""
    return float(values.std(ddof=1)) if len(values) > 1 else 0.0

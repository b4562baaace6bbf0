"""One optimisation loop for Adversarial, Guided and Guided Adversarial Prompts.

AP, GP and GAP are configurations of :func:`optimize` (their ``losses`` differ). Every prompt
(one per seed, times one per class with ``prompt.per_class``) is trained in turn. Each step draws
its batch and noise from generators seeded by ``(optim.seed, prompt index, step)``, so a run
resumed from a checkpoint (embeddings + optimiser state) ends bit-identical to an uninterrupted one,
and prompts can be split over processes (``shard``, ``accelerate launch``): each process trains
the prompts whose index is its share, into the same folder, with the same results.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from advprompts.checkpoints import checkpoint_paths, load_checkpoint, save_checkpoint
from advprompts.config.presets import dump_config
from advprompts.config.schema import RunConfig
from advprompts.data.folder import collate
from advprompts.errors import ConfigError, NaNLossError
from advprompts.fsio import read_json
from advprompts.losses import LossInputs, LossResources, LossSet, WeightedTerm, build_loss
from advprompts.losses.assignment import check_rankable, rank_descriptions, rankers
from advprompts.optim.log import OptimLog, require_tensorboard
from advprompts.prompts import LearnablePrompt
from advprompts.rundir import atomic_write_bytes, prepare_run_dir, releases_run_dir
from advprompts.sampler import Sampler
from advprompts.sampler_inputs import AUTOCAST, sampler_kwargs
from advprompts.shards import launch_device, launch_state, parse_shard, resolve_shard

logger = logging.getLogger(__name__)


@dataclass
class PromptResult:
    """Outcome of one prompt: its file, the last logged losses, steps run, early stop."""

    key: str
    file: Path
    class_label: int | None
    seed: int
    losses: dict[str, float]
    steps: int
    stopped_early: bool


@dataclass
class OptimResult:
    """Outcome of :func:`optimize`: the run folder and one :class:`PromptResult` per prompt."""

    out_dir: Path
    prompts: list[PromptResult] = field(default_factory=list)

    @property
    def prompt_files(self) -> list[Path]:
        return [p.file for p in self.prompts]


@dataclass
class _Job:
    index: int
    key: str
    seed: int
    label: int | None
    indices: list[int]
    slot: int = 0  # position of the seed in prompt.seeds (guidance terms may give each slot its own target)

    @property
    def init_seed(self) -> int:
        """Seed of the prompt's initial embedding: the classes' prompts of one seed start apart (from
        one init they stayed word-for-word identical through a short optimisation)."""
        if self.label is None:
            return self.seed
        return int(np.random.SeedSequence([self.seed, self.label]).generate_state(1)[0])


def step_generator(*keys: int) -> torch.Generator:
    """A CPU generator seeded from integer keys (order-sensitive, platform-independent)."""
    return torch.Generator().manual_seed(int(np.random.SeedSequence(list(keys)).generate_state(1)[0]))


def _jobs(config: RunConfig, dataset) -> list[_Job]:
    labels = [dataset[i]["label"] for i in range(len(dataset))] if config.prompt.per_class else None
    classes = sorted(set(labels)) if labels else [None]
    jobs = []
    for label in classes:
        indices = [i for i, y in enumerate(labels) if y == label] if labels else list(range(len(dataset)))
        for slot, seed in enumerate(config.prompt.seeds):
            key = (f"c{label}-" if label is not None else "") + f"s{seed}"
            jobs.append(_Job(len(jobs), key, seed, label, indices, slot))
    return jobs


def _build_losses(config: RunConfig) -> LossSet:
    return LossSet([WeightedTerm(build_loss(l.name, **l.params), l.weight, l.warmup, l.label or "")
                    for l in config.losses])


def _backward_per_term(weighted: dict[str, torch.Tensor], param: torch.Tensor, grad_accum: int) -> dict[str, float]:
    """Accumulate the terms' gradients into ``param.grad`` one term at a time and return each weighted
    term's gradient norm (``grad_<label>``): which term moves the prompt, on one scale."""
    norms = {}
    labels = list(weighted)
    for i, label in enumerate(labels):
        (grad,) = torch.autograd.grad(weighted[label] / grad_accum, param, retain_graph=i < len(labels) - 1,
                                      allow_unused=True)
        if grad is None:
            grad = torch.zeros_like(param)
        norms[f"grad_{label}"] = float(grad.norm()) * grad_accum
        param.grad = grad if param.grad is None else param.grad + grad
    return norms


def _save_grid(path: Path, images: torch.Tensor) -> None:
    from torchvision.utils import save_image

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    save_image(images.detach().float().cpu(), str(tmp), nrow=min(8, len(images)))
    tmp.replace(path)


@releases_run_dir("out")  # the run folder's lock (taken by prepare_run_dir) ends with the call
def optimize(
    config: RunConfig,
    out: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    components=None,
    task_model: torch.nn.Module | None = None,
    dataset=None,
    on_step: Callable[[str, int, dict], None] | None = None,
    shard: str | tuple[int, int] | None = None,
) -> OptimResult:
    """Learn prompts (AP / GP / GAP by ``config.losses``) and write them to ``out``.

    Args:
        config: a validated :class:`~advprompts.config.schema.RunConfig`.
        out: run folder: ``prompt_<key>.safetensors`` (+ ``.json``), ``config.yaml``, ``log.csv``,
            ``tensorboard/``, ``samples/<key>/step_XXXXXX.png``, ``checkpoints/<key>.safetensors`` + ``.json``.
        resume: continue the same run from its checkpoints.
        overwrite: empty a folder holding another advprompts run first.
        components, task_model, dataset: already-loaded objects (else loaded from ``config``).
        on_step: called as ``on_step(prompt_key, step, logged_values)`` after every step.
        shard: ``"i/n"``: train only the prompts whose index is ``i`` modulo ``n`` (split again over
            the processes of ``accelerate launch``); shards share ``out`` and join each other's run.

    Returns:
        :class:`OptimResult`.

    Raises:
        OutputExistsError, OutputLockedError, ConfigError, DataError, ModelLoadError, NaNLossError.
    """
    from advprompts.data import resolve_dataset
    from advprompts.models.loading import load_components
    from advprompts.tasks.models import load_task_model

    # 1. Run folder: refuse another run, continue this one on --resume (checked before loading,
    #    created after, so that a failed load leaves no partial output). Shards join the run.
    if overwrite and parse_shard(shard)[1] > 1:
        raise ConfigError("--overwrite with --shard i/n (n > 1) would delete the other shards' prompts; "
                          "empty --out first, then start the shards")
    state = launch_state()
    shard = resolve_shard(shard, state)
    sharded = shard[1] > 1
    out = Path(out)
    fingerprint = config.model_dump(mode="json")
    prepare_run_dir(out, fingerprint, "config.yaml", resume=resume, overwrite=overwrite, auto_resume=sharded,
                    create=False, shard=shard)
    if config.log.tensorboard:
        require_tensorboard()  # before minutes of model loading

    # 2. Models, data, losses.
    device = launch_device(config.model.device, state)
    comps = components or load_components(config.model.diffusion, device=device, controlnet=config.model.controlnet)
    size = config.sampler.image_size or comps.unet.config.sample_size * comps.vae_scale_factor
    dataset = dataset or resolve_dataset(config.data.source, split=config.data.split, image_size=size)
    if task_model is None and config.task.arch is not None:
        task_model = load_task_model(config.task.arch, config.task.num_classes, config.task.weights,
                                     config.task.input_size)
    if task_model is not None:
        task_model = task_model.to(device).eval().requires_grad_(False)
    losses = _build_losses(config)
    check_rankable(losses, config.prompt.per_class)
    losses.setup(LossResources(components=comps, task_model=task_model, device=device))
    sampler = Sampler(comps, gradient_checkpointing=config.sampler.gradient_checkpointing,
                      autocast_dtype=AUTOCAST[config.model.autocast])
    with state.main_process_first() if state is not None else contextlib.nullcontext():
        main = state is None or state.is_main_process  # only the main process may empty the folder
        if not prepare_run_dir(out, fingerprint, "config.yaml", resume=resume, overwrite=overwrite and main,
                               auto_resume=sharded, shard=shard):
            dump_config(config, out / "config.yaml")
    jobs = _jobs(config, dataset)
    _rank_targets(config, jobs, dataset, sampler, losses, device, out)
    mine = [job for job in jobs if job.index % shard[1] == shard[0]]
    columns = losses.labels + ([f"grad_{label}" for label in losses.labels] if config.log.grad_norm_every else [])
    log = OptimLog(out, columns, config.log.tensorboard, None, part=f"log-{shard[0]}-of-{shard[1]}.csv"
               if sharded else None, keys={job.key for job in mine})
    result = OptimResult(out_dir=out)
    try:
        for job in mine:
            result.prompts.append(_run_job(config, job, comps, sampler, losses, dataset, device, out, log, on_step))
    finally:
        log.close()
    if sharded:
        if state is not None:
            state.wait_for_everyone()
        if state is None or state.is_main_process:
            log.merge({job.key: job.index for job in jobs})
    return result


def _draw_inputs(config: RunConfig, job: _Job, dataset, sampler: Sampler, device: torch.device, gen: torch.Generator,
                 text_for: Callable[[str], str], grad: bool = True) -> LossInputs:
    """A batch of the job's sources drawn with ``gen``, one rollout of ``text_for(class name)`` on each (the
    same generator: its noise), as loss inputs."""
    class_names = getattr(dataset, "class_names", {})
    pick = torch.randperm(len(job.indices), generator=gen)[: config.optim.batch_size]
    batch = collate([dataset[job.indices[int(i)]] for i in pick])
    names = [class_names.get(y, str(y)) for y in batch["label"].tolist()]
    rollout = sampler([text_for(n) for n in names], generator=gen, grad=grad, **sampler_kwargs(config, batch, device))
    return LossInputs(images=rollout.images, labels=batch["label"].to(device),
                      dense=None if batch["dense"] is None else batch["dense"].to(device),
                      class_names=names, generator=gen, prompt_slot=job.slot, sources=batch["image"].to(device))


def _rank_targets(config: RunConfig, jobs: list[_Job], dataset, sampler: Sampler, losses: LossSet, device,
                  out: Path) -> None:
    """``target_mode: adversary``: rank each class's target descriptions by the adversarial terms' loss on
    images generated from them (one batch per class, the same sources and noise for every description),
    before any prompt is trained; the ranking goes to ``targets.json``."""
    terms = rankers(losses)
    if not terms:
        return
    template, words, ranking = config.prompt.template, config.prompt.class_words, {}
    recorded = read_json(out / "targets.json") or {}  # a resumed run (same config: the folder's fingerprint says so)
    for job in {job.label: job for job in jobs}.values():
        def render(description: str) -> LossInputs:
            gen = step_generator(config.optim.seed, 1_000_003, job.label)
            text = lambda n: template.replace("{prompt}", description).replace("{class}", words.get(n, n))  # noqa: E731
            return _draw_inputs(config, job, dataset, sampler, device, gen, text, grad=False)

        name = getattr(dataset, "class_names", {}).get(job.label, str(job.label))
        ranking.update(rank_descriptions(terms, losses, name, render, known=recorded.get(name)))
    atomic_write_bytes(out / "targets.json", json.dumps(ranking, indent=1).encode())


def _run_job(config, job, comps, sampler, losses, dataset, device, out, log, on_step) -> PromptResult:
    o = config.optim
    final = out / f"prompt_{job.key}.safetensors"
    class_names = getattr(dataset, "class_names", {})
    prompt = LearnablePrompt(comps.tokenizer, comps.text_encoder, num_tokens=config.prompt.num_tokens,
                             prefix=f"{config.prompt.prefix}-{job.key}", init=config.prompt.init, seed=job.init_seed,
                             template=config.prompt.template,
                             class_name=class_names.get(job.label) if job.label is not None else None)
    prompt.to(device)
    opt_cls = torch.optim.AdamW if o.optimizer == "adamw" else torch.optim.Adam
    opt = opt_cls([prompt.embeddings], lr=o.lr, weight_decay=o.weight_decay)
    ckpt_dir, values = out / "checkpoints", {}
    ckpt_path = checkpoint_paths(ckpt_dir, job.key)[1]  # the JSON half commits a checkpoint
    start, stopped = load_checkpoint(ckpt_dir, job.key, prompt.embeddings, opt)
    log.truncate(job.key, start - 1)
    from tqdm.auto import tqdm

    words = config.prompt.class_words
    bar = tqdm(range(start, o.steps), desc=f"prompt {job.key}", disable=not config.log.progress,
               initial=start, total=o.steps)
    step = start - 1
    for step in bar:
        if stopped:
            break
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        totals: dict[str, float] = {}
        for micro in range(o.grad_accum):
            # Every random draw of this step comes from generators keyed by (seed, prompt, step).
            gen = step_generator(o.seed, job.index, step, micro)
            inputs = _draw_inputs(config, job, dataset, sampler, device, gen, lambda n: prompt.text(words.get(n, n)))
            inputs.prompt, inputs.step = prompt, step
            total, parts, weighted = losses.evaluate(inputs)
            if not torch.isfinite(total):
                log.flush()
                raise NaNLossError(f"loss of prompt {job.key} is {float(total.detach())} at step {step} (terms: {parts}); "
                                   f"last good checkpoint: {ckpt_path if ckpt_path.is_file() else 'none'}; "
                                   "lower optim.lr or check the loss weights")
            every = config.log.grad_norm_every
            if every and step % every == 0:
                parts.update(_backward_per_term(weighted, prompt.embeddings, o.grad_accum))
            else:
                (total / o.grad_accum).backward()
            for name, v in {**parts, "total": float(total.detach())}.items():
                totals[name] = totals.get(name, 0.0) + v / o.grad_accum
        opt.step()
        values = {**totals, "seconds": round(time.perf_counter() - t0, 4)}
        log.add(job.key, step, values)
        bar.set_postfix(loss=f"{totals['total']:.4f}")
        if on_step is not None:
            on_step(job.key, step, values)
        done = step + 1
        if config.log.sample_every and done % config.log.sample_every == 0:
            _save_grid(out / "samples" / job.key / f"step_{done:06d}.png", inputs.images)
        stopped = losses.should_stop()
        if stopped:
            logger.info("prompt %s: task loss reached its threshold at step %d; stopping", job.key, step)
        if done % config.log.checkpoint_every == 0 or done == o.steps or stopped:
            # The log first: a kill between the two resumes from the older checkpoint and drops the newer
            # rows, where the other order would lose the rows of the steps before this checkpoint.
            log.flush()
            save_checkpoint(ckpt_dir, job.key, done, prompt.embeddings, opt, stopped)
    bar.close()
    steps_run = max(step + 1, start)
    prompt.save(final, steps=steps_run, method=config.method)
    if not values:  # resumed a finished prompt: report its last logged step
        rows = [r for r in log.rows if r["prompt"] == job.key]
        values = {k: float(v) for k, v in rows[-1].items() if k != "prompt"} if rows else {}
    return PromptResult(key=job.key, file=final, class_label=job.label, seed=job.seed, losses=values,
                        steps=steps_run, stopped_early=stopped)

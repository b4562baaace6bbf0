"""One optimisation loop for Adversarial, Guided and Guided Adversarial Prompts.

AP, GP and GAP are configurations of :func:`optimize` (their ``losses`` differ). Every prompt
(one per seed, times one per class with ``prompt.per_class``) is trained in turn. Each step draws
its batch and noise from generators seeded by ``(optim.seed, prompt index, step)``, so a run
resumed from a checkpoint (embeddings + optimiser state) ends bit-identical to an uninterrupted one,
and prompts can be split over processes (``shard``, ``accelerate launch``): each process trains
the prompts whose index is its share, into the same folder, with the same results. ``prompt_batch``
trains several prompts together in one batched rollout (:mod:`advprompts.optim.batch`); each prompt's
state, checkpoints and log live in :mod:`advprompts.optim.job`.
"""

from __future__ import annotations

import contextlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from advprompts.config.presets import dump_config
from advprompts.config.schema import RunConfig
from advprompts.errors import ConfigError
from advprompts.fsio import read_json
from advprompts.losses import LossResources, LossSet, WeightedTerm, build_loss
from advprompts.losses.assignment import check_rankable, rank_descriptions, rankers
from advprompts.optim.batch import draw_call, loss_inputs, step_generator, train_all
from advprompts.optim.job import PromptResult, PromptRun, RunContext, jobs_of
from advprompts.optim.log import OptimLog, require_tensorboard
from advprompts.fsio import atomic_write_bytes
from advprompts.rundir import prepare_run_dir
from advprompts.runlock import held_locks, release_run_dir, releases_run_dir
from advprompts.sampler import Sampler
from advprompts.sampler_inputs import AUTOCAST
from advprompts.shards import launch_device, launch_state, parse_shard, resolve_shard

logger = logging.getLogger(__name__)
__all__ = ["OptimResult", "PromptResult", "build_losses", "optimize", "optimize_together", "step_generator"]


@dataclass
class OptimResult:
    """Outcome of :func:`optimize`: the run folder and one :class:`PromptResult` per prompt."""

    out_dir: Path
    prompts: list[PromptResult] = field(default_factory=list)

    @property
    def prompt_files(self) -> list[Path]:
        return [p.file for p in self.prompts]


def build_losses(config: RunConfig) -> LossSet:
    """The config's loss terms, weighted, as one :class:`~advprompts.losses.LossSet`."""
    return LossSet([WeightedTerm(build_loss(l.name, **l.params), l.weight, l.warmup, l.label or "")
                    for l in config.losses])


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
    prompt_batch: int | None = None,
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
        prompt_batch: train up to this many prompts together in one batched rollout (fewer when free
            memory is short); each moves as alone, up to float rounding. None or 1: one at a time.

    Returns:
        :class:`OptimResult`.

    Raises:
        OutputExistsError, OutputLockedError, ConfigError, DataError, ModelLoadError, NaNLossError.
    """
    _check_prompt_batch(prompt_batch)
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
    comps, dataset, task_model, sampler = _load_shared(config, device, components, dataset, task_model)
    batched = (prompt_batch or 1) > 1
    ctx, mine, jobs = _open_run(config, out, comps, dataset, task_model, sampler, device, resume=resume,
                                overwrite=overwrite, shard=shard, state=state, batched=batched, on_step=on_step)
    log = ctx.log
    result = OptimResult(out_dir=out)
    try:
        if batched:  # every prompt at once: the batch takes the next one when one stops
            runs = [PromptRun(ctx, job) for job in mine]
            train_all(ctx, runs, prompt_batch)
        else:  # one prompt after the other, each created when its turn comes
            runs = []
            for job in mine:
                runs.append(PromptRun(ctx, job))
                train_all(ctx, runs[-1:])
                result.prompts.append(runs[-1].result())
        if batched:
            result.prompts = [run.result() for run in runs]
    finally:
        log.close()
    if sharded:
        if state is not None:
            state.wait_for_everyone()
        if state is None or state.is_main_process:
            log.merge({job.key: job.index for job in jobs})
    return result


def _load_shared(config: RunConfig, device, components, dataset, task_model) -> tuple:
    """What the prompts of one or several runs share: ``(components, dataset, task model, sampler)``."""
    from advprompts.data import resolve_dataset
    from advprompts.models.loading import load_components
    from advprompts.tasks.models import load_task_model

    comps = components or load_components(config.model.diffusion, device=device, controlnet=config.model.controlnet)
    size = config.sampler.image_size or comps.unet.config.sample_size * comps.vae_scale_factor
    dataset = dataset or resolve_dataset(config.data.source, split=config.data.split, image_size=size)
    if task_model is None and config.task.arch is not None:
        # Without task.weights the init is random: seeded by the run's seed, so that two runs of one config
        # write the same prompts; forked (the CPU generator only: the init runs there), so that the caller's
        # global RNG stream is left as it was.
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(config.optim.seed)
            task_model = load_task_model(config.task.arch, config.task.num_classes, config.task.weights,
                                         config.task.input_size)
    if task_model is not None:
        task_model = task_model.to(device).eval().requires_grad_(False)
    sampler = Sampler(comps, gradient_checkpointing=config.sampler.gradient_checkpointing,
                      autocast_dtype=AUTOCAST[config.model.autocast])
    return comps, dataset, task_model, sampler


def _open_run(config: RunConfig, out: Path, comps, dataset, task_model, sampler, device, *, resume: bool,
              overwrite: bool, shard: tuple[int, int], state, batched: bool, on_step=None) -> tuple:
    """One run's losses, folder (created or continued), jobs, target ranking and log: ``(RunContext, the
    jobs this process trains, all jobs)``."""
    losses = build_losses(config)
    check_rankable(losses, config.prompt.per_class)
    losses.setup(LossResources(components=comps, task_model=task_model, device=device))
    sharded, fingerprint = shard[1] > 1, config.model_dump(mode="json")
    with state.main_process_first() if state is not None else contextlib.nullcontext():
        main = state is None or state.is_main_process  # only the main process may empty the folder
        if not prepare_run_dir(out, fingerprint, "config.yaml", resume=resume, overwrite=overwrite and main,
                               auto_resume=sharded, shard=shard):
            dump_config(config, out / "config.yaml")
    jobs = jobs_of(config, dataset)
    _rank_targets(config, jobs, dataset, sampler, losses, device, out)
    mine = [job for job in jobs if job.index % shard[1] == shard[0]]
    columns = losses.labels + ([f"grad_{label}" for label in losses.labels] if config.log.grad_norm_every else [])
    log = OptimLog(out, columns, config.log.tensorboard, None, part=f"log-{shard[0]}-of-{shard[1]}.csv"
                   if sharded else None, keys={job.key for job in mine},
                   order={job.key: job.index for job in jobs} if batched else None)
    return RunContext(config, comps, sampler, losses, dataset, device, out, log, on_step), mine, jobs


def optimize_together(runs: list[tuple[RunConfig, str | Path]], *, resume: bool = False, components=None,
                      dataset=None, prompt_batch: int | None = 8) -> list[OptimResult]:
    """:func:`optimize` several runs whose configs differ only in their loss terms and prompt prefix (one
    per target group, say, each guided by its group's images), their prompts batched together up to
    ``prompt_batch`` at a time: each run's folder, log, checkpoints and prompts are those it would get
    alone (up to the float rounding of a larger batch), and a run resumes as its own folder says.

    Raises:
        ConfigError: the configs differ in more than losses and prompt prefix; plus :func:`optimize`'s.
    """
    _check_prompt_batch(prompt_batch)
    configs, outs = [c for c, _ in runs], [Path(o) for _, o in runs]
    if len(set(map(str, outs))) < len(outs):
        raise ConfigError("optimize_together: two runs share an output folder; give each its own")
    shared = [_shared_part(c) for c in configs]
    for c, part in zip(configs[1:], shared[1:]):
        if part != shared[0]:
            diff = _differences(shared[0], part)
            raise ConfigError(f"runs optimised together may differ only in losses and prompt.prefix; run "
                              f"{c.prompt.prefix!r} differs in {', '.join(diff)}; optimise it on its own")
    for config, out in runs:  # refuse before loading anything (nothing is created yet)
        prepare_run_dir(out, config.model_dump(mode="json"), "config.yaml", resume=resume, overwrite=False,
                        create=False)
    first = configs[0]
    if first.log.tensorboard:
        require_tensorboard()
    device = launch_device(first.model.device, None)
    comps, dataset, task_model, sampler = _load_shared(first, device, components, dataset, None)
    before = {str(o): held_locks(o) for o in outs}
    ctxs, prompt_runs = [], []
    try:
        for config, out in zip(configs, outs):
            ctx, mine, _ = _open_run(config, out, comps, dataset, task_model, sampler, device, resume=resume,
                                     overwrite=False, shard=(0, 1), state=None, batched=True)
            ctxs.append(ctx)
            prompt_runs.append([PromptRun(ctx, job) for job in mine])
        train_all(ctxs[0], [run for group in prompt_runs for run in group], prompt_batch or 1)
        return [OptimResult(out_dir=out, prompts=[run.result() for run in group])
                for out, group in zip(outs, prompt_runs)]
    finally:
        for ctx in ctxs:
            ctx.log.close()
        for out in outs:
            release_run_dir(out, only=held_locks(out) - before[str(out)])


def _check_prompt_batch(prompt_batch) -> None:
    if prompt_batch is not None and (not isinstance(prompt_batch, int) or prompt_batch < 1):
        raise ConfigError(f"prompt_batch={prompt_batch!r} is invalid; expected an integer >= 1 (1: one at a time)")


def _differences(a: dict, b: dict, prefix: str = "") -> list[str]:
    """The dotted keys whose values differ between two config dicts."""
    keys = sorted(set(a) | set(b))
    return [d for k in keys if a.get(k) != b.get(k)
            for d in (_differences(a[k], b[k], f"{prefix}{k}.") if isinstance(a.get(k), dict)
                      and isinstance(b.get(k), dict) else [f"{prefix}{k}"])]


def _shared_part(config: RunConfig) -> dict:
    """What runs batched together must agree on: the config without its losses and prompt prefix."""
    data = config.model_dump(mode="json")
    data.pop("losses")
    data["prompt"].pop("prefix")
    return data


def _rank_targets(config: RunConfig, jobs: list, dataset, sampler: Sampler, losses: LossSet, device,
                  out: Path) -> None:
    """``target_mode: adversary``: rank each class's target descriptions by the adversarial terms' loss on
    images generated from them (one batch per class, the same sources and noise for every description),
    before any prompt is trained; the ranking goes to ``targets.json``."""
    terms = rankers(losses)
    if not terms:
        return
    template, words, ranking = config.prompt.template, config.prompt.class_words, {}
    recorded = read_json(out / "targets.json") or {}  # a resumed run (same config: the folder's fingerprint says so)
    ctx = RunContext(config, None, sampler, losses, dataset, device, out, None)
    for job in {job.label: job for job in jobs}.values():
        def render(description: str):
            gen = step_generator(config.optim.seed, 1_000_003, job.label)
            text = lambda n: template.replace("{prompt}", description).replace("{class}", words.get(n, n))  # noqa: E731
            call, batch, names = draw_call(ctx, job.indices, gen, text)
            return loss_inputs(ctx, sampler(**call, grad=False), batch, names, gen, job.slot)

        name = getattr(dataset, "class_names", {}).get(job.label, str(job.label))
        ranking.update(rank_descriptions(terms, losses, name, render, known=recorded.get(name)))
    atomic_write_bytes(out / "targets.json", json.dumps(ranking, indent=1).encode())

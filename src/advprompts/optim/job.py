"""One prompt being optimised: its job (key, seed, class, sources), its embeddings and optimiser, its
checkpoint I/O, log rows, sample grids and early stop. :mod:`advprompts.optim.batch` steps one or
several of them at a time; whichever way, each keeps its own state, as if it were alone."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from advprompts.checkpoints import checkpoint_paths, load_checkpoint, save_checkpoint
from advprompts.config.schema import RunConfig
from advprompts.optim.log import OptimLog
from advprompts.prompts import LearnablePrompt

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
class Job:
    """Which prompt: its index in the run, key, seed, class and the indices of its source samples."""

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


def jobs_of(config: RunConfig, dataset) -> list[Job]:
    """One job per (class with ``prompt.per_class``, seed), classes first."""
    labels = [dataset[i]["label"] for i in range(len(dataset))] if config.prompt.per_class else None
    classes = sorted(set(labels)) if labels else [None]
    jobs = []
    for label in classes:
        indices = [i for i, y in enumerate(labels) if y == label] if labels else list(range(len(dataset)))
        for slot, seed in enumerate(config.prompt.seeds):
            key = (f"c{label}-" if label is not None else "") + f"s{seed}"
            jobs.append(Job(len(jobs), key, seed, label, indices, slot))
    return jobs


def _save_grid(path: Path, images: torch.Tensor) -> None:
    from torchvision.utils import save_image

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    save_image(images.detach().float().cpu(), str(tmp), nrow=min(8, len(images)))
    tmp.replace(path)


@dataclass
class RunContext:
    """What every prompt of a run shares: the config, models, losses, data, device, folder and log."""

    config: RunConfig
    comps: object            # diffusion Components
    sampler: object          # advprompts.sampler.Sampler
    losses: object           # advprompts.losses.LossSet
    dataset: object
    device: torch.device
    out: Path
    log: OptimLog
    on_step: Callable[[str, int, dict], None] | None = None

    @property
    def class_names(self) -> dict:
        return getattr(self.dataset, "class_names", {})


class PromptRun:
    """A job's prompt, optimiser and progress, restored from its checkpoint in ``out/checkpoints`` (this
    prompt's log rows after the checkpoint are dropped)."""

    def __init__(self, ctx: RunContext, job: Job):
        config, o, comps = ctx.config, ctx.config.optim, ctx.comps
        self.ctx = ctx  # its run's losses, data and log (runs batched together share only the rollout)
        self.config, self.job, self.out, self.log, self.on_step = config, job, ctx.out, ctx.log, ctx.on_step
        self.prompt = LearnablePrompt(comps.tokenizer, comps.text_encoder, num_tokens=config.prompt.num_tokens,
                                      prefix=f"{config.prompt.prefix}-{job.key}", init=config.prompt.init,
                                      seed=job.init_seed, template=config.prompt.template,
                                      class_name=ctx.class_names.get(job.label) if job.label is not None else None)
        self.prompt.to(ctx.device)
        opt_cls = torch.optim.AdamW if o.optimizer == "adamw" else torch.optim.Adam
        self.opt = opt_cls([self.prompt.embeddings], lr=o.lr, weight_decay=o.weight_decay)
        self.ckpt_dir = ctx.out / "checkpoints"
        self.ckpt_path = checkpoint_paths(self.ckpt_dir, job.key)[1]  # the JSON half commits a checkpoint
        self.start, self.stopped = load_checkpoint(self.ckpt_dir, job.key, self.prompt.embeddings, self.opt)
        self.step, self.values = self.start, {}
        self.log.truncate(job.key, self.start - 1)

    @property
    def done(self) -> bool:
        return self.stopped or self.step >= self.config.optim.steps

    def text(self, class_name: str) -> str:
        """The prompt's text for a source of class ``class_name`` (through ``prompt.class_words``)."""
        return self.prompt.text(self.config.prompt.class_words.get(class_name, class_name))

    def saves_grid(self) -> bool:
        """Whether the step about to run ends with a sample grid of its images (``log.sample_every``)."""
        every = self.config.log.sample_every
        return bool(every) and (self.step + 1) % every == 0

    def finish_step(self, values: dict[str, float], images: torch.Tensor, stop: bool) -> None:
        """After the step's gradients: the optimiser step, its log row, sample grid, early stop and
        checkpoint (the log first: a kill between the two resumes from the older checkpoint and drops the
        newer rows, where the other order would lose the rows of the steps before this checkpoint)."""
        self.opt.step()
        step, key, self.values, grid = self.step, self.job.key, values, self.saves_grid()
        self.log.add(key, step, values)
        if self.on_step is not None:
            self.on_step(key, step, values)
        done = self.step = step + 1
        if grid:
            _save_grid(self.out / "samples" / key / f"step_{done:06d}.png", images)
        self.stopped = stop
        if stop:
            logger.info("prompt %s: task loss reached its threshold at step %d; stopping", key, step)
        if done % self.config.log.checkpoint_every == 0 or done == self.config.optim.steps or stop:
            self.log.flush()
            save_checkpoint(self.ckpt_dir, key, done, self.prompt.embeddings, self.opt, stop)

    def result(self) -> PromptResult:
        """Save the prompt file and report the prompt's last logged step."""
        # A prompt that stopped before its last step counts one step more than it ran (the step it would
        # have started next), as the loop always has: the files of earlier runs keep their bytes.
        steps = min(self.step + 1, self.config.optim.steps) if self.stopped else self.step
        final = self.out / f"prompt_{self.job.key}.safetensors"
        self.prompt.save(final, steps=steps, method=self.config.method)
        values = self.values
        if not values:  # resumed a finished prompt: report its last logged step
            rows = [r for r in self.log.rows if r["prompt"] == self.job.key]
            values = {k: float(v) for k, v in rows[-1].items() if k != "prompt" and v != ""} if rows else {}  # blank: not logged
        return PromptResult(key=self.job.key, file=final, class_label=self.job.label, seed=self.job.seed,
                            losses=values, steps=steps, stopped_early=self.stopped)

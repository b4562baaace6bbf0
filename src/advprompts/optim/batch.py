"""Optimisation steps of one or several prompts together.

:func:`train_step` runs one step of each of its prompts through one batched rollout
(:meth:`~advprompts.sampler.Sampler.rollouts`): each prompt draws its own batch and noise from its own
generator, keyed by ``(optim.seed, prompt index, step, micro-batch)``, evaluates its own losses on its
own rows, and gets the gradient of its own loss only, so that it moves as it would alone (up to the
float rounding of a larger batch in the networks). With one prompt it is the one-at-a-time step. A prompt
whose active terms read no image (text guidance alone: GP, or a warm-up) skips the rollout, which its loss
does not depend on; it still renders one (without gradient) for a sample grid.

:func:`train_all` trains the prompts in order, up to ``prompt_batch`` at a time: a prompt that stops
(early, or at its last step) leaves the batch and the next one joins. With ``prompt_batch > 1`` the
batch is capped by free memory: the first prompt runs alone until one of its steps has gone through the
sampler, that step's peak memory is measured, and as many prompts are batched as fit in 80% of the memory
left.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

from advprompts.errors import NaNLossError
from advprompts.losses import LossInputs
from advprompts.optim.job import PromptRun, RunContext

logger = logging.getLogger(__name__)


def step_generator(*keys: int) -> torch.Generator:
    """A CPU generator seeded from integer keys (order-sensitive, platform-independent)."""
    import numpy as np

    return torch.Generator().manual_seed(int(np.random.SeedSequence(list(keys)).generate_state(1)[0]))


def draw_call(ctx: RunContext, indices: list[int], gen: torch.Generator, text_for) -> tuple:
    """A batch of the sources ``indices`` drawn with ``gen`` and the rollout of ``text_for(class name)`` on
    it: ``(sampler call, batch, class names)``."""
    from advprompts.data.folder import collate
    from advprompts.sampler_inputs import sampler_kwargs

    pick = torch.randperm(len(indices), generator=gen)[: ctx.config.optim.batch_size]
    batch = collate([ctx.dataset[indices[int(i)]] for i in pick])
    names = [ctx.class_names.get(y, str(y)) for y in batch["label"].tolist()]
    call = dict(prompt=[text_for(n) for n in names], generator=gen, **sampler_kwargs(ctx.config, batch, ctx.device))
    return call, batch, names


def loss_inputs(ctx: RunContext, rollout, batch: dict, names: list[str], gen, slot: int) -> LossInputs:
    """A rollout of ``batch`` (None: skipped) as the losses see it."""
    return LossInputs(images=None if rollout is None else rollout.images, labels=batch["label"].to(ctx.device),
                      dense=None if batch["dense"] is None else batch["dense"].to(ctx.device),
                      class_names=names, generator=gen, prompt_slot=slot, sources=batch["image"].to(ctx.device))


def backward_terms(weighted: list[dict[str, torch.Tensor]], params: list[torch.Tensor], grad_accum: int,
                   retain: bool = False) -> list[dict[str, float]]:
    """Accumulate each prompt's terms' gradients into its ``params[k].grad`` one term at a time and return
    each prompt's weighted-term gradient norms (``grad_<label>``): which term moves the prompt, on one scale.
    One backward pass per term for all the prompts together: prompt k's embeddings reach no other prompt's
    loss (batch rows never mix), so the gradient of the sum is each prompt's own. A pass per prompt would
    run the whole batch's backward once for each of them. ``retain``: keep the graph after the last term."""
    norms: list[dict[str, float]] = [{} for _ in weighted]
    labels = list(dict.fromkeys(label for terms in weighted for label in terms))
    for i, label in enumerate(labels):
        ks = [k for k, terms in enumerate(weighted) if label in terms]
        total = sum(weighted[k][label] for k in ks) / grad_accum
        grads = torch.autograd.grad(total, [params[k] for k in ks], retain_graph=retain or i < len(labels) - 1,
                                    allow_unused=True)
        for k, grad in zip(ks, grads):
            grad = torch.zeros_like(params[k]) if grad is None else grad
            norms[k][f"grad_{label}"] = float(grad.norm()) * grad_accum
            params[k].grad = grad if params[k].grad is None else params[k].grad + grad
    return norms


def _rollouts(ctx: RunContext, runs: list[PromptRun], calls: list[dict]) -> tuple[list, bool]:
    """Each run's rollout of its call: one batched differentiable rollout for the runs whose active terms read
    the images; a rollout without gradient for the others that save a sample grid after this step; None for the
    rest (text guidance alone moves the prompt without the sampler). Also whether a rollout had gradient."""
    reads = [run.ctx.losses.reads_images(run.step) for run in runs]
    shows = [not r and run.saves_grid() for run, r in zip(runs, reads)]
    out: list = [None] * len(runs)
    for grad, wanted in ((True, reads), (False, shows)):
        ks = [k for k, want in enumerate(wanted) if want]
        if ks:
            for k, rollout in zip(ks, ctx.sampler.rollouts([calls[k] for k in ks], grad=grad)):
                out[k] = rollout
    return out, any(reads)


def train_step(ctx: RunContext, runs: list[PromptRun]) -> bool:
    """One optimisation step of every prompt in ``runs`` (each at its own step), in one batched rollout
    (``ctx.sampler``'s); each prompt's batch, losses and log are its own run's (``run.ctx``). Returns whether
    the step went through the sampler (False: its terms read no image, so it cost next to nothing)."""
    o, every = ctx.config.optim, ctx.config.log.grad_norm_every
    t0 = time.perf_counter()
    sampled = False
    for run in runs:
        run.opt.zero_grad(set_to_none=True)
    totals: list[dict[str, float]] = [{} for _ in runs]
    stops, images = [False] * len(runs), [None] * len(runs)
    for micro in range(o.grad_accum):
        # Every random draw of a prompt's step comes from generators keyed by (seed, prompt, step).
        gens = [step_generator(o.seed, run.job.index, run.step, micro) for run in runs]
        drawn = [draw_call(run.ctx, run.job.indices, gen, run.text) for run, gen in zip(runs, gens)]
        rollouts, through = _rollouts(ctx, runs, [call for call, _, _ in drawn])
        sampled |= through
        rest, logged = None, {}  # the prompts whose gradients go back in one pass; those logged per term
        for k, (run, gen, (_, batch, names), rollout) in enumerate(zip(runs, gens, drawn, rollouts)):
            inputs = loss_inputs(run.ctx, rollout, batch, names, gen, run.job.slot)
            inputs.prompt, inputs.step = run.prompt, run.step
            total, parts, weighted = run.ctx.losses.evaluate(inputs)
            if not torch.isfinite(total):
                run.ctx.log.flush()
                raise NaNLossError(f"loss of prompt {run.job.key} is {float(total.detach())} at step {run.step} "
                                   f"(terms: {parts}); last good checkpoint: "
                                   f"{run.ckpt_path if run.ckpt_path.is_file() else 'none'}; "
                                   "lower optim.lr or check the loss weights")
            if every and run.step % every == 0:
                logged[k] = weighted
            else:
                rest = total / o.grad_accum if rest is None else rest + total / o.grad_accum
            for name, v in {**parts, "total": float(total.detach())}.items():
                totals[k][name] = totals[k].get(name, 0.0) + v / o.grad_accum
            stops[k], images[k] = run.ctx.losses.should_stop(), inputs.images
        if logged:
            norms = backward_terms(list(logged.values()), [runs[k].prompt.embeddings for k in logged], o.grad_accum,
                                   retain=rest is not None)
            for k, values in zip(logged, norms):
                for name, v in values.items():
                    totals[k][name] = totals[k].get(name, 0.0) + v / o.grad_accum
        if rest is not None:
            rest.backward()
    seconds = round((time.perf_counter() - t0) / len(runs), 4)  # a shared step's time, split evenly
    for run, values, stop, imgs in zip(runs, totals, stops, images):
        run.finish_step({**values, "seconds": seconds}, imgs, stop)
    return sampled


def train_all(ctx: RunContext, runs: list[PromptRun], prompt_batch: int = 1) -> None:
    """Train ``runs`` to their end, up to ``prompt_batch`` at a time (capped by free memory)."""
    from tqdm.auto import tqdm

    if not runs:  # a shard with no prompt of its own
        return
    queue = [run for run in runs if not run.done]
    bar = tqdm(total=len(runs) * ctx.config.optim.steps, initial=sum(r.step for r in runs),
               desc=f"prompt {runs[0].job.key}" if len(runs) == 1 else f"{len(runs)} prompts",
               disable=not ctx.config.log.progress)
    active: list[PromptRun] = []
    size = 1 if prompt_batch <= 1 else None  # None: not measured yet
    while queue or active:
        if size is None:  # the first prompt alone until a step through the sampler has measured its memory
            active = active or [queue.pop(0)]
            with PeakMemory(ctx.device) as peak:
                sampled = train_step(ctx, active)
            if sampled or active[0].done:  # else text guidance alone (a warm-up): no rollout, nothing measured
                size = batch_size(prompt_batch, peak.bytes, ctx.device)
                logger.info("batching up to %d prompts (asked for %d; one prompt's step peaked at %d MB)", size,
                            prompt_batch, peak.bytes // 2**20)
        else:
            while queue and len(active) < size:
                active.append(queue.pop(0))
            train_step(ctx, active)
        bar.update(len(active))
        bar.set_postfix(loss=f"{active[-1].values['total']:.4f}")
        active = [run for run in active if not run.done]
    bar.close()


def free_memory(device: torch.device) -> int:
    """Bytes free for tensors on ``device``: the CUDA allocator's view, or the host's available memory."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    import os

    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def batch_size(requested: int, per_prompt: int, device: torch.device, share: float = 0.8) -> int:
    """How many prompts to batch: ``requested``, or fewer when ``share`` of the free memory holds fewer
    steps of ``per_prompt`` bytes each (at least one)."""
    if per_prompt <= 0:
        return max(1, requested)
    return max(1, min(requested, int(share * free_memory(device) // per_prompt)))


class PeakMemory:
    """The peak memory a block adds above what was in use before it: CUDA's allocator peak, or on Linux the
    process's resident peak (VmHWM, reset through /proc/self/clear_refs); 0 where neither is available."""

    def __init__(self, device: torch.device):
        self.device, self.bytes = device, 0

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
        else:
            self.base = _status("VmRSS") if _clear_refs() else None
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            self.bytes = torch.cuda.max_memory_allocated(self.device) - self.base
        elif self.base is not None:
            self.bytes = max(0, _status("VmHWM") - self.base)
        return False


def _clear_refs() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM := current RSS
        return _status("VmRSS") > 0
    except OSError:
        return False


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    return 0

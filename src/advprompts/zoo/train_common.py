"""A small resumable, deterministic training loop shared by the zoo's trainers."""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Callable

import torch
from tqdm.auto import tqdm

from advprompts.checkpoints import load_torch, save_torch

logger = logging.getLogger(__name__)


def cosine_lr(step: int, total: int, warmup: int, floor: float = 0.1) -> float:
    if step < warmup:
        return (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t))


class EMA:
    """Exponential moving average of parameters with warm-up (decay grows with the step)."""

    def __init__(self, model: torch.nn.Module, decay: float = 0.999):
        self.decay = decay
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: torch.nn.Module, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))
        for k, v in model.state_dict().items():
            if v.dtype.is_floating_point:
                self.shadow[k].mul_(d).add_(v.detach(), alpha=1 - d)
            else:
                self.shadow[k].copy_(v)

    def state_dict(self):
        return self.shadow

    def load_state_dict(self, sd):
        self.shadow = {k: v.clone() for k, v in sd.items()}


def train_loop(name: str, model: torch.nn.Module, params, step_fn: Callable[[int], dict],
               steps: int, lr: float, ckpt: Path, warmup: int = 100, weight_decay: float = 0.0,
               ckpt_every: int = 200, ema: EMA | None = None, log_file: Path | None = None,
               bf16: bool = False) -> None:
    """Run `steps` optimisation steps of `step_fn(step) -> {"loss": tensor, ...}`, resumable.

    `step_fn` must draw its batch from `step` alone, so a resumed run equals an uninterrupted one.
    With `bf16`, `step_fn` runs under bf16 autocast on the model's device (weights and optimiser stay float32).
    """
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    device = next(model.parameters()).device
    start, elapsed = 0, 0.0
    if ckpt.exists():
        state = load_torch(ckpt, device)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        if ema is not None:
            ema.load_state_dict(state["ema"])
        start, elapsed = state["step"], state.get("elapsed", 0.0)
        logger.info("%s: resumed at step %d", name, start)
    if start >= steps:
        return
    model.train()
    bar = tqdm(range(start, steps), desc=name, initial=start, total=steps, mininterval=10)
    running: dict[str, float] = {}
    t0 = time.time() - elapsed  # the log's seconds count the runs before a resume too
    for step in bar:
        for g in opt.param_groups:
            g["lr"] = lr * cosine_lr(step, steps, warmup)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            out = step_fn(step)
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if ema is not None:
            ema.update(model, step)
        for k, v in out.items():
            v = float(v.detach())
            running[k] = 0.98 * running.get(k, v) + 0.02 * v
        if (step + 1) % 50 == 0:
            bar.set_postfix({k: f"{v:.4f}" for k, v in running.items()})
            if log_file is not None:
                with open(log_file, "a") as f:
                    f.write(f"{name},{step + 1},{time.time() - t0:.1f}," +
                            ",".join(f"{k}={v:.5f}" for k, v in running.items()) + "\n")
        if (step + 1) % ckpt_every == 0 or step + 1 == steps:
            state = {"model": model.state_dict(), "opt": opt.state_dict(), "step": step + 1,
                     "elapsed": time.time() - t0}
            if ema is not None:
                state["ema"] = ema.state_dict()
            save_torch(ckpt, state)

"""Time of one optimisation step, through :func:`advprompts.optim.loop.optimize` itself.

A step's wall time is the interval between two consecutive ``on_step`` callbacks of a real run
(batch drawing, prompt encoding, the K-step rollout, losses, backward, optimiser step, logging).
It is compared with the sum of its networks' isolated forward + backward times, measured on
inputs of the same shapes: what is left is the engine's own overhead.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np
import torch

from advprompts.perf import models
from advprompts.perf.suites import Suite


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_optimize(config, comps, task, data, device, warmup: int, profiler=None) -> list[float]:
    """Wall seconds of steps ``warmup ..`` of ``optimize(config)`` (``config.optim.steps`` in all)."""
    from advprompts.optim.loop import optimize

    stamps: list[float] = []

    def on_step(key, step, values):
        sync(device)
        stamps.append(time.perf_counter())
        if profiler is not None:
            profiler.step()

    with models.workdir() as tmp:
        optimize(config, Path(tmp) / "run", components=comps, task_model=task, dataset=data, on_step=on_step)
    return [b - a for a, b in zip(stamps, stamps[1:])][max(warmup - 1, 0):]


def _fwd_bwd(fn, repeats: int, device: torch.device, backward: bool = True) -> tuple[float, float]:
    """Median forward and backward seconds of ``fn()`` over ``repeats`` runs after one warm-up."""
    fwd, bwd = [], []
    for r in range(repeats + 1):
        sync(device)
        t0 = time.perf_counter()
        out = fn()
        sync(device)
        t1 = time.perf_counter()
        if backward:
            out.backward(torch.ones_like(out))
            sync(device)
        if r:
            fwd.append(t1 - t0)
            bwd.append(time.perf_counter() - t1)
    return statistics.median(fwd), statistics.median(bwd)


def component_times(config, comps, clip_spec: str | None, task, data, device, repeats: int) -> dict[str, dict]:
    """Isolated forward/backward seconds of every network call in one step of ``config``."""
    from advprompts.data import collate
    from advprompts.models.loading import load_clip
    from advprompts.prompts import LearnablePrompt
    from advprompts.text_encoding import encode_text

    s, b = config.sampler, config.optim.batch_size
    rows = 2 * b if s.guidance_scale > 1 else b
    batch = collate([data[i] for i in range(b)])
    names = [data.class_names[y] for y in batch["label"].tolist()]
    prompt = LearnablePrompt(comps.tokenizer, comps.text_encoder, num_tokens=config.prompt.num_tokens,
                             prefix="bench-iso", template=config.prompt.template).to(device)
    texts = [prompt.text(n) for n in names]
    tok, te = comps.tokenizer, comps.text_encoder
    out: dict[str, dict] = {}

    def add(name, fb, calls=1):
        out[name] = {"forward_s": fb[0] * calls, "backward_s": fb[1] * calls, "calls": calls}

    # Text encoder: the prompts (with grad), the empty CFG prompts (no grad), text guidance.
    f, bw = _fwd_bwd(lambda: encode_text(tok, te, texts)[0], repeats, device)
    with torch.no_grad():
        f += _fwd_bwd(lambda: encode_text(tok, te, [""] * b)[0], repeats, device, backward=False)[0]
    calls = 2
    if clip_spec is not None:
        guided = [prompt.text(n) for n in sorted(set(names))]
        gf, gb = _fwd_bwd(lambda: encode_text(tok, te, guided)[0], repeats, device)
        f, bw, calls = f + gf, bw + gb, 3
    add("text_encoder", (f, bw), calls)
    # K UNet calls on the CFG batch.
    h = s.image_size // comps.vae_scale_factor
    latents = torch.randn(rows, comps.unet.config.in_channels, h, h, device=device, requires_grad=True)
    with torch.no_grad():
        embeds = encode_text(tok, te, texts * (rows // b))[0]
    embeds.requires_grad_(True)
    t = torch.tensor(comps.scheduler.config.num_train_timesteps // 2, device=device)
    add("unet", _fwd_bwd(lambda: comps.unet(latents, t, encoder_hidden_states=embeds, return_dict=False)[0],
                         repeats, device), s.num_steps)
    # VAE: decode with grad; the inpainting source is encoded without.
    z = torch.randn(b, comps.vae.config.latent_channels, h, h, device=device, requires_grad=True)
    sf = comps.vae.config.scaling_factor
    add("vae_decode", _fwd_bwd(lambda: (comps.vae.decode(z / sf).sample / 2 + 0.5).clamp(0, 1), repeats, device))
    images = batch["image"].to(device)
    with torch.no_grad():
        add("vae_encode", _fwd_bwd(lambda: comps.vae.encode(images * 2 - 1).latent_dist.mean, repeats, device,
                                   backward=False))
    x = images.clone().requires_grad_(True)
    if clip_spec is not None:
        clip = load_clip(clip_spec, device=device)
        add("clip", _fwd_bwd(lambda: clip(x), repeats, device))
    add("task_model", _fwd_bwd(lambda: task(x), repeats, device))
    return out


def _kwargs(suite: Suite, device, clip_spec, **over) -> dict:
    kw = dict(model=suite.model, device=device, image_size=suite.image_size, batch_size=suite.batch_size,
              num_steps=suite.num_steps, guidance_scale=suite.guidance_scale, num_tokens=suite.num_tokens,
              clip=clip_spec, checkpointing=True)
    kw.update(over)
    return kw


def step_overhead(suite: Suite, comps, clip_spec, task, device) -> dict:
    """``step_overhead_ratio`` (GAP step without checkpointing) and the same with checkpointing,
    whose denominator then includes the K recomputed UNet forwards."""
    data = models.dataset(suite.image_size)
    steps = suite.warmup_steps + suite.timed_steps
    plain = models.step_config(**_kwargs(suite, device, clip_spec, checkpointing=False, steps=steps))
    step_s = statistics.median(time_optimize(plain, comps, task, data, device, suite.warmup_steps))
    ckpt = models.step_config(**_kwargs(suite, device, clip_spec, steps=steps))
    ckpt_s = statistics.median(time_optimize(ckpt, comps, task, data, device, suite.warmup_steps))
    parts = component_times(plain, comps, clip_spec, task, data, device, suite.repeats)
    total = sum(p["forward_s"] + p["backward_s"] for p in parts.values())
    recompute = parts["unet"]["forward_s"]
    return {"step_overhead_ratio": step_s / total,
            "step": {"method": "gap" if clip_spec else "ap", "batch_size": suite.batch_size,
                     "num_steps": suite.num_steps, "image_size": suite.image_size, "step_s": step_s, "components_sum_s": total,
                     "components": parts, "checkpointed_step_s": ckpt_s,
                     "checkpointed_overhead_ratio": ckpt_s / (total + recompute)}}


def steps_scaling(suite: Suite, comps, clip_spec, task, device) -> dict:
    """Step time at K = 1, 2, 5, 10 (checkpointing on, as by default) and its least-squares line."""
    data = models.dataset(suite.image_size)
    seconds = []
    for k in suite.scaling_steps:
        config = models.step_config(**_kwargs(suite, device, clip_spec, num_steps=k, steps=1 + suite.scaling_timed))
        seconds.append(statistics.median(time_optimize(config, comps, task, data, device, 1)))
    ks = np.array(suite.scaling_steps, dtype=float)
    slope, intercept = np.polyfit(ks, seconds, 1)
    fit = slope * ks + intercept
    ss_tot = float(((np.array(seconds) - np.mean(seconds)) ** 2).sum())
    r2 = 1 - float(((np.array(seconds) - fit) ** 2).sum()) / ss_tot if ss_tot > 0 else 1.0
    return {"K": list(suite.scaling_steps), "seconds": seconds, "slope_s_per_step": float(slope),
            "intercept_s": float(intercept), "r2": r2}


def size_sweep(suite: Suite, comps, clip_spec, task, device) -> dict:
    """Step time vs optimisation batch and vs resolution (K = suite.num_steps, checkpointing on)."""
    out: dict[str, dict] = {"batch_size": {}, "image_size": {}}
    for key, values in (("batch_size", suite.sweep_batch), ("image_size", suite.sweep_size)):
        for v in values:
            size = v if key == "image_size" else suite.image_size
            config = models.step_config(**_kwargs(suite, device, clip_spec, steps=1 + suite.scaling_timed,
                                                  **{key: v}))
            times = time_optimize(config, comps, task, models.dataset(size), device, 1)
            out[key][str(v)] = statistics.median(times)
    return out


def profile_step(suite: Suite, comps, clip_spec, task, device, rows: int = 15) -> dict:
    """torch.profiler tables of one GAP step (after one warm-up step): by self time and by memory."""
    from torch.profiler import ProfilerActivity, profile, schedule

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    config = models.step_config(**_kwargs(suite, device, clip_spec, steps=2))
    traces = []  # key_averages of the one recorded step, taken when its trace is ready
    with profile(activities=acts, schedule=schedule(wait=0, warmup=1, active=1, repeat=1), profile_memory=True,
                 on_trace_ready=lambda p: traces.append(p.key_averages())) as prof:
        time_optimize(config, comps, task, models.dataset(suite.image_size), device, 1, profiler=prof)
    events = traces[0]
    key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    total = sum(e.self_cpu_time_total for e in events) or 1.0
    top = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:rows]
    return {"by_time": events.table(sort_by=key, row_limit=rows),
            "by_memory": events.table(sort_by="self_cpu_memory_usage", row_limit=10),
            "top_ops": [{"op": e.key, "self_ms": e.self_cpu_time_total / 1e3, "share": e.self_cpu_time_total / total,
                         "calls": e.count} for e in top]}

"""``prompt_batch_speedup``: the same prompts optimised one at a time and together in one batched rollout.

Both runs go through :func:`advprompts.optim.loop.optimize` itself (AP, the suite's model, ``batch_prompts``
prompts of ``batch_prompt_size`` images each, ``batch_steps`` steps), on components already loaded; the
speed-up is the one-at-a-time wall time over the batched one, the batched run's memory probe (its first
step run alone) included. The prompts the two runs learn are compared too (``max_embedding_diff``).
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from advprompts.perf import models
from advprompts.perf.step import sync
from advprompts.perf.suites import Suite


def prompt_batch_speedup(suite: Suite, comps, task, device: torch.device) -> dict:
    """Seconds per prompt-step one at a time and batched, their ratio, and how far the prompts differ."""
    from advprompts.optim.loop import optimize

    config = models.step_config(model=suite.model, device=device, image_size=suite.image_size,
                                batch_size=suite.batch_prompt_size, num_steps=suite.num_steps,
                                guidance_scale=suite.guidance_scale, num_tokens=suite.num_tokens,
                                steps=suite.batch_steps, checkpointing=True, clip=None)
    n = suite.batch_prompts
    config = config.model_copy(update={"prompt": config.prompt.model_copy(update={"seeds": list(range(n))})})
    data = models.dataset(suite.image_size, n=max(16, suite.batch_prompt_size))
    seconds, files = {}, {}
    with models.workdir() as tmp:
        for name, batch in (("one_at_a_time", None), ("batched", n)):
            sync(device)
            t0 = time.perf_counter()
            res = optimize(config, Path(tmp) / name, components=comps, task_model=task, dataset=data,
                           prompt_batch=batch)
            sync(device)
            seconds[name] = time.perf_counter() - t0
            files[name] = [load_file(p) for p in res.prompt_files]
    diff = max(float((a[k] - b[k]).abs().max()) for a, b in zip(*files.values()) for k in a)
    steps = n * suite.batch_steps
    return {"prompt_batch_speedup": seconds["one_at_a_time"] / seconds["batched"],
            "prompt_batch": {"prompts": n, "batch_size": suite.batch_prompt_size, "steps": suite.batch_steps,
                             "image_size": suite.image_size, "num_steps": suite.num_steps,
                             "one_at_a_time_s_per_prompt_step": seconds["one_at_a_time"] / steps,
                             "batched_s_per_prompt_step": seconds["batched"] / steps,
                             "max_embedding_diff": diff}}

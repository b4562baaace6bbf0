"""``run_benchmark``: every measurement of a suite in one run, its targets, a table and JSON."""

from __future__ import annotations

import json
import logging
import math
import platform
import time
from pathlib import Path
from typing import Callable

import torch

from advprompts.perf import batching, generation, memory, models, step, training
from advprompts.perf.suites import get_suite
from advprompts.errors import ConfigError
from advprompts.hardware import cpu_name

logger = logging.getLogger(__name__)

#: key -> (comparison, target); prompt batching is held to 1.2 on 2 CPU cores (the rollout's own batching
#: ceiling there is about 1.26) and to 3 on a GPU, where small rollouts are launch-bound.
TARGETS = {"step_overhead_ratio": ("<=", 1.10), "generate_speedup_vs_diffusers": (">=", 1.3),
           "checkpoint_memory_ratio": ("<=", 0.4), "prompt_batch_speedup": (">=", 1.2)}
GPU_TARGETS = {**TARGETS, "prompt_batch_speedup": (">=", 3.0)}


def targets_for(device_type: str) -> dict[str, tuple[str, float]]:
    return GPU_TARGETS if device_type == "cuda" else TARGETS


def _met(value: float | None, op: str, target: float) -> bool:
    return value is not None and bool(value <= target if op == "<=" else value >= target)


def _clean(value):
    """JSON-safe: NaN / inf become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def run_benchmark(suite: str = "full", json_path: str | Path | None = None, *, threads: int | None = None,
                  device: str = "auto", progress: Callable[[str], None] | None = None) -> dict:
    """Measure the step overhead, generation speed-up, checkpointing memory and step scaling.

    Args:
        suite: ``quick`` (tiny models, seconds) or ``full`` (embedded model + SD 1.5 architecture).
        json_path: where to write the results as JSON.
        threads: torch intra-op threads (default: torch's own choice).
        device: ``auto`` (CUDA when available), ``cpu`` or ``cuda``.
        progress: called with a line before each section.

    Returns:
        The results (the same dict as the JSON).
    """
    from advprompts.device import resolve_device

    s = get_suite(suite)
    say = progress or logger.info
    dev = resolve_device(device)
    if threads is not None and threads < 1:
        raise ConfigError(f"--threads {threads} is invalid; expected an integer >= 1")
    if threads:
        torch.set_num_threads(threads)
    t0 = time.perf_counter()
    res: dict = {"suite": s.name, "device": str(dev), "threads": torch.get_num_threads(), "torch": torch.__version__,
                 "python": platform.python_version(), "cpu": cpu_name(), "complete": False}

    def save() -> None:  # after every section: a run cut short (a time limit, a crash) keeps what it measured
        if json_path is not None:
            from advprompts.fsio import atomic_write_text

            Path(json_path).parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(json_path, json.dumps(_clean({**res, "wall_s": time.perf_counter() - t0}), indent=2))

    def section(title: str, fn: Callable[[], dict], key: str | None = None) -> None:
        say(title)
        out = fn()
        res.update({key: out} if key else out)
        save()

    with models.workdir() as tmp:
        comps, clip_spec, note = models.load_models(s.model, dev, Path(tmp))
        res["model"] = note
        task = models.task_model(dev)
        args = (s, comps, clip_spec, task, dev)
        section("[1/9] step overhead: a GAP step against its networks' isolated forward + backward",
                lambda: step.step_overhead(*args))
        section(f"[2/9] step time at K = {', '.join(map(str, s.scaling_steps))}",
                lambda: step.steps_scaling(*args), "steps_scaling")
        section("[3/9] step time vs batch and resolution", lambda: step.size_sweep(*args), "size_scaling")
        section("[4/9] torch.profiler of one step", lambda: step.profile_step(*args), "profile")
        section(f"[5/9] generation vs diffusers ({s.gen_images} images, {s.gen_steps} steps)",
                lambda: generation.generation_speedup(s, comps, dev))
        section(f"[6/9] {s.batch_prompts} prompts batched vs one at a time ({s.batch_steps} steps)",
                lambda: batching.prompt_batch_speedup(s, comps, task, dev))
    section(f"[7/9] task-model fine-tuning: fp32 against bf16 + channels-last ({s.train_images} images)",
            lambda: training.finetune_fast_speedup(s, dev))
    section(f"[8/9] checkpointing memory ({s.memory_model} architecture, {s.memory_size} px, K={s.memory_steps})",
            lambda: memory.checkpoint_memory(s, dev))
    res["gpu_sd15"] = None  # no GPU (or the quick suite): not measured
    if dev.type == "cuda" and s.name == "full":
        section(f"[9/9] SD 1.5 AP step on the GPU ({s.gpu_size} px, batch {', '.join(map(str, s.gpu_batches))})",
                lambda: memory.gpu_sd15(s, dev), "gpu_sd15")
    res["targets"] = {k: {"target": f"{op} {v}", "value": res[k], "met": _met(res[k], op, v)}
                      for k, (op, v) in targets_for(dev.type).items()}
    res["complete"] = True
    res["wall_s"] = time.perf_counter() - t0
    save()
    return _clean(res)


def table_rows(res: dict) -> list[tuple[str, str, str, str]]:
    """(measure, value, target, note) rows for the summary table."""
    fmt = lambda v, spec=".3f": "n/a" if v is None else format(v, spec)  # noqa: E731
    st, gen, mem, sc = res["step"], res["generate"], res["checkpoint_memory"], res["steps_scaling"]
    t = res["targets"]
    mark = lambda k: ("met " if t[k]["met"] else "MISSED ") + t[k]["target"]  # noqa: E731
    rows = [
        ("step_overhead_ratio", fmt(res["step_overhead_ratio"]), mark("step_overhead_ratio"),
         f"step {fmt(st['step_s'])} s vs networks {fmt(st['components_sum_s'])} s; checkpointed "
         f"{fmt(st['checkpointed_overhead_ratio'])}"),
        ("generate_speedup_vs_diffusers", fmt(res["generate_speedup_vs_diffusers"]),
         mark("generate_speedup_vs_diffusers"),
         f"best: {gen['best_variant']}; exact default path {fmt(gen['exact_speedup'])}; "
         f"diffusers {fmt(gen['diffusers_images_per_s'], '.2f')} img/s"),
        ("checkpoint_memory_ratio", fmt(res["checkpoint_memory_ratio"]), mark("checkpoint_memory_ratio"),
         f"{res['checkpoint_memory_mode']}; per UNet call {fmt(mem['step_ratio'])}, blocks {fmt(mem['blocks_ratio'])}"
         f" ({fmt(mem['without_checkpointing']['step_mb'], '.0f')} MB without); whole process "
         f"{fmt(mem['total_peak_ratio'])}"),
        ("steps_scaling", f"{fmt(sc['slope_s_per_step'], '.4f')} s/K + {fmt(sc['intercept_s'], '.4f')} s", "linear",
         "K=" + ", ".join(f"{k}: {fmt(v, '.3f')}" for k, v in zip(sc["K"], sc["seconds"])) + f" s; r2 {fmt(sc['r2'])}"),
        ("prompt_batch_speedup", fmt(res["prompt_batch_speedup"]), mark("prompt_batch_speedup"),
         f"{res['prompt_batch']['prompts']} prompts x {res['prompt_batch']['batch_size']} images: "
         f"{fmt(res['prompt_batch']['batched_s_per_prompt_step'])} vs "
         f"{fmt(res['prompt_batch']['one_at_a_time_s_per_prompt_step'])} s per prompt-step"),
        ("finetune_fast_speedup", fmt(res["finetune_fast_speedup"]), "(no target)",
         f"small CNN, {res['finetune_fast']['images']} images: {fmt(res['finetune_fast']['fast_s_per_step'])} vs "
         f"{fmt(res['finetune_fast']['fp32_s_per_step'])} s per step; equal predictions "
         f"{res['finetune_fast']['prediction_agreement']:.1%}"),
    ]
    for name, v in gen["variants"].items():
        rows.append((f"  generate[{name}]", fmt(v.get("speedup")), "",
                     v.get("error") or f"{fmt(v['images_per_s'], '.2f')} img/s"))
    if res.get("gpu_sd15"):
        g = res["gpu_sd15"]
        for run in g["runs"]:
            mode = "blocks" if run.get("checkpointing") == "blocks" else "per UNet call"
            rows.append((f"gpu_sd15[batch {run['batch_size']}, {mode}]", f"{fmt(run['seconds_per_step'])} s/step",
                         ("" if run["fits_20gb"] else "does not ") + "fit 20 GB",
                         f"peak {fmt(run['peak_gb'], '.1f')} GB at {g['image_size']} px, K={g['num_steps']}, bf16"))
    return rows


def format_table(res: dict) -> str:
    """The summary as plain text."""
    rows = [("measure", "value", "target", "details"), *table_rows(res)]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = [f"{r[0]:<{widths[0]}}  {r[1]:>{widths[1]}}  {r[2]:<{widths[2]}}  {r[3]}" for r in rows]
    head = f"advprompts benchmark ({res['suite']}): {res['model']}; {res['device']}, {res['threads']} threads, " \
           f"{res['wall_s']:.0f} s"
    return "\n".join([head, *lines])

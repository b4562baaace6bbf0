"""Peak memory of one optimisation step, with and without gradient checkpointing.

CPU: every measurement runs in a fresh process (``python -m advprompts.perf.memory SPEC``). It
builds the model, frees what construction left behind (``gc``, ``malloc_trim``), resets the
kernel's peak-RSS counter (``5`` written to ``/proc/self/clear_refs`` sets VmHWM to the current
RSS), runs ``optimize`` for one step and reads VmHWM. The step's memory is VmHWM minus the RSS
before the step: activations kept for backward, gradients and temporaries; the resident weights are
reported separately. Where clear_refs is unavailable (not Linux) the fresh process's ``ru_maxrss``
is used instead. GPU: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``.
"""

from __future__ import annotations

import ctypes
import gc
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

from advprompts.perf import models
from advprompts.perf.step import sync, time_optimize
from advprompts.perf.suites import Suite

MB = 2**20


def _rss() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _peak(reset: bool) -> int:
    if reset:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def _trim() -> None:
    gc.collect()
    try:  # hand freed heap pages back to the OS so they do not hide the step's own growth
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _components(model: str, device: torch.device):
    if model == "sd15":
        return models.sd15_components(device)
    from advprompts.models.loading import load_components

    return load_components(model, device=device)


def measure(spec: dict) -> dict:
    """Run one AP optimisation step as ``spec`` says and return its peak memory (MB) and time (s)."""
    from advprompts.optim.loop import optimize

    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    device = torch.device(spec["device"])
    comps = _components(spec["model"], device)
    if spec["checkpointing"] == "blocks":  # inside each checkpointed UNet call too, block by block
        from advprompts.sampler import checkpoint_blocks

        checkpoint_blocks(comps)
    weights = sum(p.numel() * p.element_size() for n in (comps.unet, comps.vae, comps.text_encoder)
                  for p in n.parameters())
    config = models.step_config(model=spec["model"], device=device, image_size=spec["image_size"],
                                batch_size=spec["batch_size"], num_steps=spec["num_steps"], guidance_scale=7.0,
                                num_tokens=5, steps=1, checkpointing=bool(spec["checkpointing"]), clip=None,
                                autocast=spec.get("autocast", "none"))
    task, data = models.task_model(device), models.dataset(spec["image_size"], n=max(2, spec["batch_size"]))
    with models.workdir() as tmp:
        _trim()
        if device.type == "cuda":
            sync(device)
            torch.cuda.reset_peak_memory_stats(device)
            base, method = torch.cuda.memory_allocated(device), "torch.cuda.max_memory_allocated"
        else:
            base, reset = _rss(), _reset_peak()
            method = "VmHWM after clear_refs" if reset else "ru_maxrss of a fresh process"
        t0 = time.perf_counter()
        optimize(config, Path(tmp) / "run", components=comps, task_model=task, dataset=data)
        sync(device)
        seconds = time.perf_counter() - t0
        peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else _peak(reset)
    return {"checkpointing": spec["checkpointing"], "weights_mb": weights / MB, "baseline_mb": base / MB,
            "peak_mb": peak / MB, "step_mb": (peak - base) / MB, "seconds": seconds, "method": method}


def _measure_isolated(spec: dict) -> dict:
    proc = subprocess.run([sys.executable, "-m", "advprompts.perf.memory", json.dumps(spec)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"memory measurement ({spec}) failed: {last}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def checkpoint_memory(suite: Suite, device: torch.device, modes: tuple = (True, "blocks", False)) -> dict:
    """``checkpoint_memory_ratio``: the step's memory with checkpointing over without (and the same for
    the whole process's peak, weights included); checkpointing each UNet call (``True``, the presets'
    setting) and, with ``"blocks"``, inside each call too (``Sampler(..., gradient_checkpointing="blocks")``).
    The key holds the lower of the two; ``checkpoint_memory_mode`` says which."""
    spec = {"model": suite.memory_model, "image_size": suite.memory_size, "num_steps": suite.memory_steps,
            "batch_size": 1, "device": str(device), "threads": torch.get_num_threads()}
    isolate = suite.memory_subprocess and device.type == "cpu"
    runs = {c: (_measure_isolated if isolate else measure)({**spec, "checkpointing": c}) for c in modes}
    without = runs[False]
    ratios = {c: r["step_mb"] / without["step_mb"] if without["step_mb"] > 0 else float("nan")
              for c, r in runs.items() if c is not False}
    best = min(ratios, key=lambda c: ratios[c])
    return {"checkpoint_memory_ratio": ratios[best], "checkpoint_memory_mode": "blocks" if best == "blocks" else "step",
            "checkpoint_memory": {"model": suite.memory_model, "image_size": suite.memory_size,
                                  "num_steps": suite.memory_steps, "batch_size": 1, "isolated_processes": isolate,
                                  "with_checkpointing": runs[True], "without_checkpointing": without,
                                  "with_block_checkpointing": runs.get("blocks"),
                                  "step_ratio": ratios.get(True), "blocks_ratio": ratios.get("blocks"),
                                  "total_peak_ratio": runs[best]["peak_mb"] / without["peak_mb"]}}


def gpu_sd15(suite: Suite, device: torch.device, timed: int = 3) -> dict:
    """SD 1.5 architecture on the GPU: seconds per AP step and peak memory (bf16) per batch size, with
    checkpointing per UNet call (the default) and block by block (``gradient_checkpointing: blocks``)."""
    comps, task = models.sd15_components(device), models.task_model(device)
    data = models.dataset(suite.gpu_size, n=max(16, *suite.gpu_batches))
    runs = []
    for mode in (True, "blocks"):  # blocks last: the networks keep the setting
        for batch in suite.gpu_batches:
            config = models.step_config(model="sd15", device=device, image_size=suite.gpu_size, batch_size=batch,
                                        num_steps=suite.memory_steps, guidance_scale=suite.guidance_scale,
                                        num_tokens=5, steps=1 + timed, checkpointing=mode, clip=None, autocast="bf16")
            sync(device)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
            times = time_optimize(config, comps, task, data, device, 1)
            peak = torch.cuda.max_memory_allocated(device)
            runs.append({"checkpointing": mode, "batch_size": batch, "seconds_per_step": sorted(times)[len(times) // 2],
                         "peak_gb": peak / 2**30, "step_peak_gb": (peak - base) / 2**30,
                         "fits_20gb": peak <= 20 * 2**30})
    return {"image_size": suite.gpu_size, "num_steps": suite.memory_steps, "autocast": "bf16", "runs": runs,
            "device": torch.cuda.get_device_name(device)}


if __name__ == "__main__":  # one isolated measurement; prints a JSON line
    print(json.dumps(measure(json.loads(sys.argv[1]))))

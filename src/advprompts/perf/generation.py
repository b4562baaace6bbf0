"""Generation throughput: ``advprompts generate`` against diffusers' inpainting pipeline.

Both make the same images: the same sources, prompts, per-image generators, model, DDIM steps,
CFG and batch size, read from the same dataset and saved as PNGs (the baseline pastes the object
back as generate does). The baseline is the straightforward loop a user would write:
``StableDiffusionInpaintPipeline`` called once per batch. Each advprompts variant (the exact default
path, then the opt-in fast paths) is timed the same way; throughput is the best of
``gen_repeats`` runs, after a warm-up.
"""

from __future__ import annotations

import copy
import logging
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from advprompts.perf import models
from advprompts.perf.step import sync
from advprompts.perf.suites import Suite
from advprompts.generate import generate_dataset, image_seed, to_uint8

logger = logging.getLogger(__name__)
PROMPTS = ["a photo of a {class} in the snow", "a photo of a {class} on a beach", "a photo of a {class} at night"]


def _config(suite: Suite, comps, device, autocast: str = "none"):
    from advprompts.config.schema import GenerateConfig, parse_config

    return parse_config({
        "model": {"diffusion": comps.source or "embedded", "device": str(device), "autocast": autocast},
        "source": "tiny-synth:train", "prompts": PROMPTS[:suite.gen_prompts], "batch_size": suite.gen_batch,
        "sampler": {"num_steps": suite.gen_steps, "guidance_scale": suite.guidance_scale, "conditioning": "inpaint",
                    "paste": True, "image_size": suite.image_size}, "seed": 0}, GenerateConfig, what="benchmark")


def diffusers_baseline(config, comps, data, out: Path, device) -> None:
    """The straightforward loop: one StableDiffusionInpaintPipeline call per batch, then save PNGs."""
    from diffusers import StableDiffusionInpaintPipeline

    pipe = StableDiffusionInpaintPipeline(vae=comps.vae, text_encoder=comps.text_encoder, tokenizer=comps.tokenizer,
                                          unet=comps.unet, scheduler=copy.deepcopy(comps.scheduler),
                                          safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    (out / "images").mkdir(parents=True, exist_ok=True)
    s, prompts = config.sampler, config.prompts
    jobs = [(i, p) for i in range(len(data)) for p in range(len(prompts))]
    for start in range(0, len(jobs), config.batch_size):
        ks = range(start, min(start + config.batch_size, len(jobs)))
        items = [data[jobs[k][0]] for k in ks]
        texts = [prompts[jobs[k][1]].format(**{"class": it["label_name"]}) for k, it in zip(ks, items)]
        image = torch.stack([it["image"] for it in items]).to(device)
        mask = torch.stack([it["mask"] for it in items]).to(device)
        gens = [torch.Generator(device=device).manual_seed(image_seed(config.seed, k)) for k in ks]
        decoded = pipe(texts, image=image, mask_image=1 - mask, height=image.shape[-2], width=image.shape[-1],
                       strength=s.strength, num_inference_steps=s.num_steps, guidance_scale=s.guidance_scale,
                       generator=gens, output_type="pt").images
        pasted = mask * image + (1 - mask) * decoded
        for k, array in zip(ks, to_uint8(pasted)):
            Image.fromarray(array).save(out / f"images/{k:05d}.png")


def _max_pixel_diff(a: Path, b: Path) -> int:
    load = lambda path: np.asarray(Image.open(path)).astype(int)  # noqa: E731
    diffs = [np.abs(load(f) - load(b / "images" / f.name)).max() for f in sorted((a / "images").glob("*.png"))]
    return int(max(diffs)) if diffs else -1


def generation_speedup(suite: Suite, comps, device) -> dict:
    """Images/s of the baseline and of each advprompts variant, and the speed-ups over the baseline."""
    data = models.dataset(suite.image_size, n=max(1, suite.gen_images // suite.gen_prompts))
    n_images = len(data) * suite.gen_prompts
    variants = ["exact", *suite.gen_variants]
    result: dict = {"images": n_images, "batch_size": suite.gen_batch, "steps": suite.gen_steps,
                    "guidance_scale": suite.guidance_scale, "image_size": suite.image_size, "variants": {}}
    with models.workdir() as tmp:
        tmp = Path(tmp)

        def run(name: str, k: int, variant_comps, **kw) -> float:
            out = tmp / f"{name}-{k}"
            t0 = time.perf_counter()
            if name == "diffusers":
                diffusers_baseline(_config(suite, comps, device), variant_comps, data, out, device)
            else:
                generate_dataset(_config(suite, comps, device, kw.pop("autocast", "none")), out,
                                 components=variant_comps, dataset=data, progress=False, **kw)
            sync(device)
            return time.perf_counter() - t0

        # Warm-up (first-call costs of oneDNN / CUDA kernels are shared by both sides).
        run("diffusers", -1, comps)
        base = min(run("diffusers", k, comps) for k in range(suite.gen_repeats))
        result["diffusers_images_per_s"] = n_images / base
        for name in variants:
            kw = {"autocast": "bf16" if "bf16" in name else "none", "channels_last": "channels_last" in name,
                  "compile": name == "compile"}
            try:
                vc = comps if name == "exact" else copy.deepcopy(comps)
                t0 = time.perf_counter()
                run(name, -1, vc, **kw)  # warm-up; compiles for "compile"
                warm = time.perf_counter() - t0
                best = min(run(name, k, vc, **kw) for k in range(suite.gen_repeats))
                result["variants"][name] = {"images_per_s": n_images / best, "speedup": base / best,
                                            "warmup_s": warm, "bit_identical_default": name == "exact"}
            except Exception as exc:  # an optional fast path that fails here is reported, not fatal
                if name == "exact":
                    raise
                logger.warning("generation variant %s failed: %s", name, exc)
                result["variants"][name] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
        result["max_pixel_diff_exact_vs_diffusers"] = _max_pixel_diff(tmp / "exact-0", tmp / "diffusers-0")
    ok = {k: v for k, v in result["variants"].items() if "speedup" in v}
    best = max(ok, key=lambda k: ok[k]["speedup"])
    result["best_variant"] = best
    result["exact_speedup"] = ok["exact"]["speedup"]
    return {"generate_speedup_vs_diffusers": ok[best]["speedup"], "generate": result}

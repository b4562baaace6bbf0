"""The shipped (embedded) models by name, registered with the core's loaders as a plugin: diffusion
``embedded`` and ``embedded-inpaint`` (its 9-channel inpainting UNet), CLIP ``embedded-clip`` and the
``embedded`` task backbone (``task.init``). Imported when a lookup first misses (see advprompts.registry)."""

from __future__ import annotations

from pathlib import Path

import torch

from advprompts.errors import ModelLoadError
from advprompts.models.loading import load_clip_folder, load_pipeline
from advprompts.models.registry import register_clip, register_pipeline
from advprompts.models.sources import howto
from advprompts.tasks.models import register_backbone
from advprompts.zoo.paths import clip_path, inpaint_unet_subfolder, sd_path, stored_dtype, zoo_dir


def _sd_folder() -> str:
    path = sd_path()
    if not path.is_dir():
        raise ModelLoadError(
            f"the embedded Stable Diffusion model is missing: looked in {path}; run `advprompts zoo build` "
            f"or set ADVPROMPTS_ZOO_DIR to a folder holding sd/, or {howto('embedded')}"
        )
    return str(path)


@register_pipeline("embedded")
def embedded(scheduler: str = "ddim"):
    return load_pipeline(_sd_folder(), True, scheduler=scheduler)


@register_pipeline("embedded-inpaint")
def embedded_inpaint(scheduler: str = "ddim"):
    return load_pipeline(_sd_folder(), True, unet=inpaint_unet_subfolder(), scheduler=scheduler)


@register_clip("embedded-clip")
def embedded_clip():
    location = clip_path()
    if not location.is_dir():
        raise ModelLoadError(
            f"the embedded CLIP model is missing: looked in {location}; run `advprompts zoo build` or pass "
            "a CLIPModel folder / hub id (e.g. openai/clip-vit-large-patch14)"
        )
    # Its config says float32 (so that a plain CLIPModel.from_pretrained runs beside the pipeline on
    # CPU); guidance keeps running it in the dtype it is stored in, as every shipped figure was measured.
    stored = stored_dtype()
    return load_clip_folder(str(location), True, **({"dtype": getattr(torch, stored)} if stored else {}))


@register_backbone("embedded")
def embedded_backbone(arch: str) -> Path:
    path = zoo_dir() / "task" / f"{arch}.safetensors"
    if not path.is_file():
        raise ModelLoadError(f"no pretrained embedded backbone for {arch} at {str(path)!r}; run "
                             "`advprompts zoo build` (or set ADVPROMPTS_ZOO_DIR), or use task.init: scratch")
    return path

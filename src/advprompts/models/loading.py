"""One loader for the diffusion components and one for the CLIP model used for image guidance.

``spec`` is a registered name (``"tiny"``: seeded random components for tests and smoke runs;
``"embedded"``: the shipped tiny Stable Diffusion, registered by the model zoo), a local diffusers
pipeline folder, or a hub id. Every failure a user can cause becomes a one-line
:class:`~advprompts.errors.ModelLoadError`.
"""

from __future__ import annotations

import functools
import json
import logging
from pathlib import Path

import torch

from advprompts.errors import ModelLoadError
from advprompts.models.components import Components
from advprompts.models.registry import (CLIPS, CONTROLNETS, PIPELINES, register_clip, register_controlnet,
                                        register_pipeline)
from advprompts.models.sources import check_pipeline_folder, from_pretrained, resolve_spec

logger = logging.getLogger(__name__)

# OpenAI CLIP preprocessing, used when a CLIP folder has no preprocessor_config.json.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _load_controlnet(spec: str | torch.nn.Module):
    if isinstance(spec, torch.nn.Module):
        return spec
    named = CONTROLNETS.find(spec)
    if named is not None:
        return named()
    from diffusers import ControlNetModel

    location, local = resolve_spec(spec, "controlnet")
    return from_pretrained(ControlNetModel, location, None, local, "ControlNet", "controlnet")


def _scheduler_class(location: str, local: bool, scheduler: str):
    import diffusers

    if scheduler == "ddim":
        return diffusers.DDIMScheduler
    if local:
        cfg = json.loads((Path(location) / "scheduler" / "scheduler_config.json").read_text())
        return getattr(diffusers, cfg.get("_class_name", "DDIMScheduler"), diffusers.DDIMScheduler)
    return diffusers.DDIMScheduler


def load_pipeline(location: str, local: bool, unet: str = "unet", scheduler: str = "ddim") -> Components:
    """The components of a diffusers pipeline folder (or a hub id when not ``local``), in the dtype
    stored, on CPU, not yet frozen; ``unet``: the sub-folder of the UNet (e.g. an inpainting one)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    if local:
        check_pipeline_folder(location)
        if not (Path(location) / unet).is_dir():
            raise ModelLoadError(f"{location} has no {unet}/: this zoo was built without the inpainting "
                                 f"UNet; rebuild with `advprompts zoo build` (inpaint_steps > 0) or use "
                                 f"`embedded` (inpainting by latent blending)")
    return Components(
        tokenizer=from_pretrained(CLIPTokenizer, location, "tokenizer", local, "tokenizer"),
        text_encoder=from_pretrained(CLIPTextModel, location, "text_encoder", local, "text encoder"),
        unet=from_pretrained(UNet2DConditionModel, location, unet, local, "UNet"),
        vae=from_pretrained(AutoencoderKL, location, "vae", local, "VAE"),
        scheduler=from_pretrained(_scheduler_class(location, local, scheduler), location, "scheduler", local,
                                  "scheduler"),
    )


def load_components(
    spec: str,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    controlnet: str | torch.nn.Module | None = None,
    scheduler: str = "ddim",
) -> Components:
    """Load and freeze the components of a Stable Diffusion pipeline.

    Args:
        spec: ``"embedded"``, ``"embedded-inpaint"`` (its 9-channel inpainting UNet), ``"tiny"``
            (random, seed 0), ``"tiny-inpaint"`` (9-channel UNet), another registered name,
            a local diffusers pipeline folder, or a hub id such as
            ``"stable-diffusion-v1-5/stable-diffusion-v1-5"``.
        device: where to put the networks.
        dtype: their dtype (float32 by default; the sampler can autocast).
        controlnet: optional ControlNet folder / hub id / ``"tiny"`` / module.
        scheduler: ``"ddim"`` (the method's sampler, default) or ``"native"`` (the folder's own
            scheduler class, to reproduce ``StableDiffusionPipeline.from_pretrained`` exactly).

    Returns:
        Frozen :class:`Components` with a DDIM scheduler.

    Raises:
        ModelLoadError: missing or incomplete folder, unknown hub id, hub id while offline.
    """
    named = PIPELINES.find(spec)
    comps = named(scheduler) if named is not None else load_pipeline(*resolve_spec(spec), scheduler=scheduler)
    if controlnet is not None:
        comps.controlnet = _load_controlnet(controlnet)
    comps.source = spec
    logger.info("loaded diffusion components from %s", spec)
    return comps.to(device, dtype).freeze()


class ClipImageEncoder(torch.nn.Module):
    """A CLIP vision tower with projection and differentiable preprocessing.

    ``forward(images)`` takes images in [0, 1] (B, 3, H, W), resizes them (bilinear, antialiased)
    to the model's input size, normalises with the processor's mean/std and returns projected
    embeddings (B, D). Everything is torch ops, so gradients reach the images.
    """

    def __init__(self, clip_model: torch.nn.Module, mean=CLIP_MEAN, std=CLIP_STD, tokenizer=None):
        super().__init__()
        self.clip = clip_model.requires_grad_(False).eval()
        self.tokenizer = tokenizer
        self.size = int(clip_model.config.vision_config.image_size)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        x = torch.nn.functional.interpolate(
            images, size=(self.size, self.size), mode="bilinear", align_corners=False, antialias=True
        )
        return (x - self.mean.to(x)) / self.std.to(x)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        pooled = self.clip.vision_model(pixel_values=self.preprocess(images)).pooler_output
        return self.clip.visual_projection(pooled)

    @torch.no_grad()
    def embed_text(self, texts: list[str]) -> torch.Tensor:
        """Projected CLIP text embeddings of ``texts`` (needs the tokenizer)."""
        if self.tokenizer is None:
            raise ModelLoadError("this CLIP model was loaded without a tokenizer; load it from a folder with one")
        ids = self.tokenizer(texts, padding="max_length", truncation=True, return_tensors="pt").input_ids
        pooled = self.clip.text_model(input_ids=ids.to(self.mean.device)).pooler_output
        return self.clip.text_projection(pooled)


def load_clip(spec: str, device: str | torch.device = "cpu") -> ClipImageEncoder:
    """Load a CLIP model for image guidance; repeated calls share one frozen copy.

    Args:
        spec: ``"embedded-clip"`` (the shipped tiny CLIP), ``"tiny"`` (random), a transformers
            CLIPModel folder or a hub id such as ``"openai/clip-vit-large-patch14"``.
        device: where to put it.

    Returns:
        A frozen :class:`ClipImageEncoder`.

    Raises:
        ModelLoadError: when the model cannot be found or read.
    """
    return _load_clip_cached(spec, str(torch.device(device)))


# Several loss terms (image guidance, label_clip) name the same CLIP; it is frozen and eval-mode, so
# they can share one copy instead of loading ViT-L/14 (1.7 GB) twice. Two entries bound the memory.
@functools.lru_cache(maxsize=2)
def _load_clip_cached(spec: str, device: str) -> ClipImageEncoder:
    named = CLIPS.find(spec)
    return (named() if named is not None else load_clip_folder(*resolve_spec(spec, "clip"))).to(device)


def load_clip_folder(location: str, local: bool, **kwargs) -> ClipImageEncoder:
    """A CLIP model from a transformers CLIPModel folder (or a hub id when not ``local``), on CPU, with
    the folder's preprocessing and tokenizer; ``kwargs`` go to ``CLIPModel.from_pretrained``."""
    from transformers import CLIPModel, CLIPTokenizer

    model = from_pretrained(CLIPModel, location, None, local, "CLIP model", "clip", **kwargs)
    mean, std, tokenizer = CLIP_MEAN, CLIP_STD, None
    if local:
        pre = Path(location) / "preprocessor_config.json"
        if pre.is_file():
            cfg = json.loads(pre.read_text())
            mean, std = tuple(cfg.get("image_mean", mean)), tuple(cfg.get("image_std", std))
        try:
            tokenizer = CLIPTokenizer.from_pretrained(location, local_files_only=True)
        except (OSError, ValueError, TypeError):
            logger.info("no tokenizer in %s; CLIP text embeddings unavailable", location)
    return ClipImageEncoder(model, mean, std, tokenizer)


# The core's own names: seeded random models (tests, CPU smoke runs); the zoo registers `embedded*`.
@register_pipeline("tiny")
def _tiny(scheduler: str = "ddim") -> Components:
    from advprompts.models.tiny import tiny_components

    return tiny_components(unet_in_channels=4)


@register_pipeline("tiny-inpaint")
def _tiny_inpaint(scheduler: str = "ddim") -> Components:
    from advprompts.models.tiny import tiny_components

    return tiny_components(unet_in_channels=9)


@register_controlnet("tiny")
def _tiny_controlnet():
    from advprompts.models.tiny import tiny_controlnet

    return tiny_controlnet()


@register_clip("tiny")
def _tiny_clip() -> ClipImageEncoder:
    from advprompts.models.tiny import tiny_clip, tiny_tokenizer

    return ClipImageEncoder(tiny_clip(), tokenizer=tiny_tokenizer())

"""One loader for the diffusion components and one for the CLIP model used for image guidance.

``spec`` is ``"embedded"`` (the shipped tiny Stable Diffusion), ``"tiny"`` (seeded random
components, tests and smoke runs), a local diffusers pipeline folder, or a hub id. Every failure a
user can cause becomes a one-line :class:`~advprompts.errors.ModelLoadError`.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from advprompts.errors import ModelLoadError
from advprompts.zoo.paths import inpaint_unet_subfolder, is_embedded

logger = logging.getLogger(__name__)

#: Sub-folders a Stable Diffusion pipeline folder must hold, with their config file.
PIPELINE_PARTS = {
    "unet": "config.json",
    "vae": "config.json",
    "text_encoder": "config.json",
    "tokenizer": None,
    "scheduler": "scheduler_config.json",
}
# OpenAI CLIP preprocessing, used when a CLIP folder has no preprocessor_config.json.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class Components:
    """The networks of a Stable Diffusion pipeline, frozen and in eval mode.

    Attributes:
        tokenizer: CLIP tokenizer (placeholder tokens get added to it).
        text_encoder: CLIPTextModel.
        unet: UNet2DConditionModel with 4 (text-to-image) or 9 (inpainting) input channels.
        vae: AutoencoderKL.
        scheduler: a DDIMScheduler; the sampler copies it for every rollout.
        controlnet: optional ControlNetModel.
    """

    tokenizer: Any
    text_encoder: torch.nn.Module
    unet: torch.nn.Module
    vae: torch.nn.Module
    scheduler: Any
    controlnet: torch.nn.Module | None = None
    source: str = field(default="", compare=False)

    @property
    def vae_scale_factor(self) -> int:
        """Pixel-to-latent downsampling, computed as diffusers' pipelines do."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    def freeze(self) -> "Components":
        """Freeze every network (``requires_grad_(False)``, eval mode); returns self."""
        for net in (self.text_encoder, self.unet, self.vae, self.controlnet):
            if net is not None:
                net.requires_grad_(False).eval()
        return self

    def to(self, device: str | torch.device, dtype: torch.dtype | None = None) -> "Components":
        for net in (self.text_encoder, self.unet, self.vae, self.controlnet):
            if net is not None:
                net.to(device=device)
                # Casting only when needed avoids diffusers' keep-in-fp32 warning on a no-op cast.
                if dtype is not None and next(net.parameters()).dtype != dtype:
                    net.to(dtype=dtype)
        return self


#: What a local folder of each kind of model holds, and the hub id suggested for it.
_KINDS = {
    "pipeline": ("a local diffusers pipeline folder (unet/, vae/, text_encoder/, tokenizer/, scheduler/)",
                 "stable-diffusion-v1-5/stable-diffusion-v1-5"),
    "clip": ("a local transformers CLIPModel folder (config.json, model.safetensors, preprocessor_config.json, "
             "tokenizer files)", "openai/clip-vit-large-patch14"),
    "controlnet": ("a local diffusers ControlNetModel folder (config.json, diffusion_pytorch_model.safetensors)",
                   "lllyasviel/sd-controlnet-depth"),
}


def _howto(spec: str, kind: str = "pipeline") -> str:
    from huggingface_hub import constants

    folder, default = _KINDS[kind]
    repo = spec if "/" in spec and not Path(spec).is_absolute() and not spec.startswith((".", "~")) else default
    return (
        f"pass {folder}, or download it first with `hf download {repo} --local-dir DIR` (older huggingface_hub: "
        f"`huggingface-cli download`) and pass DIR, or point HF_HOME / HF_HUB_CACHE at a hub cache holding it "
        f"(now {constants.HF_HUB_CACHE})"
    )


def _resolve_spec(spec: str, kind: str = "pipeline") -> tuple[str, bool]:
    """Return (location, is_local) for a model spec (``kind`` words the error messages)."""
    if spec == "embedded":
        from advprompts.zoo.paths import sd_path

        path = sd_path()
        if not path.is_dir():
            raise ModelLoadError(
                f"the embedded Stable Diffusion model is missing: looked in {path}; run `advprompts zoo build` "
                f"or set ADVPROMPTS_ZOO_DIR to a folder holding sd/, or {_howto(spec)}"
            )
        return str(path), True
    path = Path(spec).expanduser()
    looks_like_path = path.is_absolute() or spec.startswith((".", "~")) or path.exists() or spec.count("/") != 1
    if looks_like_path:
        if not path.is_dir():
            raise ModelLoadError(f"model folder {spec!r} does not exist; {_howto(spec, kind)}")
        return str(path), True
    return _resolve_hub(spec, kind)


def _hub_reachable(timeout: float = 3.0) -> bool:
    from urllib.parse import urlparse

    from huggingface_hub import constants

    url = urlparse(os.environ.get("HF_ENDPOINT", constants.ENDPOINT))
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _resolve_hub(repo: str, kind: str = "pipeline") -> tuple[str, bool]:
    """A hub id: its cached snapshot if there is one; else fail at once when the hub cannot be reached.

    Without this, huggingface_hub retries every file for minutes before the first error.
    """
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(repo, local_files_only=True), True
    except Exception:  # not (fully) cached: any huggingface_hub error means the same here
        pass
    if _offline() or not _hub_reachable():
        why = "you are offline (HF_HUB_OFFLINE is set)" if _offline() else "the hub cannot be reached"
        from huggingface_hub import constants

        raise ModelLoadError(f"model {repo!r} is not in the hub cache {constants.HF_HUB_CACHE} and {why}; "
                             f"{_howto(repo, kind)}")
    return repo, False


def check_pipeline_folder(path: str | Path, parts: dict[str, str | None] = PIPELINE_PARTS) -> None:
    """Raise ModelLoadError naming the missing parts of a diffusers pipeline folder."""
    path = Path(path)
    missing = []
    for sub, cfg in parts.items():
        if not (path / sub).is_dir() or (cfg and not (path / sub / cfg).is_file()):
            missing.append(f"{sub}/{cfg or ''}")
        elif sub != "tokenizer" and sub != "scheduler" and not any((path / sub).glob("*.safetensors")) \
                and not any((path / sub).glob("*.bin")):
            missing.append(f"{sub}/ weights")
    if missing:
        raise ModelLoadError(
            f"model folder {str(path)!r} is incomplete: missing {', '.join(missing)}; {_howto(str(path))}"
        )


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")


def _from_pretrained(cls, location: str, subfolder: str | None, local: bool, what: str, kind: str = "pipeline",
                     **kwargs):
    # huggingface_hub reads HF_HUB_OFFLINE at import time; re-read it so a later setting holds.
    # transformers 5 fails on subfolder=None (os.path.join(None, ...)): pass it only when set.
    if subfolder is not None:
        kwargs["subfolder"] = subfolder
    try:
        return cls.from_pretrained(location, local_files_only=bool(local) or _offline(), **kwargs)
    except (OSError, ValueError, EnvironmentError, RuntimeError) as exc:
        offline = _offline()
        why = "offline (HF_HUB_OFFLINE is set) and not in the cache" if offline and not local else type(exc).__name__
        raise ModelLoadError(f"cannot load the {what} from {location!r} ({why}); {_howto(location, kind)}") from exc


def _load_controlnet(spec: str | torch.nn.Module, device, dtype):
    if isinstance(spec, torch.nn.Module):
        return spec
    if spec == "tiny":
        from advprompts.models.tiny import tiny_controlnet

        return tiny_controlnet()
    from diffusers import ControlNetModel

    location, local = _resolve_spec(spec, "controlnet")
    return _from_pretrained(ControlNetModel, location, None, local, "ControlNet", "controlnet")


def _scheduler_class(location: str, local: bool, scheduler: str):
    import diffusers

    if scheduler == "ddim":
        return diffusers.DDIMScheduler
    if local:
        cfg = json.loads((Path(location) / "scheduler" / "scheduler_config.json").read_text())
        return getattr(diffusers, cfg.get("_class_name", "DDIMScheduler"), diffusers.DDIMScheduler)
    return diffusers.DDIMScheduler


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
            (random, seed 0), ``"tiny-inpaint"`` (9-channel UNet),
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
    if spec in ("tiny", "tiny-inpaint"):
        from advprompts.models.tiny import tiny_components

        comps = tiny_components(unet_in_channels=9 if spec == "tiny-inpaint" else 4)
    else:
        from diffusers import AutoencoderKL, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTokenizer

        # "embedded-inpaint": the embedded pipeline with its 9-channel inpainting UNet (sd/unet_inpaint).
        unet_folder = inpaint_unet_subfolder() if spec == "embedded-inpaint" else "unet"
        location, local = _resolve_spec("embedded" if is_embedded(spec) else spec)
        if local:
            check_pipeline_folder(location)
            if not (Path(location) / unet_folder).is_dir():
                raise ModelLoadError(f"{location} has no {unet_folder}/: this zoo was built without the inpainting "
                                     f"UNet; rebuild with `advprompts zoo build` (inpaint_steps > 0) or use "
                                     f"`embedded` (inpainting by latent blending)")
        comps = Components(
            tokenizer=_from_pretrained(CLIPTokenizer, location, "tokenizer", local, "tokenizer"),
            text_encoder=_from_pretrained(CLIPTextModel, location, "text_encoder", local, "text encoder"),
            unet=_from_pretrained(UNet2DConditionModel, location, unet_folder, local, "UNet"),
            vae=_from_pretrained(AutoencoderKL, location, "vae", local, "VAE"),
            scheduler=_from_pretrained(_scheduler_class(location, local, scheduler), location, "scheduler", local,
                                       "scheduler"),
        )
    if controlnet is not None:
        comps.controlnet = _load_controlnet(controlnet, device, dtype)
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
    if spec == "tiny":
        from advprompts.models.tiny import tiny_clip, tiny_tokenizer

        return ClipImageEncoder(tiny_clip(), tokenizer=tiny_tokenizer()).to(device)
    from transformers import CLIPModel, CLIPTokenizer

    if spec == "embedded-clip":
        from advprompts.zoo.paths import clip_path

        location, local = str(clip_path()), True
        if not Path(location).is_dir():
            raise ModelLoadError(
                f"the embedded CLIP model is missing: looked in {location}; run `advprompts zoo build` or pass "
                "a CLIPModel folder / hub id (e.g. openai/clip-vit-large-patch14)"
            )
    else:
        location, local = _resolve_spec(spec, "clip")
    kwargs = {}
    if spec == "embedded-clip":
        # Its config says float32 (so that a plain CLIPModel.from_pretrained runs beside the pipeline on
        # CPU); guidance keeps running it in the dtype it is stored in, as every shipped figure was measured.
        from advprompts.zoo.paths import stored_dtype

        stored = stored_dtype()
        kwargs = {"dtype": getattr(torch, stored)} if stored else {}
    model = _from_pretrained(CLIPModel, location, None, local, "CLIP model", "clip", **kwargs)
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
    return ClipImageEncoder(model, mean, std, tokenizer).to(device)

"""Where the embedded (shipped) models live on disk."""

from __future__ import annotations

import json
import os
from pathlib import Path

#: Folder of the committed weights.
ZOO_DIR = Path(__file__).parent / "embedded"


def zoo_dir() -> Path:
    """The zoo in use: ADVPROMPTS_ZOO_DIR (e.g. a fresh `zoo build`), read at each call, else ZOO_DIR."""
    return Path(os.environ.get("ADVPROMPTS_ZOO_DIR", ZOO_DIR))


def sd_path() -> Path:
    """Diffusers pipeline folder of the tiny Stable Diffusion (StableDiffusionPipeline.from_pretrained)."""
    return zoo_dir() / "sd"


def clip_path() -> Path:
    """transformers CLIPModel folder of the tiny CLIP (its text tower is sd/text_encoder)."""
    return zoo_dir() / "clip"


def inpaint_unet_subfolder() -> str:
    """Sub-folder of sd/ holding the 9-channel inpainting UNet: pass it to diffusers'
    StableDiffusionInpaintPipeline.from_pretrained(sd_path(), unet=UNet2DConditionModel.from_pretrained(
    sd_path(), subfolder=...)); sd/ holds one pipeline, so the inpainting one shares its other parts."""
    return "unet_inpaint"


def stored_dtype() -> str | None:
    """The dtype the zoo's weights are stored in (the manifest's "dtype", e.g. "float16"), if recorded.

    The transformers configs (sd/text_encoder, clip) say float32, so that a plain ``from_pretrained``
    upcasts them as diffusers does the UNet and VAE, and runs on CPU; this is what the weights hold."""
    manifest = zoo_dir() / "manifest.json"
    return json.loads(manifest.read_text()).get("dtype") if manifest.is_file() else None


def oracle_path() -> Path:
    """Oracle classifiers (object, place, time) trained on renderer ground truth; judge generations."""
    return zoo_dir() / "oracle"


def is_embedded(spec: str) -> bool:
    """Whether a diffusion-model spec names the shipped pipeline (with either of its UNets)."""
    return spec in ("embedded", "embedded-inpaint")

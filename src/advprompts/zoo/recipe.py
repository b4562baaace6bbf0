"""`zoo build`'s recipe: steps, batch sizes and devices of every stage (defaults: the committed models);
the measurements behind the defaults are in docs/zoo-builds.md ("Recipe notes")."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch


@dataclass(frozen=True)
class ZooRecipe:
    """Steps and batch sizes of `zoo build` (defaults: the committed models)."""

    seed: int = 0
    corpus_size: int = 60_000
    # Steps are sized to keep the build within its 90-minute gate on 2 CPU cores (docs/zoo-builds.md).
    clip_steps: int = 820
    clip_batch: int = 192
    # VAE: 1500 steps on object-centred 32 px crops (the VAE is fully convolutional), then 500 on full
    # images; object pixels weighted 5x, plus an image-gradient term (why: docs/zoo-builds.md, recipe notes).
    vae_steps: int = 2000
    vae_batch: int = 32
    vae_crop_steps: int = 1500
    vae_crop_batch: int = 64
    vae_object_weight: float = 4.0  # extra reconstruction weight on (dilated) object pixels
    unet_steps: int = 3600
    unet_batch: int = 64
    unet_lr: float = 6e-4
    unet_object_weight: float = 4.0  # extra loss weight on latent pixels covered by the object mask
    caption_dropout: float = 0.1
    # 9-channel inpainting UNet (latents + repaint mask + masked-image latents), fine-tuned from the
    # text-to-image UNet as SD's inpainting model was; 0 = none (inpainting by latent blending).
    inpaint_steps: int = 600
    inpaint_batch: int = 32
    inpaint_lr: float = 3e-4
    # Extra loss weight on the repainted latent cells within `inpaint_ring` cells of the kept object, where a
    # generator that extends the object paints its second one (a small share of the plain loss).
    inpaint_ring_weight: float = 0.0
    inpaint_ring: int = 2
    oracle_steps: int = 500
    oracle_batch: int = 128
    # The task models' "ImageNet": small_cnn pretrained to name the object on web-corpus images (from
    # scratch on a spurious train split a CNN learns no object features: docs/zoo-builds.md, recipe notes).
    backbone_images: int = 20_000
    backbone_epochs: int = 3
    # bf16 autocast for the convolutional models (VAE, UNet, oracle) where the CPU has native bf16
    # ("auto"); CLIP gains nothing and stays float32. Without native bf16 the emulation is many times
    # slower: "auto" then means float32.
    bf16: str = "auto"  # "auto", "on" or "off"
    # Where to train. The committed models are from "cpu"; on "cuda" the same recipe (same batches,
    # seeds on the CPU) gives different weights: float rounding differs between devices.
    device: str = "cpu"


def use_bf16(recipe: ZooRecipe) -> bool:
    if recipe.bf16 == "auto":
        if recipe.device.startswith("cuda"):
            return torch.cuda.is_bf16_supported()
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return recipe.bf16 == "on"


class Tokenize:
    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self._one = lru_cache(maxsize=200_000)(self._ids)

    def _ids(self, text: str) -> tuple[int, ...]:
        return tuple(self.tokenizer(text, padding="max_length", max_length=self.tokenizer.model_max_length,
                                    truncation=True).input_ids)

    def __call__(self, texts: list[str]) -> torch.Tensor:
        return torch.tensor([self._one(t) for t in texts])


def batch_rng(seed: int, stage: int, step: int) -> np.random.Generator:
    """The generator of one training step's batch: drawn from the step number alone (seeded), so a
    resumed run equals an uninterrupted one."""
    return np.random.default_rng([seed, stage, step])

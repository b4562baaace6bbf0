"""The networks of a Stable Diffusion pipeline, as every loader returns them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


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

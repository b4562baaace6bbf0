"""What a config and a batch of source samples give the sampler: its autocast dtype and the keyword
arguments of one rollout. Optimisation and generation both call the sampler through these."""

from __future__ import annotations

import torch

from advprompts.config.schema import GenerateConfig, RunConfig
from advprompts.errors import DataError

#: ``model.autocast`` -> the dtype the sampler autocasts to (None: full precision).
AUTOCAST = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def sampler_kwargs(config: RunConfig | GenerateConfig, batch: dict, device: torch.device) -> dict:
    """Keyword arguments of :class:`~advprompts.sampler.Sampler` for ``batch`` under ``config.sampler``:
    inpainting, ControlNet, SDEdit or plain text-to-image."""
    s = config.sampler
    kw = dict(num_steps=s.num_steps, guidance_scale=s.guidance_scale, eta=s.eta, strength=s.strength)
    images = batch["image"].to(device)
    if s.negative_prompt:
        kw.update(negative_prompt=[s.negative_prompt] * len(images))
    if s.conditioning == "inpaint":
        if batch["mask"] is None:
            raise DataError("sampler.conditioning=inpaint needs object masks (mask_file column) in the source data")
        kw.update(source=images, object_mask=batch["mask"].to(device), paste=s.paste, latent_mask=s.latent_mask)
    elif s.conditioning == "controlnet":
        if batch["dense"] is None:
            raise DataError("sampler.conditioning=controlnet needs dense maps (depth_file column) in the source data")
        kw.update(conditioning=batch["dense"].to(device).expand(-1, 3, -1, -1), conditioning_scale=s.conditioning_scale)
        if s.strength < 1.0:
            kw.update(source=images)
    elif s.strength < 1.0:
        kw.update(source=images)
    else:
        kw.update(height=images.shape[-2], width=images.shape[-1])
    return kw

"""What goes into and out of :class:`~advprompts.sampler.Sampler`: a config and a batch of source
samples give its autocast dtype and the keyword arguments of one rollout (optimisation and generation
both call the sampler through these); a rollout in progress is a :class:`RolloutState`, a finished one
a :class:`RolloutOutput`."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from advprompts.config.schema import GenerateConfig, RunConfig
from advprompts.errors import ConfigError, DataError

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


#: Keyword arguments of one rollout and their defaults (``Sampler.__call__``; ``prompt`` has none).
ROLLOUT_DEFAULTS = dict(prompt=None, num_steps=5, guidance_scale=7.5, eta=0.0, strength=1.0, negative_prompt=None,
                        source=None, object_mask=None, paste=False, latent_mask="nearest", conditioning=None,
                        conditioning_scale=1.0, height=None, width=None, noise=None, generator=None)


def start_step(num_steps: int, strength: float) -> int:
    """Index of the first DDIM step for SDEdit ``strength``, exactly as diffusers' img2img."""
    init_timestep = min(int(num_steps * strength), num_steps)
    return max(num_steps - init_timestep, 0)


@dataclass
class RolloutOutput:
    """Result of one rollout.

    Attributes:
        images: final images (B, 3, H, W) in [0, 1], after pasting when requested.
        decoded: the VAE decodings before pasting (B, 3, H, W) in [0, 1].
        latents: final latents (B, C, h, w).
        timesteps: the timesteps that were run.
        mode: ``txt2img``, ``img2img``, ``inpaint`` or ``inpaint9`` (``+controlnet`` when used).
    """

    images: torch.Tensor
    decoded: torch.Tensor
    latents: torch.Tensor
    timesteps: list[int]
    mode: str


@dataclass
class RolloutState:
    """One rollout between its preparation and its decoding: what its UNet calls take (``embeds``,
    ``extra``, ``control``: CFG's unconditional rows first) and its own scheduler, generator (in
    ``step_kwargs``) and latents, which :meth:`advance` moves one step on."""

    embeds: torch.Tensor
    scheduler: object
    step_kwargs: dict
    timesteps: torch.Tensor
    latents: torch.Tensor
    noise: torch.Tensor
    image_latents: torch.Tensor | None
    extra: list[torch.Tensor] | None      # a 9-channel UNet's mask and masked-image latents
    blend_mask: torch.Tensor | None       # RePaint blending of a 4-channel UNet (1 = repaint)
    control: torch.Tensor | None
    conditioning_scale: float
    guidance_scale: float | None          # None: no CFG
    mode: str
    paste_mask: torch.Tensor | None       # object mask when pasting
    source: torch.Tensor | None

    def model_input(self, t) -> torch.Tensor:
        """The UNet's input at timestep ``t`` (latents twice under CFG)."""
        x = torch.cat([self.latents] * 2) if self.guidance_scale is not None else self.latents
        return self.scheduler.scale_model_input(x, t)

    def advance(self, pred: torch.Tensor, i: int, t) -> None:
        """Step ``i`` (timestep ``t``) with this rollout's rows ``pred`` of the UNet's output."""
        if self.guidance_scale is not None:
            uncond, text = pred.chunk(2)
            pred = uncond + self.guidance_scale * (text - uncond)
        self.latents = self.scheduler.step(pred, t, self.latents, **self.step_kwargs, return_dict=False)[0]
        if self.blend_mask is not None:
            # RePaint-style blending: keep the source latents, noised to the next step, off-mask.
            known = self.image_latents
            if i < len(self.timesteps) - 1:
                known = self.scheduler.add_noise(self.image_latents, self.noise, self.timesteps[i + 1: i + 2])
            self.latents = (1 - self.blend_mask) * known + self.blend_mask * self.latents

    def output(self, decoded: torch.Tensor) -> RolloutOutput:
        """The finished rollout from its VAE decoding (the source object pasted back when asked)."""
        images = decoded
        if self.paste_mask is not None:
            m = self.paste_mask
            images = m * self.source + (1 - m) * decoded
        return RolloutOutput(images=images, decoded=decoded, latents=self.latents,
                             timesteps=[int(t) for t in self.timesteps], mode=self.mode)


def check_batchable(states: list[RolloutState]) -> None:
    """Rollouts share one UNet call per step: the same timesteps, extra inputs and ControlNet scale."""
    first = states[0]
    for s in states[1:]:
        if not torch.equal(s.timesteps, first.timesteps) or (s.extra is None) != (first.extra is None) \
                or (s.control is None) != (first.control is None) or s.conditioning_scale != first.conditioning_scale:
            raise ConfigError(f"rollouts of modes {first.mode} and {s.mode} (timesteps {first.timesteps.tolist()} and "
                              f"{s.timesteps.tolist()}) cannot share a batch; run them apart")

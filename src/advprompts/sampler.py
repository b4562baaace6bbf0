"""A differentiable few-step sampler (DDIM by default) over diffusers components.

One rollout reads like diffusers' pipelines and draws its random numbers in the same order, so
under ``no_grad`` in float32 it reproduces ``StableDiffusionPipeline`` (text-to-image),
``StableDiffusionImg2ImgPipeline`` (SDEdit), ``StableDiffusionInpaintPipeline`` (4- and 9-channel
UNets) and ``StableDiffusionControlNetPipeline`` for the same generator. With gradients enabled,
the output images are differentiable w.r.t. the prompt embeddings (and so w.r.t. any
:class:`~advprompts.prompts.LearnablePrompt` used in the prompt text).

Mask convention: a source sample carries an *object* mask (1 = object to keep). diffusers'
inpainting mask means "repaint", so ``repaint_mask = 1 - object_mask`` here.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
from typing import get_args

import torch
from diffusers.utils.torch_utils import randn_tensor
from torch.utils.checkpoint import checkpoint

from advprompts.config.schema import LatentMask
from advprompts.errors import ConfigError
from advprompts.models.components import Components
from advprompts.sampler_inputs import ROLLOUT_DEFAULTS, RolloutOutput, RolloutState, check_batchable, start_step
from advprompts.text_encoding import encode_text

logger = logging.getLogger(__name__)

Generator = torch.Generator | list[torch.Generator] | None


def checkpoint_blocks(components: Components) -> None:
    """Turn on diffusers' own gradient checkpointing in the UNet, ControlNet and VAE decoder: inside a
    checkpointed UNet call only the blocks' inputs are kept while it is recomputed, and the decoder's blocks
    are recomputed too (less memory, more time; the same numbers). The networks keep the setting."""
    for net in (components.unet, components.controlnet, components.vae):
        if net is not None and getattr(net, "_supports_gradient_checkpointing", False):
            net.enable_gradient_checkpointing()


class Sampler:
    """Unrolled DDIM sampling with CFG, SDEdit, inpainting, pasting and ControlNet.

    Args:
        components: frozen diffusion components (see :func:`~advprompts.models.loading.load_components`).
        gradient_checkpointing: recompute each UNet (+ControlNet) call in the backward pass
            instead of storing its activations; used only when gradients are enabled. ``"blocks"``:
            also inside the networks, block by block (see :func:`checkpoint_blocks`).
        autocast_dtype: ``torch.bfloat16`` / ``torch.float16`` to autocast the networks, or None.
    """

    def __init__(self, components: Components, gradient_checkpointing: bool | str = True,
                 autocast_dtype: torch.dtype | None = None):
        self.c = components
        self.gradient_checkpointing = gradient_checkpointing
        self.autocast_dtype = autocast_dtype
        if gradient_checkpointing == "blocks":
            checkpoint_blocks(components)

    # ------------------------------------------------------------------ helpers
    def _autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.c.device.type, dtype=self.autocast_dtype)

    def new_scheduler(self):
        """A fresh copy of the components' scheduler (schedulers hold state, so one per rollout)."""
        return type(self.c.scheduler).from_config(self.c.scheduler.config)

    def encode_prompt(self, prompt: list[str], negative_prompt: list[str] | None, cfg: bool) -> torch.Tensor:
        """Text embeddings as diffusers' ``encode_prompt``: ``cat([negative, positive])`` under CFG."""
        with self._autocast():
            cond, _ = encode_text(self.c.tokenizer, self.c.text_encoder, prompt)
        if not cfg:
            return cond
        with torch.no_grad(), self._autocast():
            uncond, _ = encode_text(self.c.tokenizer, self.c.text_encoder, negative_prompt or [""] * len(prompt))
        return torch.cat([uncond.to(cond.dtype), cond])

    def encode_image(self, image: torch.Tensor, generator: Generator) -> torch.Tensor:
        """Sample VAE latents of ``image`` in [-1, 1] with ``generator`` (as diffusers does)."""
        with torch.no_grad(), self._autocast():
            dist = self.c.vae.encode(image.to(self.c.vae.dtype)).latent_dist
        return dist.sample(generator).float() * self.c.vae.config.scaling_factor

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Differentiable VAE decode to [0, 1] (diffusers' postprocess: ``(x / 2 + 0.5).clamp(0, 1)``)."""
        with self._autocast():
            image = self.c.vae.decode(latents.to(self.c.vae.dtype) / self.c.vae.config.scaling_factor).sample
        return (image.float() / 2 + 0.5).clamp(0, 1)

    def _denoise(self, model_input, t, embeds, extra, control, control_scale):
        down, mid = None, None
        if control is not None:
            down, mid = self.c.controlnet(model_input, t, encoder_hidden_states=embeds, controlnet_cond=control,
                                          conditioning_scale=control_scale, return_dict=False)
        return self.c.unet(model_input if extra is None else torch.cat([model_input, *extra], dim=1), t,
                           encoder_hidden_states=embeds, down_block_additional_residuals=down,
                           mid_block_additional_residual=mid, return_dict=False)[0]

    # ------------------------------------------------------------------ rollout
    def check_inputs(self, prompt, num_steps, strength, guidance_scale, eta, source, object_mask,
                     conditioning, height, width, latent_mask: str = "nearest") -> None:
        """Validate a rollout's arguments up front (ConfigError naming the bad one)."""
        if not prompt or not all(isinstance(p, str) for p in prompt):
            raise ConfigError(f"prompt={prompt!r} is invalid; expected a non-empty list of strings")
        if not (isinstance(num_steps, int) and num_steps >= 1):
            raise ConfigError(f"num_steps={num_steps!r} is invalid; expected an integer >= 1")
        if not 0.0 < strength <= 1.0:
            raise ConfigError(f"strength={strength!r} is invalid; expected 0 < strength <= 1")
        if source is not None and int(num_steps * strength) < 1:
            raise ConfigError(f"strength={strength} with num_steps={num_steps} leaves no step; raise either")
        if guidance_scale < 0 or not 0.0 <= eta <= 1.0:
            raise ConfigError(f"guidance_scale={guidance_scale} / eta={eta} invalid; expected >= 0 / in [0, 1]")
        f = self.c.vae_scale_factor
        if height % f or width % f:
            raise ConfigError(f"image size {height}x{width} is not divisible by the VAE scale factor {f}")
        for name, x, ch in (("source", source, 3), ("object_mask", object_mask, 1), ("conditioning", conditioning, 3)):
            if x is not None and (x.ndim != 4 or x.shape[0] != len(prompt) or x.shape[1] != ch
                                  or tuple(x.shape[-2:]) != (height, width)):
                raise ConfigError(f"{name} has shape {tuple(x.shape)}; expected ({len(prompt)}, {ch}, {height}, {width})")
        if object_mask is not None and source is None:
            raise ConfigError("object_mask was given without source; inpainting needs the source image")
        if self.c.unet.config.in_channels == 9 and object_mask is None:
            raise ConfigError("this UNet is an inpainting UNet (9 input channels); pass source and object_mask")
        if (self.c.controlnet is None) != (conditioning is None):
            raise ConfigError("conditioning and a ControlNet go together; load a ControlNet or drop conditioning")
        if latent_mask not in get_args(LatentMask):
            raise ConfigError(f"latent_mask={latent_mask!r}; expected one of {', '.join(get_args(LatentMask))}")

    def __call__(
        self,
        prompt: list[str],
        *,
        num_steps: int = 5,
        guidance_scale: float = 7.5,
        eta: float = 0.0,
        strength: float = 1.0,
        negative_prompt: list[str] | None = None,
        source: torch.Tensor | None = None,
        object_mask: torch.Tensor | None = None,
        paste: bool = False,
        latent_mask: LatentMask = "nearest",
        conditioning: torch.Tensor | None = None,
        conditioning_scale: float = 1.0,
        height: int | None = None,
        width: int | None = None,
        noise: torch.Tensor | None = None,
        generator: Generator = None,
        grad: bool = True,
    ) -> RolloutOutput:
        """Run one rollout.

        Args:
            prompt: one text per sample (placeholder tokens allowed).
            num_steps: DDIM steps K (before SDEdit truncation).
            guidance_scale: CFG scale; <= 1 disables CFG, as in diffusers.
            eta: DDIM eta (0 = deterministic DDIM).
            strength: SDEdit strength in (0, 1]; used when ``source`` is given.
            negative_prompt: texts of the unconditional branch (default "").
            source: source images (B, 3, H, W) in [0, 1] (SDEdit / inpainting start).
            object_mask: (B, 1, H, W), 1 = object to keep; turns on inpainting.
            paste: paste the source object pixels back: ``m * source + (1 - m) * decoded``.
            latent_mask: how the object mask reaches latent resolution: ``"nearest"`` (diffusers'
                inpainting pipelines: one pixel per latent cell) or ``"cover"`` (keep every latent
                cell the object touches, so no part of the object is repainted).
            conditioning: ControlNet condition images (B, 3, H, W) in [0, 1].
            conditioning_scale: ControlNet conditioning scale.
            height, width: output size for text-to-image (default: the UNet's sample size).
            noise: initial noise (B, C, h, w) instead of drawing it (diffusers' ``latents=``).
            generator: a ``torch.Generator`` or one per sample; drawn in diffusers' order.
            grad: build a graph (optimisation) or run under ``no_grad`` (generation).

        Returns:
            :class:`RolloutOutput`.
        """
        args = {k: v for k, v in locals().items() if k not in ("self", "grad")}
        return self.rollouts([args], grad=grad)[0]

    def rollouts(self, calls: list[dict], grad: bool = True) -> list[RolloutOutput]:
        """Several rollouts (each a dict of :meth:`__call__`'s keyword arguments and ``prompt``) run as one
        batch through the UNet, ControlNet and VAE decoder: each draws from its own generator, with its own
        scheduler, exactly as alone; only the networks see the concatenated batch (batch rows never mix).
        They must share the timesteps (``num_steps``, ``strength``), the UNet's extra inputs (mode) and the
        ControlNet's ``conditioning_scale``."""
        calls = [{**ROLLOUT_DEFAULTS, **call} for call in calls]
        checked = inspect.signature(self.check_inputs).parameters
        f, size = self.c.vae_scale_factor, self.c.unet.config.sample_size
        for call in calls:
            ref = call["source"] if call["source"] is not None else call["conditioning"]
            call["height"] = call["height"] or (ref.shape[-2] if ref is not None else size * f)
            call["width"] = call["width"] or (ref.shape[-1] if ref is not None else size * f)
            self.check_inputs(**{k: call[k] for k in checked})
        with (contextlib.nullcontext() if grad else torch.no_grad()):
            states = [self._prepare(**call) for call in calls]
            check_batchable(states)
            self._denoise_loop(states, grad and self.gradient_checkpointing and torch.is_grad_enabled())
            # 5. Decode, then paste the object back in pixel space.
            latents = [s.latents for s in states]
            if len(states) == 1:
                return [states[0].output(self.decode(latents[0]))]
            decoded = self.decode(torch.cat(latents)).split([len(x) for x in latents])
            return [s.output(d) for s, d in zip(states, decoded)]

    def _prepare(self, prompt, num_steps, guidance_scale, eta, strength, negative_prompt, source, object_mask,
                 paste, latent_mask, conditioning, conditioning_scale, height, width, noise, generator) -> RolloutState:
        device, dtype = self.c.device, torch.float32
        batch, cfg = len(prompt), guidance_scale > 1.0
        nine = self.c.unet.config.in_channels == 9
        mode = "txt2img" if source is None else ("img2img" if object_mask is None else ("inpaint9" if nine else "inpaint"))

        # 1. Encode the prompt (differentiable w.r.t. learned placeholder rows).
        embeds = self.encode_prompt(prompt, negative_prompt, cfg)

        # 2. Timesteps on a fresh scheduler; SDEdit truncates them as diffusers' img2img does.
        scheduler = self.new_scheduler()
        # As diffusers' prepare_extra_step_kwargs: only DDIM-like schedulers take eta / generator.
        accepted = set(inspect.signature(scheduler.step).parameters)
        step_kwargs = {k: v for k, v in (("eta", eta), ("generator", generator)) if k in accepted}
        scheduler.set_timesteps(num_steps, device=device)
        timesteps = scheduler.timesteps
        if source is not None:
            timesteps = timesteps[start_step(num_steps, strength) * scheduler.order:]
        t0 = timesteps[:1].repeat(batch)

        # 3. Initial latents, drawing from the generator in the pipelines' order.
        shape = (batch, self.c.vae.config.latent_channels, height // self.c.vae_scale_factor,
                 width // self.c.vae_scale_factor)
        image = None if source is None else source.to(device, dtype) * 2 - 1
        image_latents, extra, blend_mask = None, None, None
        if mode == "txt2img":
            noise = noise if noise is not None else randn_tensor(shape, generator=generator, device=device, dtype=dtype)
            latents = noise * scheduler.init_noise_sigma
        elif mode == "img2img":
            image_latents = self.encode_image(image, generator)
            noise = noise if noise is not None else randn_tensor(shape, generator=generator, device=device, dtype=dtype)
            latents = scheduler.add_noise(image_latents, noise, t0)
        else:
            repaint = ((1 - object_mask.to(device, dtype)) >= 0.5).to(dtype)
            if not nine or strength < 1.0:
                image_latents = self.encode_image(image, generator)
            noise = noise if noise is not None else randn_tensor(shape, generator=generator, device=device, dtype=dtype)
            latents = noise * scheduler.init_noise_sigma if strength == 1.0 else \
                scheduler.add_noise(image_latents, noise, t0)
            if latent_mask == "cover":  # repaint only latent cells with no object pixel at all
                mask_latent = -torch.nn.functional.adaptive_max_pool2d(-repaint, shape[-2:])
            else:
                mask_latent = torch.nn.functional.interpolate(repaint, size=shape[-2:])
            # diffusers always encodes the masked image (one more draw); a 4-channel UNet only
            # needs that draw to keep the stream aligned when eta > 0 draws again later.
            if nine or eta > 0:
                masked_latents = self.encode_image(image * (repaint < 0.5), generator)
            if nine:
                extra = [torch.cat([mask_latent] * 2) if cfg else mask_latent,
                         torch.cat([masked_latents] * 2) if cfg else masked_latents]
            else:
                blend_mask = mask_latent
        control = None
        if conditioning is not None:
            control = conditioning.to(device, dtype)
            control = torch.cat([control] * 2) if cfg else control
            mode += "+controlnet"
        paste_mask = object_mask.to(device, dtype) if paste and object_mask is not None else None
        return RolloutState(embeds, scheduler, step_kwargs, timesteps, latents, noise, image_latents, extra,
                            blend_mask, control, conditioning_scale, guidance_scale if cfg else None, mode,
                            paste_mask, None if paste_mask is None else source.to(device, dtype))

    def _denoise_loop(self, states: list[RolloutState], use_ckpt: bool) -> None:
        """4. Denoising loop over the states' concatenated batch; each UNet call optionally checkpointed."""
        one = len(states) == 1
        cat = (lambda xs: xs[0]) if one else torch.cat  # noqa: E731 (one rollout: its own tensors, as before)
        embeds = cat([s.embeds for s in states])
        extra = None if states[0].extra is None else [cat([s.extra[j] for s in states]) for j in range(2)]
        control = None if states[0].control is None else cat([s.control for s in states])
        scale = states[0].conditioning_scale
        for i, t in enumerate(states[0].timesteps):
            inputs = [s.model_input(t) for s in states]
            with self._autocast():
                if use_ckpt:
                    pred = checkpoint(self._denoise, cat(inputs), t, embeds, extra, control, scale, use_reentrant=False)
                else:
                    pred = self._denoise(cat(inputs), t, embeds, extra, control, scale)
            pred = pred.float()
            for s, p in zip(states, [pred] if one else pred.split([len(x) for x in inputs])):
                s.advance(p, i, t)

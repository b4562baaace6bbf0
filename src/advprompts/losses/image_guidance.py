"""Guidance towards unlabelled target images: CLIP image guidance (``image_cosine``, ``image_l2``,
``image_direction``) and textual-inversion denoising (``ti_denoise``). ``target_mode`` is as for text
guidance (:mod:`advprompts.losses.guidance`), without ``adversary``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from advprompts.errors import ConfigError
from advprompts.losses.guidance import check_target_mode, combine_targets, prompt_texts
from advprompts.losses.registry import LossInputs, LossResources, LossTerm, register_loss
from advprompts.text_encoding import encode_text


def _load_targets(spec: str, max_images: int, size: int | None) -> torch.Tensor:
    from advprompts.data.folder import load_images

    return load_images(spec, max_images=max_images, image_size=size)


class _ImageGuidance(LossTerm):
    """CLIP image guidance towards unlabelled target images: their mean embedding (``target_mode:
    mean``, the paper), the nearest target image (``nearest``) or a soft minimum over them (``softmin``)."""

    def __init__(self, target_images: str, clip: str = "embedded-clip", max_images: int = 100,
                 target_mode: str = "mean", softmin_temperature: float = 1.0):
        if max_images < 1:
            raise ValueError(f"max_images={max_images}; expected >= 1")
        check_target_mode(target_mode, softmin_temperature)
        if target_mode == "adversary":
            raise ValueError("target_mode 'adversary' ranks text descriptions; image guidance takes mean, nearest or softmin")
        self.spec, self.clip_spec, self.max_images = target_images, clip, max_images
        self.target_mode, self.softmin_temperature = target_mode, softmin_temperature

    def setup(self, resources: LossResources) -> None:
        from advprompts.models.loading import load_clip

        self.clip = load_clip(self.clip_spec, device=resources.device)
        embs = self.embed_images(self.spec, resources.device)
        self.target, self.target_unit = embs.mean(0), F.normalize(embs, dim=-1).mean(0)
        self.target_rows = self.target[None] if self.target_mode == "mean" else embs

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        return self.clip(images).float()

    @torch.no_grad()
    def embed_images(self, spec: str, device: torch.device) -> torch.Tensor:
        """CLIP embeddings of up to ``max_images`` images of ``spec`` (batches of 16)."""
        images = _load_targets(spec, self.max_images, None)
        return torch.cat([self.embed(images[i:i + 16].to(device)) for i in range(0, len(images), 16)])

    def distances(self, embeddings: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, inputs: LossInputs) -> torch.Tensor:
        d = self.distances(self.embed(inputs.images))
        return combine_targets(d, self.target_mode, self.softmin_temperature).mean()


@register_loss("image_cosine")
class ImageCosine(_ImageGuidance):
    """Negative cosine between CLIP embeddings of the generations and the target embedding(s)."""

    def distances(self, embeddings: torch.Tensor) -> torch.Tensor:
        return -F.cosine_similarity(embeddings[:, None], self.target_rows[None], dim=-1)


@register_loss("image_l2")
class ImageL2(_ImageGuidance):
    """Squared L2 between CLIP embeddings of the generations and the target embedding(s)."""

    def distances(self, embeddings: torch.Tensor) -> torch.Tensor:
        return (embeddings[:, None] - self.target_rows[None]).square().sum(-1)


@register_loss("image_direction")
class ImageDirection(_ImageGuidance):
    """Directional image guidance: the negative cosine between each generation's CLIP shift from its
    own source (unit embeddings) and the shift from the source domain's mean to the target's.

    ``image_cosine`` pulls every image towards the target images' mean, content included: camera-trap
    targets nearly all show an animal, so it paints animals into empty scenes. What the source and
    target images share (animals) cancels in the direction, leaving what differs (place, light).
    """

    def __init__(self, target_images: str, source_images: str, clip: str = "embedded-clip", max_images: int = 100):
        super().__init__(target_images, clip, max_images)
        self.source_spec = source_images

    def setup(self, resources: LossResources) -> None:
        super().setup(resources)
        source = F.normalize(self.embed_images(self.source_spec, resources.device), dim=-1).mean(0)
        self.direction = F.normalize(self.target_unit - source, dim=-1)

    def __call__(self, inputs: LossInputs) -> torch.Tensor:
        if inputs.sources is None:
            raise ConfigError("loss 'image_direction' needs the source images the generations start from")
        with torch.no_grad():
            start = F.normalize(self.embed(inputs.sources.to(inputs.images.device)), dim=-1)
        shift = F.normalize(self.embed(inputs.images), dim=-1) - start
        return -F.cosine_similarity(shift, self.direction[None], dim=-1).mean()


@register_loss("ti_denoise")
class TIDenoise(LossTerm):
    """Textual-inversion denoising loss of the prompt on unlabelled target images."""

    def __init__(self, target_images: str, template: str = "{prompt}", batch_size: int = 4, max_images: int = 100):
        self.spec, self.template, self.batch_size, self.max_images = target_images, template, batch_size, max_images

    def setup(self, resources: LossResources) -> None:
        if resources.components is None:
            raise ConfigError("loss 'ti_denoise' needs the diffusion components")
        self.c = resources.components
        sample = next(iter(self.c.vae.parameters()))
        size = self.c.unet.config.sample_size * self.c.vae_scale_factor
        self.images = _load_targets(self.spec, self.max_images, size).to(sample.device)

    def __call__(self, inputs: LossInputs) -> torch.Tensor:
        c, gen = self.c, inputs.generator
        idx = torch.randint(0, len(self.images), (self.batch_size,), generator=gen)
        with torch.no_grad():
            dist = c.vae.encode(self.images[idx].to(c.vae.dtype) * 2 - 1).latent_dist
            latents = dist.sample(gen).float() * c.vae.config.scaling_factor
        noise = torch.randn(latents.shape, generator=gen).to(latents)
        t = torch.randint(0, c.scheduler.config.num_train_timesteps, (self.batch_size,), generator=gen).to(latents.device)
        noisy = c.scheduler.add_noise(latents, noise, t)
        text = prompt_texts(inputs, self.template)[0]
        embeds, _ = encode_text(c.tokenizer, c.text_encoder, [text] * self.batch_size)
        pred = c.unet(noisy.to(c.unet.dtype), t, encoder_hidden_states=embeds.to(c.unet.dtype)).sample.float()
        target = c.scheduler.get_velocity(latents, noise, t) \
            if c.scheduler.config.prediction_type == "v_prediction" else noise
        return F.mse_loss(pred, target)

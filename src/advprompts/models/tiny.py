"""Seeded tiny random diffusion components, built offline from configs in code.

They mirror ``get_dummy_components`` of diffusers' own Stable Diffusion tests (``manual_seed(0)``
before each module), so the tests and a CPU smoke run need no download. The VAE has two blocks,
hence a scale factor of 2: a 16x16 image has 8x8 latents.
"""

from __future__ import annotations

import string
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    ControlNetModel,
    DDIMScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from transformers import (
    CLIPConfig,
    CLIPModel,
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTokenizer,
)

from advprompts.models.components import Components

#: Width of the tiny text encoder; the UNet's cross-attention dimension.
TEXT_DIM = 32
MAX_LENGTH = 77


def tiny_tokenizer() -> CLIPTokenizer:
    """A working CLIP tokenizer over single characters (empty merges), built without any download."""
    specials = ["<|startoftext|>", "<|endoftext|>"]
    chars = list(string.ascii_lowercase + string.digits + ".,!?-_'")
    # With no merges every word is split into characters, the last one carrying "</w>".
    tokens = specials + chars + [c + "</w>" for c in chars]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    tok = CLIPTokenizer(vocab=vocab, merges=[])
    tok.model_max_length = MAX_LENGTH
    return tok


def tiny_text_encoder(tokenizer: CLIPTokenizer, seed: int = 0) -> CLIPTextModel:
    """A 2-layer CLIP text model of width 32 matching ``tokenizer``'s vocabulary."""
    torch.manual_seed(seed)
    config = CLIPTextConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        hidden_size=TEXT_DIM,
        intermediate_size=37,
        layer_norm_eps=1e-5,
        num_attention_heads=4,
        num_hidden_layers=2,
        vocab_size=len(tokenizer),
        max_position_embeddings=MAX_LENGTH,
        projection_dim=TEXT_DIM,
    )
    return CLIPTextModel(config).eval()


def tiny_unet(in_channels: int = 4, seed: int = 0) -> UNet2DConditionModel:
    """A UNet with ``block_out_channels=(4, 8)``; ``in_channels=9`` gives an inpainting UNet."""
    torch.manual_seed(seed)
    return UNet2DConditionModel(
        block_out_channels=(4, 8),
        layers_per_block=1,
        sample_size=8,
        in_channels=in_channels,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=TEXT_DIM,
        attention_head_dim=2,
        norm_num_groups=2,
    ).eval()


def tiny_vae(seed: int = 0) -> AutoencoderKL:
    """A two-block VAE (scale factor 2) with 4 latent channels."""
    torch.manual_seed(seed)
    return AutoencoderKL(
        block_out_channels=(4, 8),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        norm_num_groups=2,
        sample_size=16,
    ).eval()


def tiny_scheduler() -> DDIMScheduler:
    """The DDIM scheduler of Stable Diffusion v1.5."""
    return DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )


def tiny_controlnet(seed: int = 0) -> ControlNetModel:
    """A ControlNet matching :func:`tiny_unet`, its zero convolutions randomised.

    A fresh ControlNet has zero-initialised output convolutions and would not change the UNet at
    all; random values make tests that involve it able to fail.
    """
    torch.manual_seed(seed)
    net = ControlNetModel(
        block_out_channels=(4, 8),
        layers_per_block=1,
        in_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        cross_attention_dim=TEXT_DIM,
        attention_head_dim=2,
        conditioning_embedding_out_channels=(8, 16),
        norm_num_groups=2,
    )
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for module in [*net.controlnet_down_blocks, net.controlnet_mid_block]:
            for p in module.parameters():
                p.copy_(torch.randn(p.shape, generator=generator) * 0.1)
    return net.eval()


def tiny_clip(seed: int = 0, image_size: int = 32) -> CLIPModel:
    """A tiny CLIP (vision + text towers with projections) for image/text guidance tests."""
    torch.manual_seed(seed)
    tok = tiny_tokenizer()
    config = CLIPConfig(
        text_config=dict(
            hidden_size=TEXT_DIM, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
            vocab_size=len(tok), max_position_embeddings=MAX_LENGTH,
            bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        ),
        vision_config=dict(
            hidden_size=TEXT_DIM, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
            image_size=image_size, patch_size=8,
        ),
        projection_dim=16,
    )
    return CLIPModel(config).eval()


def tiny_components(
    seed: int = 0, unet_in_channels: int = 4, controlnet: bool = False
) -> Components:
    """All tiny components of a Stable Diffusion pipeline (optionally with a ControlNet).

    Args:
        seed: seed for every module's random init.
        unet_in_channels: 4 for text-to-image, 9 for an inpainting UNet.
        controlnet: also build a matching ControlNet.

    Returns:
        A :class:`~advprompts.models.components.Components` in float32 on CPU.
    """
    tokenizer = tiny_tokenizer()
    return Components(
        tokenizer=tokenizer,
        text_encoder=tiny_text_encoder(tokenizer, seed),
        unet=tiny_unet(unet_in_channels, seed),
        vae=tiny_vae(seed),
        scheduler=tiny_scheduler(),
        controlnet=tiny_controlnet(seed) if controlnet else None,
    )


def save_tiny_pipeline(path: str | Path, seed: int = 0, unet_in_channels: int = 4) -> Path:
    """Write tiny random components as a diffusers pipeline folder (``from_pretrained``-loadable)."""
    comps = tiny_components(seed, unet_in_channels)
    pipe = StableDiffusionPipeline(
        vae=comps.vae, text_encoder=comps.text_encoder, tokenizer=comps.tokenizer, unet=comps.unet,
        scheduler=comps.scheduler, safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(str(path))
    return Path(path)

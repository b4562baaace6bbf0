"""Architectures of the embedded models, chosen by measuring step times on a 2-core CPU.

Standard classes only (transformers CLIPModel, diffusers AutoencoderKL / UNet2DConditionModel /
DDIMScheduler), so every tool that loads Stable Diffusion and CLIP loads these.
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPConfig, CLIPModel

from advprompts.zoo.tokenizer import MAX_LENGTH

TEXT_WIDTH = 64
EOS = 49407

SCHEDULER_KW = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                    prediction_type="epsilon", clip_sample=False, set_alpha_to_one=False, steps_offset=1)


def clip_config() -> CLIPConfig:
    text = dict(vocab_size=49408, hidden_size=TEXT_WIDTH, intermediate_size=4 * TEXT_WIDTH, num_hidden_layers=4,
                num_attention_heads=4, max_position_embeddings=MAX_LENGTH, bos_token_id=49406, eos_token_id=EOS,
                pad_token_id=EOS, projection_dim=64)
    vision = dict(image_size=64, patch_size=8, hidden_size=128, intermediate_size=512, num_hidden_layers=4,
                  num_attention_heads=4, projection_dim=64)
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=64)


def make_clip(seed: int = 0) -> CLIPModel:
    torch.manual_seed(seed)
    return CLIPModel(clip_config())


def make_vae(seed: int = 0) -> AutoencoderKL:
    # 64 px -> 16x16x4 latents (factor 4, like SD's factor 8 at 512 px).
    torch.manual_seed(seed)
    return AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3, block_out_channels=(24, 48, 64), layers_per_block=1,
        latent_channels=4, norm_num_groups=8, sample_size=64, mid_block_add_attention=False,
    )


def make_unet(seed: int = 0, in_channels: int = 4) -> UNet2DConditionModel:
    # diffusers reads `attention_head_dim` as the number of heads here. 2 heads (24/48 channels each)
    # instead of 8 (6/12): the CPU attention kernels are bound by the number of 256x256 softmaxes, so a
    # training step at batch 64 takes 0.84 s instead of 1.39 s (2-core AMD EPYC), same parameters.
    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=16, in_channels=in_channels, out_channels=4, block_out_channels=(48, 96, 96), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=TEXT_WIDTH, attention_head_dim=2, norm_num_groups=16,
    )


def train_scheduler() -> DDPMScheduler:
    return DDPMScheduler(**{k: v for k, v in SCHEDULER_KW.items() if k not in ("set_alpha_to_one",)})


def sample_scheduler() -> DDIMScheduler:
    return DDIMScheduler(**SCHEDULER_KW)

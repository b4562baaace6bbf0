"""Models and configs the benchmark runs on.

The embedded model is loaded when its weights exist; otherwise a model with the embedded
architecture and random weights stands in (time does not depend on the weights' values) and the
report says so. Memory is measured on the Stable Diffusion 1.5 architecture with random weights.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import torch

from advprompts.config.schema import RunConfig, parse_config
from advprompts.errors import ModelLoadError
from advprompts.models.loading import Components, load_components

logger = logging.getLogger(__name__)

DESCRIPTIONS = ["in the snow", "on a frozen lake"]
TEMPLATE = "a photo of a {class} {prompt}"


def _tokenizer(max_length: int):
    from transformers import CLIPTokenizer

    # The committed CLIP BPE tokenizer (identical to SD 1.5's), so no download is needed.
    tok = CLIPTokenizer.from_pretrained(str(Path(__file__).parents[1] / "zoo" / "clip_tokenizer"))
    tok.model_max_length = max_length
    return tok


def embedded_architecture() -> tuple[Components, torch.nn.Module]:
    """The embedded model's architecture with random weights: (diffusion components, CLIPModel)."""
    from transformers import CLIPTextModel

    from advprompts.zoo import architectures as arch
    from advprompts.zoo.tokenizer import MAX_LENGTH

    clip = arch.make_clip()
    text = CLIPTextModel(clip.config.text_config)
    text.load_state_dict(clip.text_model.state_dict())
    comps = Components(tokenizer=_tokenizer(MAX_LENGTH), text_encoder=text, unet=arch.make_unet(), vae=arch.make_vae(),
                       scheduler=arch.sample_scheduler(), source="embedded-architecture")
    return comps, clip


def load_models(spec: str, device: torch.device, workdir: Path) -> tuple[Components, str, str]:
    """(components, CLIP spec for image guidance, description) for ``tiny`` or ``embedded``."""
    if spec == "tiny":
        return load_components("tiny", device=device), "tiny", "tiny random components"
    from advprompts.zoo.paths import clip_path

    try:
        comps = load_components("embedded", device=device)
        if clip_path().is_dir():
            return comps, "embedded-clip", "embedded (shipped weights)"
    except ModelLoadError:
        pass
    comps, clip = embedded_architecture()
    clip.save_pretrained(workdir / "clip")  # image guidance loads CLIP by path
    note = "embedded architecture with random weights (embedded weights not found)"
    logger.warning("benchmark: %s", note)
    return comps.to(device).freeze(), str(workdir / "clip"), note


def sd15_components(device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> Components:
    """Stable Diffusion 1.5's architecture (860M UNet, 84M VAE, 123M text encoder), random weights."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from advprompts.zoo.architectures import sample_scheduler

    text = CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072,
                                        num_hidden_layers=12, num_attention_heads=12, max_position_embeddings=77,
                                        hidden_act="quick_gelu", bos_token_id=49406, eos_token_id=49407,
                                        pad_token_id=49407))
    # UNet2DConditionModel's defaults are SD 1.x's UNet except the text width.
    unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768)
    vae = AutoencoderKL(down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                        block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
                        sample_size=512, scaling_factor=0.18215)
    comps = Components(tokenizer=_tokenizer(77), text_encoder=text, unet=unet, vae=vae, scheduler=sample_scheduler(),
                       source="sd15-architecture")
    return comps.to(device, dtype).freeze()


def task_model(device: torch.device) -> torch.nn.Module:
    from advprompts.tasks.models import load_task_model

    torch.manual_seed(0)
    return load_task_model("small_cnn", 2).to(device).eval().requires_grad_(False)


def step_config(*, model: str, device: torch.device, image_size: int, batch_size: int, num_steps: int,
                guidance_scale: float, num_tokens: int, steps: int, checkpointing: bool | str, clip: str | None,
                autocast: str = "none") -> RunConfig:
    """An optimisation run on tiny-synth: AP (opposite-class CE), or GAP (+ text and image guidance)
    when ``clip`` is given; no logging, sampling or checkpoint files get in the way of timing (nor term gradient
    norms, whose logging costs GAP a second backward pass through the sampler)."""
    losses = [{"name": "opposite_ce"}]
    if clip is not None:
        losses += [{"name": "text_l2", "weight": 0.1, "params": {"descriptions": DESCRIPTIONS, "renormalize": True}},
                   {"name": "image_cosine", "params": {"target_images": "tiny-synth:target", "clip": clip,
                                                       "max_images": 8}}]
    return parse_config({
        "method": "gap" if clip else "ap",
        "model": {"diffusion": model, "device": str(device), "autocast": autocast},
        "sampler": {"num_steps": num_steps, "guidance_scale": guidance_scale, "conditioning": "inpaint",
                    "paste": True, "image_size": image_size, "gradient_checkpointing": checkpointing},
        "prompt": {"num_tokens": num_tokens, "template": TEMPLATE},
        "data": {"source": "tiny-synth:train"},
        "task": {"arch": "small_cnn", "num_classes": 2},
        "losses": losses,
        "optim": {"batch_size": batch_size, "steps": steps, "lr": 1e-3},
        "log": {"sample_every": 0, "checkpoint_every": 10**9, "tensorboard": False, "progress": False,
                "grad_norm_every": 0},
    }, RunConfig, what="benchmark")


def dataset(image_size: int, n: int = 16):
    from advprompts.data.synthetic import TinySynth

    return TinySynth(split="train", image_size=image_size, n=n)


def workdir() -> tempfile.TemporaryDirectory:
    return tempfile.TemporaryDirectory(prefix="advprompts-bench-")

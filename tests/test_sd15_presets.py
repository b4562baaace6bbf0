"""The paper presets (waterbirds-sd15-*, iwildcam-sd15-*): their settings, a short optimise +
generate run on fake real-layout data with tiny models saved as real model folders, the model
loaders' messages, task models by name, and one optimisation step at SD 1.5's real size (64 px)."""

from __future__ import annotations

import csv
import sys
import types
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from advprompts.config.presets import load_config
from advprompts.config.schema import GenerateConfig
from advprompts.errors import ConfigError, ModelLoadError
from advprompts.generate import generate_dataset
from advprompts.models.loading import load_clip, load_components
from advprompts.models.tiny import save_tiny_pipeline, tiny_clip, tiny_controlnet, tiny_tokenizer
from advprompts.optim.loop import optimize
from advprompts.tasks.models import load_task_model
from test_real_data import make_iwildcam, make_waterbirds

PRESETS = ["waterbirds-sd15-gap", "waterbirds-sd15-ap", "iwildcam-sd15-gap", "iwildcam-sd15-ap"]
FAST = ["model.device=cpu", "sampler.image_size=16", "task.arch=small_cnn", "optim.steps=1", "prompt.seeds=[0]",
        "optim.batch_size=1", "optim.grad_accum=1", "log.tensorboard=false", "log.progress=false",
        "log.sample_every=0"]


def test_presets_carry_the_paper_settings():
    """The numbers of the paper's settings table (docs: ../shared/METHOD.md)."""
    for name in PRESETS:
        c = load_config(name)
        wb = name.startswith("waterbirds")
        assert c.model.diffusion == "stable-diffusion-v1-5/stable-diffusion-v1-5" and c.sampler.image_size == 384
        sampler = (c.sampler.num_steps, c.sampler.guidance_scale, c.sampler.strength)
        assert sampler == ((5, 7.0, 1.0) if wb else (5, 5.0, 0.8))
        assert c.prompt.num_tokens == (5 if wb else 10) and c.optim.optimizer == "adam" and c.optim.lr == 1e-3
        assert c.task.arch == "resnet50" and c.task.num_classes == (2 if wb else 7)
        if not wb:
            assert c.optim.batch_size * c.optim.grad_accum == 8
        losses = {l.name: l for l in c.losses}
        assert next(iter(losses)) == ("opposite_ce" if wb else "uniform_ce")
        gap = name.endswith("gap")
        assert c.optim.steps == {(True, True): 1000, (True, False): 1000, (False, True): 10000,
                                 (False, False): 2000}[wb, gap]
        if wb:
            assert c.prompt.per_class and len(c.prompt.seeds) == 4  # 4 prompts per class
        if gap and wb:
            assert losses["text_l2"].weight == 20 and losses["text_l2"].params["renormalize"] is True
        if gap and not wb:
            assert losses["image_cosine"].weight == 10 and losses["uniform_ce"].warmup == 2000
            assert losses["image_cosine"].params["clip"] == "openai/clip-vit-large-patch14"
        assert len(losses) == (2 if gap else 1)


def test_waterbirds_gap_preset_optimise_then_generate(tmp_path):
    root = make_waterbirds(tmp_path / "data")
    model = save_tiny_pipeline(tmp_path / "sd")  # a real diffusers pipeline folder
    config = load_config("waterbirds-sd15-gap", [*FAST, f"model.diffusion={model}",
                                                 f"data.source=waterbirds:train_majority@{root}"])
    result = optimize(config, tmp_path / "run")
    assert [p.key for p in result.prompts] == ["c0-s0", "c1-s0"]  # one prompt per class
    assert set(result.prompts[0].losses) >= {"opposite_ce", "text_l2", "total"}
    gen = GenerateConfig.model_validate(dict(
        model={"diffusion": str(model), "device": "cpu"}, source=f"waterbirds:ood_pool@{root}",
        sampler={"num_steps": 1, "guidance_scale": 7.0, "image_size": 16},
        prompt_files=[str(p) for p in result.prompt_files]))
    out = generate_dataset(gen, tmp_path / "gen")
    rows = list(csv.DictReader(open(tmp_path / "gen" / "metadata.csv")))
    # class_prompts "own": each class's prompt edits only that class's sources (one pool image each)
    assert out.written == 2 and {r["group"] for r in rows} == {"landbird-water", "waterbird-land"}
    assert all(r["prompt_file"].endswith(f"prompt_c{r['label']}-s0.safetensors") for r in rows)
    assert all((tmp_path / "gen" / r["file_name"]).is_file() for r in rows)


def test_iwildcam_gap_preset_with_an_inpainting_unet_and_a_clip_folder(tmp_path):
    root = make_iwildcam(tmp_path / "data")
    model = save_tiny_pipeline(tmp_path / "sd-inpaint", unet_in_channels=9)
    clip_dir = tmp_path / "clip"
    tiny_clip().save_pretrained(clip_dir)
    tiny_tokenizer().save_pretrained(clip_dir)
    config = load_config("iwildcam-sd15-gap", [*FAST, f"model.diffusion={model}", f"data.source=iwildcam:train@{root}",
                                               f"losses.1.params.target_images=iwildcam:target-287-day@{root}?n=2",
                                               f"losses.1.params.clip={clip_dir}", "losses.0.warmup=0"])
    result = optimize(config, tmp_path / "run")
    assert set(result.prompts[0].losses) >= {"uniform_ce", "image_cosine"}
    comps = load_components(str(model), controlnet=_controlnet_folder(tmp_path))
    assert comps.unet.config.in_channels == 9 and comps.controlnet is not None
    assert load_clip(str(clip_dir)).tokenizer is not None


def _controlnet_folder(tmp_path):
    path = tmp_path / "controlnet"
    tiny_controlnet().save_pretrained(path)
    return str(path)


@pytest.mark.parametrize("loader,spec,words", [
    (load_clip, "openai/clip-vit-large-patch14", "CLIPModel folder"),
    (load_components, "stable-diffusion-v1-5/stable-diffusion-v1-5", "diffusers pipeline folder"),
])
def test_offline_models_say_what_where_and_how(tmp_path, monkeypatch, loader, spec, words):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(ModelLoadError) as err:
        loader(spec)
    msg = str(err.value)
    assert "\n" not in msg and spec in msg and words in msg and str(tmp_path / "hub") in msg
    assert f"hf download {spec} --local-dir DIR" in msg


def test_task_models_by_library_name(tmp_path, monkeypatch):
    model = load_task_model("torchvision:mobilenet_v3_small", 3)
    x = torch.rand(1, 3, 32, 32)
    save_file({k: v.contiguous() for k, v in model.net.state_dict().items()}, str(tmp_path / "w.safetensors"))
    again = load_task_model("torchvision:mobilenet_v3_small", 3, weights=tmp_path / "w.safetensors")
    assert torch.equal(model.eval()(x), again(x))
    with pytest.raises(ConfigError, match="torchvision has no model 'resnet9000'"):
        load_task_model("torchvision:resnet9000", 3)
    monkeypatch.setitem(sys.modules, "timm", None)  # timm absent: say how to add it without touching torch
    with pytest.raises(ConfigError, match="pip install timm --no-deps"):
        load_task_model("timm:resnet18", 3)
    fake = types.SimpleNamespace(is_model=lambda n: n == "tiny_net", create_model=lambda n, pretrained, num_classes:
                                 torch.nn.Sequential(torch.nn.Flatten(), torch.nn.LazyLinear(num_classes)))
    monkeypatch.setitem(sys.modules, "timm", fake)
    assert load_task_model("timm:tiny_net", 4)(x).shape == (1, 4)


def sd15_components(in_channels: int = 4):
    """Stable Diffusion 1.5's architecture (UNet 860M, VAE 84M, CLIP ViT-L/14 text encoder 123M,
    its BPE tokenizer, its DDIM schedule) with seeded random weights: nothing is downloaded."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    import advprompts.zoo
    from advprompts.models.loading import Components
    from advprompts.models.tiny import tiny_scheduler

    tokenizer = CLIPTokenizer.from_pretrained(str(Path(advprompts.zoo.__file__).parent / "clip_tokenizer"),
                                              model_max_length=77)
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=64, in_channels=in_channels, out_channels=4, layers_per_block=2,
        block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768, attention_head_dim=8,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)
    vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                        sample_size=512, scaling_factor=0.18215)
    text = CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                        num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu",
                                        projection_dim=768, bos_token_id=tokenizer.bos_token_id,
                                        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id))
    return Components(tokenizer, text.eval(), unet.eval(), vae.eval(), tiny_scheduler(), source="sd15-random").freeze()


def test_sd15_architecture_runs_one_preset_step_at_64px(tmp_path):
    """The real Waterbirds GAP preset on SD 1.5's real dimensions (random weights) at 64 px.

    Batch 1, 1 DDIM step, 1 optimisation step keep it near 20 s on 2 CPU cores (5.5 GB RSS);
    the preset's 5 DDIM steps take 21 s more per optimisation step.
    """
    import time

    from safetensors.torch import load_file

    root = make_waterbirds(tmp_path / "data")
    t0 = time.perf_counter()
    comps = sd15_components()
    built = time.perf_counter() - t0
    assert sum(p.numel() for p in comps.unet.parameters()) == 859_520_964
    before = comps.text_encoder.get_input_embeddings().weight.clone()
    overrides = ["model.device=cpu", "sampler.image_size=64", "sampler.num_steps=1", "optim.steps=1",
                 "optim.batch_size=1", "prompt.seeds=[0]", "prompt.per_class=false", "log.tensorboard=false",
                 "log.progress=false", "log.sample_every=0", f"data.source=waterbirds:train_majority@{root}"]
    result = optimize(load_config("waterbirds-sd15-gap", overrides), tmp_path / "run", components=comps)
    prompt = result.prompts[0]
    assert prompt.steps == 1 and all(torch.isfinite(torch.tensor(v)) for v in prompt.losses.values())
    learned = next(iter(load_file(str(prompt.file)).values()))
    assert learned.shape[-1] == 768  # 5 placeholder rows of CLIP ViT-L/14's width
    assert torch.equal(comps.text_encoder.get_input_embeddings().weight[: len(before)], before)  # frozen vocabulary
    print(f"SD 1.5 architecture: built in {built:.1f} s, one step at 64 px in {prompt.losses['seconds']:.1f} s")

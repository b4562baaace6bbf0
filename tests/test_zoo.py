"""The embedded zoo: a tiny-recipe build (seconds) and the shipped models."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from advprompts.zoo.build import StageTimes, build, sha256
from advprompts.zoo.paths import zoo_dir
from advprompts.zoo.trainers import ZooRecipe

TINY = ZooRecipe(corpus_size=48, clip_steps=2, clip_batch=8, vae_steps=2, vae_batch=4, unet_steps=2, unet_batch=4,
                 inpaint_steps=2, inpaint_batch=4, oracle_steps=2, oracle_batch=8)


def test_tiny_build_is_a_diffusers_pipeline_and_resumes_identically(tmp_path, monkeypatch):
    from diffusers import StableDiffusionPipeline
    from transformers import CLIPModel

    out = build(tmp_path / "zoo", tmp_path / "work", TINY, dtype=torch.float32)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["device"] == "cpu" and manifest["recipe"]["device"] == "cpu"
    pipe = StableDiffusionPipeline.from_pretrained(out / "sd")
    pipe.set_progress_bar_config(disable=True)
    img = pipe("a photo of a duck in a lake", num_inference_steps=2, generator=torch.Generator().manual_seed(0),
               output_type="np").images
    assert img.shape == (1, 64, 64, 3) and np.isfinite(img).all()
    assert CLIPModel.from_pretrained(out / "clip").config.text_config.hidden_size == 64
    # The 9-channel inpainting UNet: swapped into diffusers' inpainting pipeline, and `embedded-inpaint`.
    from diffusers import StableDiffusionInpaintPipeline, UNet2DConditionModel

    from advprompts.models.loading import load_components

    unet9 = UNet2DConditionModel.from_pretrained(out / "sd", subfolder="unet_inpaint")
    assert unet9.config.in_channels == 9
    inpaint = StableDiffusionInpaintPipeline(**{**pipe.components, "unet": unet9})
    inpaint.set_progress_bar_config(disable=True)
    mask = torch.zeros(1, 1, 64, 64)
    mask[..., 16:48, 16:48] = 1
    img = inpaint("a photo of a duck in a lake", image=torch.rand(1, 3, 64, 64), mask_image=mask, num_inference_steps=2,
                  generator=torch.Generator().manual_seed(0), output_type="np").images
    assert img.shape == (1, 64, 64, 3) and np.isfinite(img).all()
    monkeypatch.setenv("ADVPROMPTS_ZOO_DIR", str(out))
    assert load_components("embedded-inpaint").unet.config.in_channels == 9
    times = manifest["build_times_s"]
    assert {"corpus_s", "clip_s", "vae_s", "unet_s", "inpaint_s", "oracle_s", "save_s"} <= set(times)
    assert times["total_s"] == pytest.approx(sum(v for k, v in times.items() if k != "total_s"), abs=0.2)
    # A rerun finds every stage's checkpoint finished and rewrites the same weights.
    build(tmp_path / "zoo2", tmp_path / "work", TINY, dtype=torch.float32)
    again = json.loads((tmp_path / "zoo2" / "manifest.json").read_text())
    weights = [k for k in manifest["files"] if k.endswith(".safetensors")]
    assert len(weights) >= 5
    assert all(manifest["files"][k]["sha256"] == again["files"][k]["sha256"] for k in weights)
    # `zoo retrain-inpaint` first copies the base zoo whole, through a temporary folder.
    from advprompts.zoo.build import copy_zoo, retrain_inpaint

    copy = copy_zoo(out, tmp_path / "copy")
    assert (copy / "manifest.json").read_bytes() == (out / "manifest.json").read_bytes()
    assert (copy / "sd" / "unet_inpaint").is_dir() and not (tmp_path / "copy.partial").exists()
    # Retraining only the inpainting stage replaces sd/unet_inpaint, records how, and drops the old gates.
    manifest["gates"] = {"old": {"value": 1.0, "threshold": 0.9, "passed": True}}
    (out / "manifest.json").write_text(json.dumps(manifest))
    retrain_inpaint(out, tmp_path / "work_inpaint", replace(TINY, inpaint_ring_weight=4.0), dtype=torch.float32)
    redone = json.loads((out / "manifest.json").read_text())
    key = "sd/unet_inpaint/diffusion_pytorch_model.safetensors"
    assert redone["files"][key]["sha256"] != manifest["files"][key]["sha256"]
    assert redone["files"]["sd/unet/diffusion_pytorch_model.safetensors"] == \
        manifest["files"]["sd/unet/diffusion_pytorch_model.safetensors"]
    assert redone["recipe"]["inpaint_ring_weight"] == 4.0 and "gates" not in redone
    assert redone["inpaint_retrained"]["times_s"]["inpaint_s"] > 0
    assert UNet2DConditionModel.from_pretrained(out / "sd", subfolder="unet_inpaint").config.in_channels == 9
    # A zoo built without the inpainting UNet says so in one line.
    import shutil

    from advprompts.errors import ModelLoadError

    shutil.rmtree(tmp_path / "zoo2" / "sd" / "unet_inpaint")
    monkeypatch.setenv("ADVPROMPTS_ZOO_DIR", str(tmp_path / "zoo2"))
    with pytest.raises(ModelLoadError, match="has no unet_inpaint/"):
        load_components("embedded-inpaint")


def test_stage_times_add_up_across_an_interrupted_and_a_resumed_run(tmp_path, monkeypatch):
    clock = iter([100.0, 130.0, 500.0, 520.5, 600.0, 601.0])
    monkeypatch.setattr("advprompts.zoo.build.time.time", lambda: next(clock))
    with pytest.raises(KeyboardInterrupt), StageTimes(tmp_path / "t.json").stage("unet_s"):
        raise KeyboardInterrupt  # a crash 30 s into the stage
    timer = StageTimes(tmp_path / "t.json")  # the resumed build
    with timer.stage("unet_s"):
        pass
    with timer.stage("oracle_s"):
        pass
    assert timer.summary() == {"unet_s": 50.5, "oracle_s": 1.0, "total_s": 51.5}


def test_stage_times_survive_a_killed_build(tmp_path):
    """SIGKILL skips `finally`: the heartbeat must already have written the stage's running time."""
    import signal
    import subprocess
    import sys
    import time

    script = (f"import time; from pathlib import Path; from advprompts.zoo.build import StageTimes\n"
              f"with StageTimes(Path({str(tmp_path / 't.json')!r}), flush_every=0.2).stage('unet_s'):\n"
              f"    time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", script])
    deadline = time.time() + 30
    while time.time() < deadline and not (tmp_path / "t.json").exists():
        time.sleep(0.1)
    time.sleep(1.0)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    recorded = StageTimes(tmp_path / "t.json").times["unet_s"]
    assert 0.8 <= recorded <= 30


def test_training_log_seconds_continue_across_a_resume(tmp_path, monkeypatch):
    from advprompts.zoo.train_common import train_loop

    ticks = iter(range(10**6))  # a clock that advances one second per call
    monkeypatch.setattr("advprompts.zoo.train_common.time.time", lambda: float(next(ticks)))
    model = torch.nn.Linear(2, 1)

    def step_fn(step):
        return {"loss": model(torch.ones(1, 2)).square().sum()}

    log = tmp_path / "log.csv"
    for steps in (50, 100):  # the second call resumes from the first one's checkpoint
        train_loop("m", model, model.parameters(), step_fn, steps, 1e-3, tmp_path / "m.pt", warmup=1,
                   ckpt_every=50, log_file=log)
    first, second = (float(line.split(",")[2]) for line in log.read_text().splitlines())
    assert second > 1.8 * first  # counted from the first run's start, not from the resume


def test_transformers_configs_say_float32_whatever_the_weights(tmp_path):
    """transformers 5 loads in the config's dtype: float32 there lets a plain from_pretrained upcast fp16 weights."""
    from advprompts.zoo.build import load_as_float32

    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"dtype": "float16", "text_config": {"dtype": "float16", "hidden_size": 64},
                               "vision_config": {"hidden_size": 128}}))
    load_as_float32(cfg)
    out = json.loads(cfg.read_text())
    assert out["dtype"] == out["text_config"]["dtype"] == "float32" and "dtype" not in out["vision_config"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_build_refuses_a_missing_gpu_before_writing(tmp_path):
    from dataclasses import replace

    from advprompts.errors import ConfigError

    with pytest.raises(ConfigError, match="device 'cuda' is requested but no CUDA device is visible; use cpu or auto"):
        build(tmp_path / "zoo", tmp_path / "work", replace(TINY, device="cuda"))
    assert not (tmp_path / "work").exists()


shipped = pytest.mark.skipif(not (zoo_dir() / "manifest.json").exists(), reason="no embedded weights in this tree")


@shipped
def test_ring_weights_mark_the_repainted_cells_next_to_the_kept_object():
    from advprompts.zoo.unet_trainers import ring_weights

    repaint = torch.ones(1, 1, 8, 8)
    repaint[..., 3:5, 3:5] = 0  # a 2x2 kept object
    w = ring_weights(repaint, ring=1, weight=4.0)[0, 0]
    assert (w[3:5, 3:5] == 1).all()  # kept cells: plain weight
    assert (w[2:6, 2:6].sum() - 4) == 12 * 5  # the 12 cells around it: 1 + 4
    assert w.sum() == 64 + 12 * 4  # everything else: 1
    assert (ring_weights(repaint, ring=2, weight=4.0)[0, 0] == 5).sum() == 36 - 4
    assert (ring_weights(torch.ones(1, 1, 8, 8), 2, 4.0) == 1).all()  # nothing kept, nothing weighted


def test_shipped_files_match_manifest():
    manifest = json.loads((zoo_dir() / "manifest.json").read_text())
    assert manifest["total_mb"] <= 40
    for rel, meta in manifest["files"].items():
        assert sha256(zoo_dir() / rel) == meta["sha256"], rel
    assert all(g["passed"] for g in manifest["gates"].values())


@shipped
def test_shipped_pipeline_draws_the_prompted_object():
    from diffusers import StableDiffusionPipeline

    from advprompts.zoo.corpus import OBJECT_NAMES, PLACE_NAMES
    from advprompts.zoo.oracle import Oracle

    pipe = StableDiffusionPipeline.from_pretrained(zoo_dir() / "sd", torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    images = pipe(["a photo of a zebra in the snow", "a photo of a boat in the ocean"] * 4, num_inference_steps=15,
                  guidance_scale=6.0, generator=torch.Generator().manual_seed(0), output_type="pt").images
    pred = Oracle.load(zoo_dir() / "oracle").predict(images.float())
    want_obj = np.array([OBJECT_NAMES.index(o) for o in ["zebra", "boat"] * 4])
    want_place = np.array([PLACE_NAMES.index(p) for p in ["snow", "ocean"] * 4])
    assert (pred["object"] == want_obj).mean() >= 0.75
    assert (pred["place"] == want_place).mean() >= 0.75


def test_inpaint_gate_with_a_kind_prompt_and_measured_rows(tiny):
    from diffusers import StableDiffusionInpaintPipeline

    from advprompts.zoo.check import Gate, format_gates, inpaint_gate
    from advprompts.zoo.oracle import Oracle

    c = tiny
    pipe = StableDiffusionInpaintPipeline(vae=c.vae, text_encoder=c.text_encoder, tokenizer=c.tokenizer, unet=c.unet,
                                          scheduler=c.scheduler, safety_checker=None, feature_extractor=None,
                                          requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    prompts = []
    kept, place = inpaint_gate(pipe, Oracle().eval(), 1, 3.0, 4, 0, ["duck", "sparrow"],
                               lambda o, p: prompts.append((o, p)) or f"a photo of a bird {p}")
    assert [o for o, _ in prompts] == ["duck", "sparrow"] * 2 and all(p != "" for _, p in prompts)
    assert 0.0 <= kept <= 1.0 and 0.0 <= place <= 1.0
    rows = format_gates([Gate("gated", 0.5, 0.9), Gate("measured", 0.5, None)]).splitlines()
    assert rows[2].endswith("| >= 0.9 | FAIL |") and rows[3].endswith("| - | measured |")
    assert Gate("measured", 0.0, None).passed


def test_per_object_figures_name_the_commonest_mistake():
    from advprompts.zoo.check import format_per_object, object_figures
    from advprompts.zoo.corpus import NO_OBJECT, OBJECT_NAMES

    duck, sparrow, cattle = (OBJECT_NAMES.index(o) for o in ("duck", "sparrow", "cattle"))
    truth = np.array([duck] * 4 + [sparrow] * 4)
    pred = np.array([duck, duck, duck, NO_OBJECT, cattle, cattle, sparrow, duck])
    fig = object_figures(truth, pred)
    assert (fig["duck"].right, fig["duck"].most_confused_with) == (0.75, "empty")
    assert (fig["sparrow"].right, fig["sparrow"].most_confused_with) == (0.25, "cattle")
    assert np.isnan(fig["zebra"].right) and fig["zebra"].most_confused_with is None
    assert "| sparrow | 0.25 | cattle |" in format_per_object(fig).splitlines()

"""The embedded zoo: a tiny-recipe build (seconds) and the shipped models."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from advprompts.zoo.build import build, sha256
from advprompts.zoo.paths import zoo_dir
from advprompts.zoo.trainers import ZooRecipe

TINY = ZooRecipe(corpus_size=48, clip_steps=2, clip_batch=8, vae_steps=2, vae_batch=4, unet_steps=2, unet_batch=4,
                 oracle_steps=2, oracle_batch=8)


def test_tiny_build_is_a_diffusers_pipeline_and_resumes_identically(tmp_path):
    from diffusers import StableDiffusionPipeline
    from transformers import CLIPModel

    out = build(tmp_path / "zoo", tmp_path / "work", TINY, dtype=torch.float32)
    manifest = json.loads((out / "manifest.json").read_text())
    pipe = StableDiffusionPipeline.from_pretrained(out / "sd")
    pipe.set_progress_bar_config(disable=True)
    img = pipe("a photo of a duck in a lake", num_inference_steps=2, generator=torch.Generator().manual_seed(0),
               output_type="np").images
    assert img.shape == (1, 64, 64, 3) and np.isfinite(img).all()
    assert CLIPModel.from_pretrained(out / "clip").config.text_config.hidden_size == 64
    # A rerun finds every stage's checkpoint finished and rewrites the same weights.
    build(tmp_path / "zoo2", tmp_path / "work", TINY, dtype=torch.float32)
    again = json.loads((tmp_path / "zoo2" / "manifest.json").read_text())
    weights = [k for k in manifest["files"] if k.endswith(".safetensors")]
    assert len(weights) >= 5
    assert all(manifest["files"][k]["sha256"] == again["files"][k]["sha256"] for k in weights)


shipped = pytest.mark.skipif(not (zoo_dir() / "manifest.json").exists(), reason="no embedded weights in this tree")


@shipped
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

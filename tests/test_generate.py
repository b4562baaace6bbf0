"""Generation: text-to-image equals diffusers, source-conditioned sets, shards, resume, atomicity."""

from __future__ import annotations

import csv
import copy

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline
from PIL import Image

from advprompts.config.schema import GenerateConfig, ModelConfig, SamplerConfig
from advprompts.data import FolderDataset
from advprompts.errors import ConfigError, OutputExistsError, ShardError
from advprompts.generate import generate_dataset, generate_text2img
from advprompts.models.tiny import save_tiny_pipeline
from advprompts.prompts import LearnablePrompt
from advprompts.shards import parse_shard


SAMPLER = SamplerConfig(num_steps=3, guidance_scale=4.0, conditioning="none")  # text-to-image's settings


def cpu(model):
    return ModelConfig(diffusion=str(model), device="cpu")


def _rows(path):
    return list(csv.DictReader(open(path / "metadata.csv")))


def test_text2img_matches_from_pretrained_pipeline(tmp_path):
    model = save_tiny_pipeline(tmp_path / "model")
    pipe = StableDiffusionPipeline.from_pretrained(str(model))
    pipe.set_progress_bar_config(disable=True)
    ref = pipe("a red bird", num_images_per_prompt=5, num_inference_steps=3, guidance_scale=4.0,
               generator=torch.Generator().manual_seed(9)).images
    # Two shards with a batch size that does not divide the count: same images, same order.
    for i in range(2):
        res = generate_text2img(cpu(model), "a red bird", tmp_path / "out", num_images=5, sampler=SAMPLER, seed=9,
                                shard=(i, 2), batch_size=2)
        assert res.written == (3 if i == 0 else 2)
    for k, image in enumerate(ref):
        ours = np.asarray(Image.open(tmp_path / "out" / f"images/{k:05d}.png")).astype(int)
        assert np.abs(ours - np.asarray(image).astype(int)).max() == 0, f"image {k} differs"
    assert [r["file_name"] for r in _rows(tmp_path / "out")] == [f"images/{k:05d}.png" for k in range(5)]
    again = generate_text2img(cpu(model), "a red bird", tmp_path / "out", num_images=5, sampler=SAMPLER, seed=9,
                              shard=(0, 2), batch_size=2)
    assert again.written == 0 and again.skipped == 3
    with pytest.raises(OutputExistsError, match="different run"):
        generate_text2img(str(model), "a blue bird", tmp_path / "out", num_images=5, sampler=SAMPLER, seed=9)


def test_negative_prompt_matches_diffusers_and_older_runs_continue(tmp_path):
    model = save_tiny_pipeline(tmp_path / "model")
    pipe = StableDiffusionPipeline.from_pretrained(str(model))
    pipe.set_progress_bar_config(disable=True)
    ref = pipe("a red bird", negative_prompt="a blue bird", num_images_per_prompt=2, num_inference_steps=3,
               guidance_scale=4.0, generator=torch.Generator().manual_seed(9)).images
    kw = dict(num_images=2, seed=9)
    negative = SAMPLER.model_copy(update={"negative_prompt": "a blue bird"})
    generate_text2img(cpu(model), "a red bird", tmp_path / "neg", sampler=negative, **kw)
    generate_text2img(cpu(model), "a red bird", tmp_path / "plain", sampler=SAMPLER, **kw)
    for k, image in enumerate(ref):
        ours = np.asarray(Image.open(tmp_path / "neg" / f"images/{k:05d}.png")).astype(int)
        assert np.abs(ours - np.asarray(image).astype(int)).max() == 0, f"image {k} differs"
    plain = [np.asarray(Image.open(tmp_path / "plain" / f"images/{k:05d}.png")).astype(int) for k in range(2)]
    assert max(np.abs(p - np.asarray(r).astype(int)).max() for p, r in zip(plain, ref)) > 0

    # A run written before the option existed (no key in its config) is the same run when it is unset.
    import yaml

    stored = tmp_path / "plain" / "text2img.yaml"
    old = yaml.safe_load(stored.read_text())
    del old["negative_prompt"]
    stored.write_text(yaml.safe_dump(old))
    assert generate_text2img(cpu(model), "a red bird", tmp_path / "plain", sampler=SAMPLER, **kw).skipped == 2
    with pytest.raises(OutputExistsError, match="negative_prompt"):
        generate_text2img(cpu(model), "a red bird", tmp_path / "plain",
                          sampler=SAMPLER.model_copy(update={"negative_prompt": "a cat"}), **kw)


def test_negative_prompt_reaches_source_conditioned_generation(tiny, tmp_path):
    base = dict(model={"diffusion": "tiny", "device": "cpu"}, source="tiny-synth:train", prompts=["a {class}"],
                sampler={"num_steps": 2, "guidance_scale": 3.0, "strength": 0.9}, batch_size=16)
    images = {}
    for neg in (None, "a disc on snow"):
        config = GenerateConfig(**{**base, "sampler": {**base["sampler"], "negative_prompt": neg}})
        out = generate_dataset(config, tmp_path / str(neg), components=tiny).out_dir
        images[neg] = np.asarray(Image.open(out / "images/00000.png")).astype(int)
    assert np.abs(images[None] - images["a disc on snow"]).max() > 0


def _gen_config(prompt_file, **kw):
    base = dict(model={"diffusion": "tiny", "device": "cpu"}, source="tiny-synth:train",
                sampler={"num_steps": 2, "guidance_scale": 3.0, "strength": 0.9}, prompt_files=[str(prompt_file)],
                prompts=["a {class} on snow"], batch_size=3, seed=1)
    base.update(kw)
    return GenerateConfig.model_validate(base)


def test_source_conditioned_generation_shards_resume_and_readers(tiny, _tiny_session, tmp_path):
    learned = LearnablePrompt(tiny.tokenizer, tiny.text_encoder, num_tokens=2, template="a {class} {prompt}")
    path = learned.save(tmp_path / "prompt_s0.safetensors")
    comps = copy.deepcopy(_tiny_session["txt2img"]).freeze()
    config = _gen_config(path)
    full = generate_dataset(config, tmp_path / "full", components=comps)
    assert full.total == 16 * 2 and full.written == 32
    rows = _rows(tmp_path / "full")
    assert len(rows) == 32 and len({r["file_name"] for r in rows}) == 32
    assert {r["prompt"] for r in rows} == {"a square <gen0>", "a disc <gen0>", "a square on snow", "a disc on snow"}
    assert all(r["label"] == str(int(r["source_file"].split("/")[1][:4]) % 2) for r in rows)

    # Sharded + interrupted run gives byte-identical images with no duplicate rows.
    comps2 = copy.deepcopy(_tiny_session["txt2img"]).freeze()
    sharded = tmp_path / "sharded"
    generate_dataset(config, sharded, shard="1/3", components=comps2)
    (sharded / "images" / "00004.png").unlink()  # a crash lost this image of shard 1
    for i in range(3):
        generate_dataset(config, sharded, shard=f"{i}/3", components=copy.deepcopy(_tiny_session["txt2img"]).freeze())
    rows2 = _rows(sharded)
    assert [r["file_name"] for r in rows2] == [r["file_name"] for r in rows]
    for r in rows:
        assert (tmp_path / "full" / r["file_name"]).read_bytes() == (sharded / r["file_name"]).read_bytes()
    assert not list(sharded.rglob("*.tmp*"))

    # The folder is a dataset for us and for HF datasets.
    ds = FolderDataset(tmp_path / "full")
    assert len(ds) == 32 and ds[0]["image"].shape == (3, 16, 16)
    from datasets import load_dataset

    hf = load_dataset("imagefolder", data_dir=str(tmp_path / "full"), split="train")
    assert len(hf) == 32 and "prompt" in hf.column_names


def test_bad_shards_are_rejected():
    for bad in ("3/3", "1", "a/b", "-1/2", "0/0"):
        with pytest.raises(ShardError):
            parse_shard(bad)
    assert parse_shard("2/5") == (2, 5)


def test_per_class_prompts_apply_to_their_class_only(tiny, tmp_path):
    own = []
    for c, name in ((0, "square"), (1, "disc")):
        p = LearnablePrompt(tiny.tokenizer, tiny.text_encoder, num_tokens=2, prefix=f"pc{c}", seed=c,
                            template="a {class} {prompt}", class_name=name)
        own.append(str(p.save(tmp_path / f"prompt_c{c}.safetensors")))
    base = dict(model={"diffusion": "tiny", "device": "cpu"}, source="tiny-synth:train", prompt_files=own,
                sampler={"num_steps": 2, "guidance_scale": 3.0}, batch_size=8)
    rows = _rows(generate_dataset(GenerateConfig(**base), tmp_path / "own", components=tiny).out_dir)
    assert len(rows) == 16  # 16 sources, one matching prompt each
    assert all(r["prompt_file"].endswith(f"prompt_c{r['label']}.safetensors") for r in rows)
    every = _rows(generate_dataset(GenerateConfig(**base, class_prompts="all"), tmp_path / "all",
                                   components=tiny).out_dir)
    assert len(every) == 32
    # class_words change the word filled into {class}, not which class a prompt belongs to.
    worded = _rows(generate_dataset(GenerateConfig(**base, class_words={"disc": "circle"}), tmp_path / "words",
                                    components=tiny).out_dir)
    assert len(worded) == 16
    assert {r["prompt"].split(" <")[0] for r in worded} == {"a square", "a circle"}
    assert all(("circle" in r["prompt"]) == (r["label"] == "1") for r in worded)


def test_generated_sets_load_typed_with_the_datasets_library(tiny, tmp_path):
    """README.md's YAML header types the columns for `load_dataset(folder)`: label a ClassLabel."""
    from datasets import ClassLabel, Value
    from datasets import load_dataset as hf_load

    def load_dataset(*args, **kw):  # a private cache: nothing left in ~/.cache by the test
        return hf_load(*args, cache_dir=str(tmp_path / "hf-cache"), **kw)

    config = GenerateConfig(model={"diffusion": "tiny", "device": "cpu"}, source="tiny-synth:train",
                            prompts=["a {class} on snow"], sampler={"num_steps": 2, "guidance_scale": 3.0},
                            batch_size=16)
    out = generate_dataset(config, tmp_path / "gen", components=tiny, progress=False).out_dir
    ds = load_dataset(str(out), split="train")
    assert len(ds) == 16 and ds.features["label"] == ClassLabel(names=["square", "disc"])
    assert ds.features["seed"] == Value("int64") and ds.features["group"] == Value("string")
    rows = _rows(out)
    assert [ds.features["label"].int2str(y) for y in ds["label"]] == [r["label_name"] for r in rows]
    assert ds["seed"] == [int(r["seed"]) for r in rows] and ds[0]["image"].size == (16, 16)
    # imagefolder with data_dir reads the same rows and ignores the card (label a plain integer).
    plain = load_dataset("imagefolder", data_dir=str(out), split="train")
    assert len(plain) == 16 and plain.features["label"] == Value("int64")
    # Regenerated in place (another run): the card changes, so datasets does not serve its stale cache.
    other = config.model_copy(update={"prompts": ["a {class} in the city"]})
    generate_dataset(other, out, components=tiny, overwrite=True, progress=False)
    assert set(load_dataset(str(out), split="train")["prompt"]) == {"a square in the city", "a disc in the city"}
    # Text-to-image sets are typed too; their label (always 0) stays an integer.
    model = save_tiny_pipeline(tmp_path / "model")
    t2i = generate_text2img(cpu(model), "a red bird", tmp_path / "t2i", num_images=2,
                            sampler=SAMPLER.model_copy(update={"num_steps": 2}), progress=False).out_dir
    ds = load_dataset(str(t2i), split="train")
    assert ds.features["label"] == Value("int64") and ds["prompt"] == ["a red bird"] * 2


def test_text2img_refuses_source_only_settings_before_writing(tmp_path):
    # SDEdit strength, DDIM eta > 0 and ControlNet would silently change what "identical to diffusers" means.
    for sampler, model in [(SAMPLER.model_copy(update={"strength": 0.5}), "tiny"),
                           (SAMPLER.model_copy(update={"eta": 0.3}), "tiny"),
                           (SAMPLER.model_copy(update={"conditioning": "controlnet"}), "tiny"),
                           (SAMPLER, ModelConfig(diffusion="tiny", autocast="bf16"))]:
        with pytest.raises(ConfigError, match="text-to-image"):
            generate_text2img(model, "a red bird", tmp_path / "out", sampler=sampler)
        assert not (tmp_path / "out").exists()

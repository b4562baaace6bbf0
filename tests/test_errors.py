"""Every bad-input case of issue section 6: exit status 2, one clear line, no partial output."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from advprompts.cli.app import app
from advprompts.losses import LossInputs, LossTerm, register_loss
from conftest import one_line_error

runner = CliRunner()


@register_loss("test_cli_nan")
class _AlwaysNaN(LossTerm):
    def __call__(self, inputs: LossInputs) -> torch.Tensor:
        return inputs.images.mean() * float("nan")


def _folder(root, n=2, mask_size=None, corrupt=False, rows=True):
    root.mkdir(parents=True)
    lines = ["file_name,label,mask_file"]
    for i in range(n):
        Image.new("RGB", (16, 16), (i * 40, 80, 120)).save(root / f"{i}.png")
        Image.new("L", mask_size or (16, 16), 255).save(root / f"{i}_m.png")
        lines.append(f"{i}.png,{i % 2},{i}_m.png")
    if corrupt:
        (root / "0.png").write_bytes(b"\x89PNG broken")
    (root / "metadata.csv").write_text("\n".join(lines if rows else lines[:1]) + "\n")
    return root


def _check(args, match, out=None):
    one_line_error(runner.invoke(app, args), match)
    if out is not None:
        assert not out.exists() or out.is_dir() and not any(out.iterdir()), "partial output left behind"


def _gen(tmp_path, *extra):
    out = tmp_path / "out"
    return ["generate", "--model", "tiny", "--prompt", "a {class}", "--steps", "1", "--out", str(out), *extra], out


def test_missing_model_folder(tmp_path):
    out = tmp_path / "out"
    _check(["generate", "--model", str(tmp_path / "nowhere"), "--prompt", "x", "--out", str(out)],
           "does not exist", out)


def test_incomplete_model_folder(tmp_path):
    model = tmp_path / "model"
    (model / "unet").mkdir(parents=True)
    (model / "unet" / "config.json").write_text("{}")
    out = tmp_path / "out"
    _check(["generate", "--model", str(model), "--prompt", "x", "--out", str(out)], "incomplete: missing unet/ weights, vae/config.json", out)


def test_embedded_model_missing_names_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.setenv("ADVPROMPTS_ZOO_DIR", str(tmp_path / "zoo"))
    out = tmp_path / "out"
    _check(["generate", "--prompt", "x", "--out", str(out)], str(tmp_path / "zoo" / "sd"), out)


def test_hub_id_while_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    out = tmp_path / "out"
    _check(["generate", "--model", "nobody/no-such-model", "--prompt", "x", "--out", str(out)], "offline", out)


@pytest.mark.parametrize("override,match", [
    ("optim.lrr=1", "unknown key 'optim.lrr'"),
    ("optim.lr=abc", "invalid value for 'optim.lr'"),
    ("sampler.strength=0", "invalid value for 'sampler.strength'"),
    ("prompt.init=gauss", "prompt init 'gauss' is unknown"),
    ("losses=[{name: nope}]", "loss 'nope' is unknown"),
])
def test_bad_config(tmp_path, override, match):
    out = tmp_path / "out"
    _check(["optimize", "--config", "tiny-ap", "--set", override, "--out", str(out)], match, out)


def test_unknown_config_file(tmp_path):
    _check(["optimize", "--config", str(tmp_path / "x.yaml"), "--out", str(tmp_path / "o")], "neither a file nor a preset")


def test_empty_dataset(tmp_path):
    src = _folder(tmp_path / "src", rows=False)
    args, out = _gen(tmp_path, "--source", str(src))
    _check(args, "is empty", out)


def test_unreadable_dataset(tmp_path):
    args, out = _gen(tmp_path, "--source", str(tmp_path / "missing"))
    _check(args, "neither a folder nor a registered dataset", out)


def test_corrupt_image(tmp_path):
    src = _folder(tmp_path / "src", corrupt=True)
    args, out = _gen(tmp_path, "--source", str(src))
    _check(args, "corrupt or unreadable", out)


def test_mask_size_mismatch(tmp_path):
    src = _folder(tmp_path / "src", mask_size=(8, 8))
    args, out = _gen(tmp_path, "--source", str(src))
    _check(args, "masks must match their image size", out)


@pytest.mark.parametrize("shard", ["2/2", "x", "1/0"])
def test_invalid_shard(tmp_path, shard):
    args, out = _gen(tmp_path, "--source", "tiny-synth:train", "--shard", shard)
    _check(args, "--shard", out)


def test_output_folder_holding_a_different_run(tmp_path):
    args, out = _gen(tmp_path, "--source", "tiny-synth:train")
    assert runner.invoke(app, args).exit_code == 0
    before = sorted(p.name for p in (out / "images").iterdir())
    _check([*args, "--seed", "5"], "holds a different run")
    assert sorted(p.name for p in (out / "images").iterdir()) == before
    assert runner.invoke(app, [*args, "--seed", "5", "--overwrite"]).exit_code == 0
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    _check(["optimize", "--config", "tiny-ap", "--out", str(foreign)], "holds no advprompts run")


def test_nan_loss_stops_with_exit_2(tmp_path):
    out = tmp_path / "run"
    _check(["optimize", "--config", "tiny-ap", "--set", "losses=[{name: test_cli_nan}]", "--out", str(out)],
           "last good checkpoint")


def test_experiment_bad_inputs_are_one_line_exit_2(tmp_path, monkeypatch):
    out = tmp_path / "exp"
    _check(["experiment", "--config", "no-such-experiment", "--out", str(out)], "neither a file nor a preset", out)
    _check(["experiment", "--config", "demo-quick", "--set", "max_images=3", "--out", str(out)], "unknown key", out)
    _check(["experiment", "--config", "demo-quick", "--methods", "gap,nope", "--out", str(out)], "'nope'", out)
    monkeypatch.setenv("ADVPROMPTS_ZOO_DIR", str(tmp_path / "no-zoo"))
    monkeypatch.setenv("ADVPROMPTS_CACHE", str(tmp_path / "cache"))
    _check(["experiment", "--config", "demo-quick", "--set", "benchmark=tiny-synth", "--set", "ood_split=null",
            "--methods", "no_extra", "--out", str(out)], "zoo build", out)


def test_retrain_inpaint_refuses_a_non_zoo_base_and_the_base_itself(tmp_path):
    _check(["zoo", "retrain-inpaint", "--base", str(tmp_path), "--out", str(tmp_path / "new")], "is not a zoo",
           out=tmp_path / "new")
    (tmp_path / "z" / "sd" / "unet").mkdir(parents=True)
    _check(["zoo", "retrain-inpaint", "--base", str(tmp_path / "z"), "--out", str(tmp_path / "z")], "is --base")


def test_generate_refuses_a_class_word_without_equals(tmp_path):
    args, out = _gen(tmp_path, "--class-word", "waterbird")
    _check(args, "--class-word takes NAME=WORD", out=out)


def test_checkpoint_of_another_run_is_refused_in_one_line(tmp_path):
    import shutil

    base = ["optimize", "--config", "tiny-ap", "--set", "optim.steps=2", "--set", "log.tensorboard=false",
            "--set", "log.sample_every=0"]
    assert runner.invoke(app, [*base, "--set", "prompt.num_tokens=3", "--out", str(tmp_path / "other")]).exit_code == 0
    assert runner.invoke(app, [*base, "--out", str(tmp_path / "run")]).exit_code == 0
    for suffix in (".json", ".safetensors"):  # someone else's checkpoint copied into this run
        shutil.copy(tmp_path / "other" / "checkpoints" / f"s0{suffix}", tmp_path / "run" / "checkpoints")
    _check([*base, "--resume", "--out", str(tmp_path / "run")], "belongs to another run (prompt embeddings of shape")


def test_device_torch_does_not_know_is_one_line(tmp_path):
    out = tmp_path / "out"
    _check(["optimize", "--config", "tiny-ap", "--set", "model.device=gpu0", "--out", str(out)],
           "device 'gpu0' is not a device", out)


@pytest.mark.parametrize("prompt", ["a {klass}", "a {", "a {0}"])
def test_text_prompt_with_a_field_other_than_class_is_refused_before_work(tmp_path, prompt):
    args, out = _gen(tmp_path, "--source", "tiny-synth:train")
    args[args.index("a {class}")] = prompt
    _check(args, "only {class} may stand in braces", out)


@pytest.mark.parametrize("override,match", [
    ("transfer=[resnet19]", "transfer architecture 'resnet19' is not a task model"),
    ("transfer_methods=[gapp]", "transfer_methods names 'gapp'"),
    ('methods.agnostic.prompts=["a {klass}"]', "unknown field {klass}"),
])
def test_experiment_config_mistakes_fail_before_any_training(tmp_path, override, match):
    out = tmp_path / "exp"
    _check(["experiment", "--config", "demo-quick", "--set", override, "--out", str(out)], match, out)


def test_zoo_check_of_a_folder_that_is_not_a_zoo(tmp_path):
    _check(["zoo", "check", "--zoo", str(tmp_path / "nowhere")], "is not a zoo (no sd/)")

"""The CLI: presets, optimize and generate end to end on tiny components."""

from __future__ import annotations

import csv

from typer.testing import CliRunner

from advprompts.cli.app import app

runner = CliRunner()


def test_presets_lists_tiny_presets():
    result = runner.invoke(app, ["presets"])
    assert result.exit_code == 0
    names = [line.split()[0] for line in result.output.splitlines()]
    assert {"tiny-ap", "tiny-gap"} <= set(names)


def test_optimize_then_generate_from_the_learned_prompt(tmp_path):
    run = tmp_path / "run"
    result = runner.invoke(app, ["optimize", "--config", "tiny-ap", "--set", "optim.steps=2", "--set",
                                 "log.tensorboard=false", "--out", str(run)])
    assert result.exit_code == 0, result.output
    assert (run / "prompt_s0.safetensors").is_file()
    gen = tmp_path / "gen"
    result = runner.invoke(app, ["generate", "--model", "tiny", "--source", "tiny-synth:train", "--prompt-file",
                                 str(run / "prompt_s0.safetensors"), "--steps", "2", "--out", str(gen),
                                 "--shard", "0/2", "--class-word", "square=box"])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(open(gen / "metadata.csv")))
    assert len(rows) == 8 and all(int(r["index"]) % 2 == 0 for r in rows)
    assert all(r["prompt"].startswith("a ") and r["prompt"].endswith("<gen0>") for r in rows)
    assert {r["prompt"].split()[1] for r in rows} == {"box"}  # this shard's sources are squares: "box"


def test_debug_shows_the_traceback(tmp_path):
    result = runner.invoke(app, ["--debug", "optimize", "--config", "nope", "--out", str(tmp_path / "o")])
    assert result.exit_code != 0 and result.exception is not None
    assert type(result.exception).__name__ == "ConfigError"


def test_version_is_the_installed_package_version():
    import importlib.metadata

    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output == f"advprompts {importlib.metadata.version('advprompts')}\n"


def test_presets_lists_every_kind_and_shows_one():
    import yaml

    from advprompts.config.presets import load_config, presets_by_kind

    result = runner.invoke(app, ["presets"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    kinds = presets_by_kind()
    assert not set(kinds["optimize"]) & set(kinds["experiment"])  # `show NAME` is unambiguous
    for heading in ("optimisation presets (advprompts optimize", "experiment presets (advprompts experiment"):
        assert sum(line.startswith(heading) for line in lines) == 1
    described = {line.split()[0]: line.split(None, 1)[1] for line in lines if line.startswith("  ")}
    assert set(described) == set(kinds["optimize"]) | set(kinds["experiment"])
    assert described["tiny-ap"].startswith("Adversarial Prompts on tiny random components")
    assert described["demo"].startswith("`advprompts demo`: waterbirds-synth with the shipped models")
    # show: the file as shipped, a valid config once copied.
    shown = runner.invoke(app, ["presets", "show", "tiny-gap"])
    assert shown.exit_code == 0 and shown.output == kinds["optimize"]["tiny-gap"].read_text()
    assert load_config("tiny-gap").method == yaml.safe_load(shown.output)["method"]
    assert runner.invoke(app, ["presets", "show", "demo-quick"]).output.startswith("# `advprompts demo --quick`")
    bad = runner.invoke(app, ["presets", "show", "nope"])
    lines = [line for line in bad.output.splitlines() if line.strip()]
    assert bad.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: unknown preset 'nope'; presets: ")


def test_generate_honours_device_and_shows_progress(tmp_path, monkeypatch):
    import torch

    import advprompts.models.loading as loading

    devices = []
    real = loading.load_components
    monkeypatch.setattr(loading, "load_components",
                        lambda *a, **kw: devices.append(str(kw["device"])) or real(*a, **kw))
    t2i = ["generate", "--model", "tiny", "--prompt", "a red bird", "--num-images", "2", "--steps", "2"]
    result = runner.invoke(app, [*t2i, "--device", "cpu", "--out", str(tmp_path / "t2i")])
    assert result.exit_code == 0, result.output
    assert "text-to-image" in result.output  # the progress bar (stderr)
    assert len(list((tmp_path / "t2i" / "images").glob("*.png"))) == 2
    result = runner.invoke(app, ["generate", "--model", "tiny", "--source", "tiny-synth:train", "--prompt", "a {class}",
                                 "--steps", "2", "--batch-size", "16", "--device", "cpu",
                                 "--out", str(tmp_path / "src")])
    assert result.exit_code == 0, result.output
    auto = runner.invoke(app, [*t2i, "--out", str(tmp_path / "auto")])
    assert auto.exit_code == 0, auto.output
    assert devices == ["cpu", "cpu", "cuda" if torch.cuda.is_available() else "cpu"]
    bad_devices = {"gpu": "--device takes auto, cpu or cuda[:N]"}
    if not torch.cuda.is_available():
        bad_devices["cuda:1"] = "no CUDA device is visible"
    for bad, message in bad_devices.items():
        result = runner.invoke(app, [*t2i, "--device", bad, "--out", str(tmp_path / bad.replace(":", "_"))])
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert result.exit_code == 2 and len(lines) == 1 and message in lines[0], result.output
        assert not (tmp_path / bad.replace(":", "_")).exists()

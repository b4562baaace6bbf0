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

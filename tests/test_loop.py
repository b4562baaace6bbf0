"""`advprompts loop` on tiny random models: fresh data each round (round 1 = the experiment's pool),
each round attacking the model of the round before, resume, refusals and the per-round table."""

from __future__ import annotations

import csv

import yaml

from advprompts.experiments.loop import run_loop
from advprompts.experiments.report import loop_table
from advprompts.experiments.runner import ExperimentRunner
from test_experiments import _config, bench_dir  # noqa: F401 (bench_dir: the shared fixture)


def _rows(pool_dir):
    with open(pool_dir / "metadata.csv", newline="") as f:
        return list(csv.DictReader(f))


def _pixels(pool_dir):
    return [(pool_dir / r["file_name"]).read_bytes() for r in _rows(pool_dir)]


def test_text_loop_draws_fresh_pools_and_round_one_is_the_experiment(bench_dir, tmp_path, tiny):
    cfg = _config(bench_dir, budgets=[1.0], methods={"agnostic": {"kind": "text", "prompts": ["a {class} outside"]}})
    exp = ExperimentRunner(cfg, tmp_path / "exp", components=tiny, progress=False).run()
    rows = run_loop(ExperimentRunner(cfg, tmp_path / "loop", components=tiny, progress=False), "agnostic", 2)
    assert [(r["method"], r["seed"], r["round"], r["n_extra"]) for r in rows] == \
        [("agnostic", 0, 0, 0), ("agnostic", 0, 1, 4), ("agnostic", 0, 2, 8)]
    # Round 1: the experiment's pool, byte for byte, and (same data, same recipe) the experiment's cell.
    exp_pool, r1, r2 = tmp_path / "exp/pools/agnostic-s0", tmp_path / "loop/pools/agnostic-s0", \
        tmp_path / "loop/pools/agnostic-s0-r2"
    assert _rows(r1) == _rows(exp_pool) and _pixels(r1) == _pixels(exp_pool)
    assert {k: v for k, v in rows[1].items() if k.startswith("acc_")} == \
        {k: v for k, v in exp[0].items() if k.startswith("acc_")}
    # Round 2: new generation seeds and new pixels (and, here, other train sources).
    assert {r["seed"] for r in _rows(r2)}.isdisjoint({r["seed"] for r in _rows(r1)})
    assert set(_pixels(r2)).isdisjoint(_pixels(r1))
    assert {r["source_file"] for r in _rows(r2)} != {r["source_file"] for r in _rows(r1)}
    table = list(csv.DictReader(open(tmp_path / "loop/loop.csv", newline="")))
    assert [int(r["round"]) for r in table] == [0, 1, 2] and "acc_waterbird-land" in table[0]
    assert "| agnostic |" in (tmp_path / "loop/loop.md").read_text()


def test_optimized_loop_attacks_the_previous_round_and_resumes(bench_dir, tmp_path, tiny):
    cfg = _config(bench_dir, seeds=[0, 1], methods={
        "ap": {"kind": "optimized", "optimize": "tiny-ap", "set": ["optim.steps=1", "log.tensorboard=false"]}})
    out = tmp_path / "loop"
    rows = run_loop(ExperimentRunner(cfg, out, components=tiny, progress=False), ["ap"], 2, seeds=[1])
    assert [(r["seed"], r["round"]) for r in rows] == [(1, 0), (1, 1), (1, 2)]
    run1 = yaml.safe_load((out / "prompts/ap-s1/config.yaml").read_text())
    run2 = yaml.safe_load((out / "prompts/ap-s1-r2/config.yaml").read_text())
    assert run1["task"]["weights"] == str(out / "models/base-small_cnn-s1.safetensors")
    assert run2["task"]["weights"] == str(out / "models/loop/ap-s1-r1.safetensors")
    # Round 1 keeps the experiment's draws (prompt seed 1000 * seed, the preset's optim.seed); round 2 moves on.
    assert run1["prompt"]["seeds"] == [1000] and run1["optim"]["seed"] == 0
    assert run2["prompt"]["seeds"] != [1000] and run2["optim"]["seed"] != 0
    # Resume: a deleted and a torn round cell are recomputed to the same rows; the other rounds are reused.
    csv_before = (out / "loop.csv").read_text()
    cells = out / "cells/loop"
    (cells / "ap-s1-r1.json").unlink()
    (cells / "ap-s1-r2.json").write_text('{"method": "ap", "se')
    before = {p.name: p.stat().st_mtime_ns for p in cells.iterdir()}
    again = run_loop(ExperimentRunner(cfg, out, components=tiny, progress=False), ["ap"], 2, seeds=[1])
    after = {p.name: p.stat().st_mtime_ns for p in cells.iterdir()}
    assert {k for k in after if after[k] != before.get(k)} == {"ap-s1-r1.json", "ap-s1-r2.json"}
    assert again == rows and (out / "loop.csv").read_text() == csv_before


def test_loop_cli_refuses_methods_without_generated_data(bench_dir, tmp_path):
    from typer.testing import CliRunner

    from advprompts.cli.app import app

    config = tmp_path / "exp.yaml"
    config.write_text(yaml.safe_dump(_config(bench_dir).model_dump(mode="json")))
    for methods in ("no_extra", "agnostic,real_ood", "cutmix", "nope"):
        r = CliRunner().invoke(app, ["loop", "--config", str(config), "--out", str(tmp_path / "o"),
                                     "--method", methods, "-k", "2"])
        assert r.exit_code == 2 and "error: method" in r.output, r.output
        assert "cannot loop" in r.output or "not in the experiment config" in r.output
    assert not (tmp_path / "o").exists()


def test_loop_table_is_mean_and_sample_std_over_seeds():
    rows = [{"method": m, "seed": s, "round": str(k), "worst_group_acc": str(w), "avg_acc": "0.5"}
            for m, s, k, w in [("gap", 0, 0, 0.01), ("gap", 1, 0, 0.03), ("gap", 0, 1, 0.40), ("gap", 1, 1, 0.50),
                               ("gap", 0, 2, 0.6), ("gap", 1, 2, 0.9), ("ap", 0, 0, 0.02), ("ap", 0, 1, 0.1)]]
    assert loop_table(rows).splitlines() == [
        "| method | round 0 | round 1 | round 2 |", "|---|---|---|---|",
        "| gap | 2.0 ± 1.4 | 45.0 ± 7.1 | 75.0 ± 21.2 |",  # ddof=1: sqrt(2) x the population std
        "| ap | 2.0 | 10.0 |  |"]                          # one seed: the mean alone
    assert loop_table(rows, "avg_acc").splitlines()[3] == "| ap | 50.0 | 50.0 |  |"

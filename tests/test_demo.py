"""The closed loop end to end on the embedded benchmark with the shipped models: `demo --quick`
must show that GAP data helps (worst-group accuracy above no extra data)."""

from __future__ import annotations

import csv

import pytest
import torch

from advprompts.zoo.paths import zoo_dir

shipped = pytest.mark.skipif(not (zoo_dir() / "manifest.json").exists(), reason="no embedded weights in this tree")


@shipped
def test_quick_demo_gap_beats_no_extra(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from advprompts.cli.app import app

    monkeypatch.setenv("ADVPROMPTS_CACHE", str(tmp_path / "cache"))
    torch.set_num_threads(2)  # the demo is the one heavy test: use both cores
    try:
        res = CliRunner().invoke(app, ["demo", "--quick", "--out", str(tmp_path / "demo")])
    finally:
        torch.set_num_threads(1)
    assert res.exit_code == 0, res.output
    assert "report.md" in res.output and "| gap |" in res.output
    with open(tmp_path / "demo" / "results.csv", newline="") as f:
        rows = {r["method"]: r for r in csv.DictReader(f)}
    assert set(rows) == {"no_extra", "agnostic", "ap", "gap", "real_ood"}
    # GAP (the task model chooses each class's targets) lifts the worst group far above no extra data.
    assert float(rows["gap"]["worst_group_acc"]) > float(rows["no_extra"]["worst_group_acc"]) + 0.10

"""The experiment's stage profile: profile.csv rows for every stage, reused stages marked cached."""

from __future__ import annotations

from advprompts.experiments.profile import COLUMNS, StageProfile
from advprompts.experiments.runner import ExperimentRunner
from advprompts.fsio import read_csv
from test_experiments import _config, bench_dir  # noqa: F401 (bench_dir: the shared fixture)


def _rows(out):
    return read_csv(out / "profile.csv")


def test_experiment_writes_every_stage_and_a_resume_marks_reused_ones_cached(bench_dir, tmp_path, tiny):
    methods = {"no_extra": {"kind": "no_extra"},
               "ap": {"kind": "optimized", "optimize": "tiny-ap", "set": ["optim.steps=2", "log.tensorboard=false"]},
               "cutmix": {"kind": "augment", "augment": "cutmix"}}
    cfg = _config(bench_dir, methods=methods)
    out = tmp_path / "exp"
    ExperimentRunner(cfg, out, components=tiny, progress=False).run()
    rows = _rows(out)
    assert list(rows[0]) == COLUMNS
    timed = {(r["stage"], r["method"], r["n_extra"]) for r in rows if r["cached"] == "0"}
    assert all(float(r["seconds"]) >= 0 for r in rows if r["cached"] == "0")
    assert ("base_training", "small_cnn", "") in timed
    assert {("prompts", "ap", ""), ("generation", "ap", ""), ("pool", "ap", ""), ("pool", "cutmix", "")} <= timed
    cells = {("no_extra", "0"), ("ap", "4"), ("ap", "2"), ("cutmix", "4"), ("cutmix", "2")}
    for stage in ("finetune", "evaluate"):
        assert {(m, n) for s, m, n in timed if s == stage} == cells
    assert not [r for r in rows if r["cached"] == "1"]  # a fresh run reuses nothing

    # A resumed run keeps the rows, adds each reused stage once as cached (no seconds), times what it redoes.
    runner = ExperimentRunner(cfg, out, components=tiny, progress=False)
    runner.run()
    again = _rows(out)
    assert again[: len(rows)] == rows
    cached = {(r["stage"], r["method"], r["n_extra"]) for r in again[len(rows):] if r["cached"] == "1"}
    assert all(r["seconds"] == "" for r in again if r["cached"] == "1")
    assert {("finetune", m, n) for m, n in cells} <= cached and ("generation", "ap", "") in cached
    assert ("base_training", "small_cnn", "") in cached  # once, although every cell loads the base model
    assert len([r for r in again if r["stage"] == "base_training"]) == 2
    assert {(r["stage"], r["method"]) for r in again[len(rows):] if r["cached"] == "0"} == {("pool", "ap"),
                                                                                           ("pool", "cutmix")}
    summary = {s["stage"]: s for s in runner.profile.summary()}
    assert summary["finetune"]["runs"] == 5 and summary["finetune"]["cached"] == 5
    assert "finetune" in runner.profile.format_summary()


def test_profile_reads_back_and_skips_a_damaged_file(tmp_path):
    (tmp_path / "profile.csv").write_bytes(b"\xff\xfe not a csv")
    profile = StageProfile(tmp_path)
    assert profile.rows == []
    with profile.stage("finetune", "ap", 0, 4):
        pass
    profile.add("finetune", "ap", 0, 4)  # timed by this run: not marked reused
    profile.add("evaluate", "ap", 0, 4)
    profile.add("evaluate", "ap", 0, 4)  # reused twice in one run: one row
    assert [(r["stage"], r["cached"]) for r in StageProfile(tmp_path).rows] == [("finetune", "0"), ("evaluate", "1")]
    again = StageProfile(tmp_path)  # the next run marks what it reuses again
    again.add("finetune", "ap", 0, 4)
    assert [r["cached"] for r in again.rows] == ["0", "1", 1]

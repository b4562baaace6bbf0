"""Ablation rows of an experiment: label noise on a pool, a derived method that reuses another method's
pool, and the oracle filter that keeps only label-faithful images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from advprompts.errors import ConfigError
from advprompts.experiments.config import ExperimentConfig, load_experiment_config
from advprompts.experiments.pools import with_label_noise
from advprompts.experiments.runner import ExperimentRunner
from advprompts.tasks.train import Tensors
from advprompts.world.benchmarks import Benchmark, export_benchmark
from test_experiments import SMALL_BENCH, _config, _FixedOracle


@pytest.fixture(scope="module")
def bench_dir(tmp_path_factory):
    return export_benchmark(Benchmark(**SMALL_BENCH), tmp_path_factory.mktemp("bench") / "mini-birds")


def test_label_noise_relabels_the_same_share_of_every_prefix():
    labels = torch.arange(40) % 3
    pool = Tensors(torch.zeros(40, 3, 4, 4, dtype=torch.uint8), labels.clone(), [f"g{i}" for i in range(40)])
    noisy = with_label_noise(pool, 0.25, seed=3, num_classes=3)
    changed = (noisy.labels != labels).numpy()
    assert changed.sum() == 10 and changed[:4].tolist() == [False, False, False, True]
    for k in range(1, 41):  # every budget's prefix holds floor(k / 4) wrong labels
        assert changed[:k].sum() == k // 4
    assert noisy.labels.min() >= 0 and noisy.labels.max() <= 2
    assert torch.equal(noisy.images, pool.images) and noisy.groups == pool.groups and torch.equal(pool.labels, labels)
    again = with_label_noise(pool, 0.25, seed=3, num_classes=3)
    other = with_label_noise(pool, 0.25, seed=4, num_classes=3)
    assert torch.equal(again.labels, noisy.labels) and not torch.equal(other.labels, noisy.labels)


def test_derived_methods_validate_their_source(bench_dir):
    derived = {"kind": "derived", "pool_of": "real_ood", "oracle_filter": True}
    cfg = _config(bench_dir, methods={"real_ood": {"kind": "real_ood"}, "faithful": derived})
    assert cfg.methods["faithful"].pool_of == "real_ood"
    for methods, needle in [({"faithful": derived}, "takes the pool of 'real_ood'"),
                            ({"no_extra": {"kind": "no_extra"}, "faithful": dict(derived, pool_of="no_extra")}, "no_extra"),
                            ({"real_ood": {"kind": "real_ood", "pool_of": "x"}}, "kind: derived"),
                            ({"no_extra": {"kind": "no_extra", "label_noise": 0.5}}, "no_extra has none")]:
        with pytest.raises(ValueError, match=needle):
            _config(bench_dir, methods=methods)
    with pytest.raises(ConfigError, match="in --methods"):  # the subset drops the source
        load_experiment_config(str(Path(__file__).parents[1] / "docs/experiments/wildcam-label-noise.yaml"),
                               methods=["gap_faithful"])


def test_oracle_filter_and_noise_rows_reuse_the_source_pool(bench_dir, tmp_path, tiny, monkeypatch):
    from advprompts.experiments import composition
    from advprompts.experiments.report import write_report
    from advprompts.zoo.corpus import OBJECT_NAMES

    cfg: ExperimentConfig = _config(bench_dir, max_extra=4, budgets=[1.0], methods={
        "real_ood": {"kind": "real_ood"},
        "real_faithful": {"kind": "derived", "pool_of": "real_ood", "oracle_filter": True},
        "real_noisy": {"kind": "real_ood", "label_noise": 0.5}})
    runner = ExperimentRunner(cfg, tmp_path / "e", components=tiny, progress=False)
    real = runner.pool("real_ood", cfg.methods["real_ood"], 0)
    assert len(real) == 4 and len(set(real.labels.tolist())) == 2
    # The oracle sees a sparrow (class landbird, label 0) in every image: only the landbirds are faithful.
    sparrow = OBJECT_NAMES.index("sparrow")
    monkeypatch.setattr(composition, "embedded_oracle",
                        lambda _cfg: _FixedOracle({"object": [sparrow] * 4, "place": [0] * 4, "night": [0] * 4}))
    faithful = runner.pool("real_faithful", cfg.methods["real_faithful"], 0)
    keep = np.flatnonzero(real.labels.numpy() == 0)
    assert len(faithful) == len(keep) and torch.equal(faithful.images, real.images[torch.from_numpy(keep)])
    assert (faithful.labels == 0).all()
    noisy = runner.pool("real_noisy", cfg.methods["real_noisy"], 0)
    assert torch.equal(noisy.images, real.images) and (noisy.labels != real.labels).sum() == 2
    rows = runner.run()
    assert {(r["method"], r["n_extra"]) for r in rows} == {("real_ood", 4), ("real_faithful", len(keep)),
                                                           ("real_noisy", 4)}
    report = write_report(tmp_path / "e", cfg).read_text()
    assert "## Ablations" in report and "- `real_noisy`: 50% of the labels replaced by a random other class" in report
    assert "- `real_faithful`: the pool of `real_ood`; only the images in which the oracle sees" in report


def test_oracle_filter_needs_the_embedded_oracle(bench_dir, tmp_path, tiny):
    cfg = _config(bench_dir, max_extra=4, budgets=[1.0], methods={
        "real_ood": {"kind": "real_ood"}, "f": {"kind": "derived", "pool_of": "real_ood", "oracle_filter": True}})
    runner = ExperimentRunner(cfg, tmp_path / "e", components=tiny, progress=False)
    with pytest.raises(ConfigError, match="oracle_filter needs the embedded models' oracle"):
        runner.pool("f", cfg.methods["f"], 0)  # the tiny model has no oracle


def test_source_split_paints_around_another_splits_images(bench_dir, tmp_path, tiny):
    from advprompts.experiments.report import ablation_lines
    from advprompts.fsio import read_csv

    cfg = _config(bench_dir, max_extra=4, budgets=[1.0], methods={
        "agnostic": {"kind": "text", "prompts": ["a photo of a {class}"]},
        "agnostic_ood": {"kind": "text", "prompts": ["a photo of a {class}"], "source_split": "ood_pool"}})
    runner = ExperimentRunner(cfg, tmp_path / "e", components=tiny, progress=False)
    for name in cfg.methods:
        runner.pool(name, cfg.methods[name], 0)
    sources = {name: {r["source_file"].split("/")[1] for r in read_csv(tmp_path / "e" / "pools" / f"{name}-s0" / "metadata.csv")}
               for name in cfg.methods}
    assert sources == {"agnostic": {"train"}, "agnostic_ood": {"ood_pool"}}
    assert ablation_lines(cfg) == ["## Ablations", "", "- `agnostic_ood`: generated around the labelled images of "
                                   "`ood_pool`", ""]
    with pytest.raises(ValueError, match="generated methods"):
        _config(bench_dir, methods={"real_ood": {"kind": "real_ood", "source_split": "ood_pool"}})


def test_reuse_copies_the_stages_a_new_config_makes_the_same_way(bench_dir, tmp_path, tiny):
    from advprompts.errors import ConfigError
    from advprompts.experiments.reuse import reuse_stages
    from advprompts.fsio import read_csv

    ap = {"kind": "optimized", "optimize": "tiny-ap", "set": ["optim.steps=2", "log.tensorboard=false"]}
    methods = {"no_extra": {"kind": "no_extra"}, "agnostic": {"kind": "text", "prompts": ["a photo of a {class}"]},
               "real_ood": {"kind": "real_ood"}, "ap": ap}
    old = _config(bench_dir, max_extra=4, budgets=[1.0], methods=methods)
    ExperimentRunner(old, tmp_path / "old", components=tiny, progress=False).run()
    # A new sweep: one method changed, an ablation and AP's prompts on other sources added; the unchanged
    # stages are reused as they were, AP's prompts serve both AP rows.
    new = _config(bench_dir, max_extra=4, budgets=[1.0, 0.5], methods={
        **methods, "agnostic": {"kind": "text", "prompts": ["a {class} outdoors"]},
        "noisy": {"kind": "derived", "pool_of": "real_ood", "label_noise": 0.5},
        "ap_ood": dict(ap, source_split="ood_pool")})
    runner = ExperimentRunner(new, tmp_path / "new", components=tiny, progress=False, reuse=tmp_path / "old")
    files = lambda root: sorted(p.relative_to(root).as_posix() for p in root.rglob("*")  # noqa: E731
                                if p.is_file() and not any(part.startswith(".") for part in p.parts))
    got = files(tmp_path / "new")
    assert {f.split("/")[0] + "/" + f.split("/")[1] for f in got if "/" in f} == {
        "cells/ap-n4-s0.json", "cells/no_extra-n0-s0.json", "cells/real_ood-n4-s0.json",
        "models/base-small_cnn-s0.safetensors", "pools/ap-s0", "prompts/ap-s0"}
    assert str((tmp_path / "old").resolve()) not in (tmp_path / "new/prompts/ap-s0/config.yaml").read_text()
    for rel in [f for f in got if f.startswith(("cells/", "models/", "pools/", "prompts/"))]:
        assert (tmp_path / "new" / rel).read_bytes() == (tmp_path / "old" / rel).read_bytes() or rel.endswith(".yaml")
    log = (tmp_path / "new/prompts/ap-s0/log.csv").read_text()
    rows = runner.run()
    assert (tmp_path / "new/prompts/ap-s0/log.csv").read_text() == log  # found, not optimised again
    used = {r["prompt_file"] for r in read_csv(tmp_path / "new/pools/ap_ood-s0/metadata.csv")}
    assert used and all("/prompts/ap-s0/" in f for f in used)  # ap_ood paints with AP's own prompts
    assert not (tmp_path / "new/prompts/ap_ood-s0").exists()
    old_rows = {(r["method"], r["n_extra"]): r for r in json_rows(tmp_path / "old")}
    assert [r for r in rows if r["method"] == "no_extra"] == [old_rows[("no_extra", 0)]]
    assert {r["method"] for r in rows} == {"no_extra", "agnostic", "real_ood", "ap", "noisy", "ap_ood"}
    assert reuse_stages(new, tmp_path / "new", tmp_path / "old") == []  # nothing replaced
    with pytest.raises(ConfigError, match="`max_extra` differs"):
        ExperimentRunner(_config(bench_dir, max_extra=3, methods=methods), tmp_path / "other", components=tiny,
                         progress=False, reuse=tmp_path / "old")
    assert not (tmp_path / "other").exists()  # refused before anything was written
    with pytest.raises(ConfigError, match="no experiment.yaml"):
        ExperimentRunner(new, tmp_path / "third", components=tiny, progress=False, reuse=tmp_path)


def json_rows(out):
    import json

    return [json.loads(p.read_text()) for p in sorted((out / "cells").glob("*.json"))]


def test_source_match_paints_each_groups_prompt_around_sources_of_its_kind(tmp_path, tiny):
    """`source_match: time`: the prompt found for the target's night group paints around train's night images
    only, the day group's around day images; the prompts are found as without (the same optimisation)."""
    from advprompts.experiments.report import ablation_lines
    from advprompts.fsio import read_csv

    spec = dict(SMALL_BENCH, target_split="target", group="{class}-{time}")
    spec["splits"] = {
        "train": {"size": 16, "cells": [{"classes": ["waterbird"], "places": "water", "times": ["day"]},
                                        {"classes": ["landbird"], "places": "land", "times": ["night"]}]},
        "test": SMALL_BENCH["splits"]["test"],
        "target": {"size": 4, "balanced": True, "cells": [
            {"classes": ["waterbird"], "places": "land", "times": ["night"]},
            {"classes": ["landbird"], "places": "water", "times": ["day"]}]}}
    bench = export_benchmark(Benchmark(**spec), tmp_path / "bench-t")
    gap = {"kind": "optimized", "optimize": "tiny-gap", "per_group": True, "set": ["optim.steps=1"]}
    cfg = _config(bench, target_split="target", ood_split=None, max_extra=8, budgets=[1.0],
                  methods={"gap": gap, "gap_matched": dict(gap, source_match="time")})
    runner = ExperimentRunner(cfg, tmp_path / "e", components=tiny, progress=False)
    rows = read_csv(bench / "metadata.csv")
    train_time = {r["file_name"]: r["time"] for r in rows if r["split"] == "train"}
    target_time = {r["group"]: r["time"] for r in rows if r["split"] == "target"}
    times = {}
    for name in cfg.methods:
        runner.pool(name, cfg.methods[name], 0)
        for row in read_csv(tmp_path / "e" / "pools" / f"{name}-s0" / "metadata.csv"):
            group = Path(row["prompt_file"]).parent.name
            times.setdefault(name, {}).setdefault(group, set()).add(train_time[row["source_file"]])
    assert target_time == {"waterbird-night": "night", "landbird-day": "day"}
    assert times["gap_matched"] == {g: {t} for g, t in target_time.items()}  # each group: its own time only
    assert times["gap"] == {g: {"day", "night"} for g in target_time}        # without: sources of both
    # The same optimisation, so the ablation paints with GAP's own prompts (found once).
    used = {r["prompt_file"] for r in read_csv(tmp_path / "e" / "pools" / "gap_matched-s0" / "metadata.csv")}
    assert used and all("/prompts/gap-s0/" in f for f in used) and not (tmp_path / "e/prompts/gap_matched-s0").exists()
    assert ablation_lines(cfg)[2] == "- `gap_matched`: each target group's prompt generated around the images " \
                                     "with that group's `time`"
    with pytest.raises(ValueError, match="per_group optimized"):
        _config(bench, methods={"t": {"kind": "text", "source_match": "time"}})
    bad = _config(bench, target_split="target", ood_split=None, max_extra=8, budgets=[1.0],
                  methods={"g": dict(gap, source_match="caption")})
    with pytest.raises(ConfigError, match="no single value"):
        ExperimentRunner(bad, tmp_path / "bad", components=tiny, progress=False).pool("g", bad.methods["g"], 0)

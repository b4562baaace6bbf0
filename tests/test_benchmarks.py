"""Embedded benchmarks: promised group structure, export round trip, registration."""

from __future__ import annotations

import csv
from collections import Counter
from dataclasses import replace

import numpy as np
import pytest
import yaml

from advprompts.data import FolderDataset, list_datasets
from advprompts.errors import ConfigError
from advprompts.world.benchmarks import COLUMNS, _draw, export_benchmark, list_benchmarks, load_benchmark
from advprompts.world.render import random_scene, render


def _groups(bench, split):
    return Counter(_draw(bench, split, i)["group"] for i in range(bench.splits[split].size))


def test_waterbirds_synth_group_structure():
    b = load_benchmark("waterbirds-synth")
    train = _groups(b, "train")
    assert set(train) == {"waterbird-water", "landbird-land"} and 900 <= sum(train.values()) <= 1100
    assert min(train.values()) > 400
    four = {"waterbird-water", "waterbird-land", "landbird-water", "landbird-land"}
    for split in ("val", "test"):
        g = _groups(b, split)
        assert set(g) == four and len(set(g.values())) == 1  # exactly balanced
    pool = _groups(b, "ood_pool")
    assert set(pool) == {"waterbird-land", "landbird-water"} and sum(pool.values()) >= 800
    assert len(b.target_descriptions) >= 2


def test_waterbirds_synth_95_holds_each_class_at_5_percent_in_the_other_place():
    b, base = load_benchmark("waterbirds-synth-95"), load_benchmark("waterbirds-synth")
    train = _groups(b, "train")
    assert train == {"waterbird-water": 475, "waterbird-land": 25, "landbird-land": 475, "landbird-water": 25}
    for split in ("val", "test", "ood_pool"):  # the same evaluation as waterbirds-synth, image for image
        assert [_draw(b, split, i) for i in range(0, b.splits[split].size, 97)] == \
            [_draw(base, split, i) for i in range(0, base.splits[split].size, 97)]


def test_wildcam_synth_easy_locations_times_and_targets():
    b = load_benchmark("wildcam-synth-easy")
    train = [_draw(b, "train", i) for i in range(b.splits["train"].size)]
    assert {d["location"] for d in train} == set(range(10))
    labels = Counter(d["label_name"] for d in train)
    assert len(labels) == 7 and labels.most_common(1)[0][1] > 2.5 * min(labels.values())  # imbalanced
    test_locs = {_draw(b, "test", i)["location"] for i in range(b.splits["test"].size)}
    assert test_locs == {12, 13} and not test_locs & {d["location"] for d in train}
    target = _groups(b, "target")
    assert set(target) == {"loc12-day", "loc12-night", "loc13-day", "loc13-night"}
    assert set(target.values()) == {64}


def test_wildcam_synth_has_the_camera_trap_shift():
    """The benchmark gate's fast form: the structure that makes unseen cameras hard (measured gates: the
    report's "Benchmark gates" and docs/results.md)."""
    b = load_benchmark("wildcam-synth")
    train = [_draw(b, "train", i) for i in range(b.splits["train"].size)]
    by_location = {loc: Counter(d["label_name"] for d in train if d["location"] == loc and d["label_name"] != "empty")
                   for loc in range(10)}
    main = {loc: {c for c, k in n.items() if k >= 0.2 * sum(n.values())} for loc, n in by_location.items()}
    for loc, n in by_location.items():  # each camera dominated by its one or two species
        assert len(main[loc]) <= 2 and sum(n[c] for c in main[loc]) >= 0.8 * sum(n.values()), (loc, n)
    cameras = {species: sum(species in m for m in main.values()) for species in b.classes[1:]}
    assert all(2 <= n <= 4 for n in cameras.values()) and cameras["elephant"] == 2, cameras  # some at few cameras
    night = Counter(d["label_name"] for d in train if d["time"] == "night" and d["label_name"] != "empty")
    assert {d["location"] for d in train if d["time"] == "night"} == {1, 7, 9}  # infrared at three cameras
    assert sum(night[c] for c in ("cattle", "impala")) >= 0.85 * sum(night.values())
    test = [_draw(b, "test", i) for i in range(b.splits["test"].size)]
    assert {d["location"] for d in test} == {12, 13}
    for loc, twin in ((12, 4), (13, 5)):  # an unseen camera looks like a training camera of other species
        assert {d["place"] for d in test if d["location"] == loc} == {d["place"] for d in train if d["location"] == twin}
        assert len(main[twin]) == 2 and len({d["label_name"] for d in test if d["location"] == loc}) == 7
    animals = [d["scene"] for d in train if d["scene"].obj is not None]
    occluded = sum(s.occlusion > 0 for s in animals) / len(animals)
    assert 0.3 < occluded < 0.5 and min(s.x for s in animals) < 0.15 and max(s.x for s in animals) > 0.85
    assert set(_groups(b, "target").values()) == {64}


def test_camera_trap_framing_leaves_other_benchmarks_unchanged_and_hides_the_animal():
    scene = random_scene(np.random.default_rng(3), "zebra", "savanna", location=2)
    image, mask = render(scene)
    hidden_image, hidden_mask = render(replace(scene, occlusion=0.6))
    assert (hidden_mask > 0).sum() < 0.8 * (mask > 0).sum()  # the mask stays the visible animal
    assert not np.array_equal(image, hidden_image)
    assert np.array_equal(render(replace(scene, occlusion=0.0, crop=0.1))[0], image)


def test_export_round_trips_through_the_folder_loader(tmp_path):
    spec = yaml.safe_load(open(load_benchmark.__globals__["BENCHMARK_DIR"] / "waterbirds-synth.yaml"))
    for s in spec["splits"].values():
        s["size"] = 4
    path = tmp_path / "small.yaml"
    path.write_text(yaml.safe_dump(spec))
    out = export_benchmark(load_benchmark(path), tmp_path / "export")
    with open(out / "metadata.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == COLUMNS and len(rows) == 16
    ds = FolderDataset(out, split="train")
    item = ds[0]
    assert len(ds) == 4 and item["image"].shape == (3, 64, 64) and item["mask"].shape == (1, 64, 64)
    assert 0 < item["mask"].mean() < 0.6 and item["group"] in {"waterbird-water", "landbird-land"}
    assert not list(tmp_path.glob("export.partial*"))
    with pytest.raises(ConfigError, match="already holds"):
        export_benchmark(load_benchmark(path), out)
    with pytest.raises(ConfigError, match="no split 'tain'"):
        export_benchmark(load_benchmark(path), tmp_path / "typo", splits=["train", "tain"])
    assert not list(tmp_path.glob("typo*"))  # rejected before rendering anything


def test_bad_benchmark_files_name_the_problem(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nclasses: [a]\nclass_objects: {a: [unicorn]}\nsplits: {}\n")
    with pytest.raises(ConfigError, match="unknown object 'unicorn'"):
        load_benchmark(bad)
    bad.write_text("name: x\nclasses: [a]\nclass_objects: {a: [duck]}\nsplits: {}\ncolour: red\n")
    with pytest.raises(ConfigError, match="colour"):
        load_benchmark(bad)


def test_shipped_benchmarks_are_registered_datasets():
    assert {"waterbirds-synth", "wildcam-synth"} <= set(list_benchmarks()) <= set(list_datasets())


def test_cli_data_export_and_errors(tmp_path):
    from typer.testing import CliRunner

    from advprompts.cli.app import app

    r = CliRunner().invoke(app, ["data", "export", "wildcam-synth", "--out", str(tmp_path / "w"), "--split", "target"])
    assert r.exit_code == 0, r.output
    ds = FolderDataset(tmp_path / "w", split="target")
    assert len(ds) == 256 and np.isin(ds[0]["label"], range(7))
    r = CliRunner().invoke(app, ["data", "export", "nope", "--out", str(tmp_path / "x")])
    assert r.exit_code == 2 and "unknown benchmark 'nope'" in r.output
    assert not (tmp_path / "x").exists()


def test_benchmark_cache_is_keyed_by_the_renderer_code(tmp_path, monkeypatch):
    from advprompts.fsio import write_manifest
    from advprompts.world import benchmarks

    exports = []

    def fake_export(bench, out):
        exports.append(out)
        out.mkdir(parents=True)
        (out / "metadata.csv").write_text("file_name\n")
        write_manifest(out)
        return out

    monkeypatch.setenv("ADVPROMPTS_CACHE", str(tmp_path))
    monkeypatch.setattr(benchmarks, "export_benchmark", fake_export)
    first = benchmarks.cached_export("waterbirds-synth")
    assert benchmarks.cached_export("waterbirds-synth") == first and len(exports) == 1  # reused
    monkeypatch.setattr(benchmarks, "renderer_fingerprint", lambda: "a changed renderer")
    assert benchmarks.cached_export("waterbirds-synth") != first and len(exports) == 2  # rendered anew

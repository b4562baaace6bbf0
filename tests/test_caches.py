"""Caches that cannot lie (issue 25, part 5): a torn cell JSON, a half-written pool and a cached benchmark
whose files no longer match its manifest are detected and rebuilt, never read as valid."""

from __future__ import annotations

import json
import os

import pytest

from advprompts import fsio
from advprompts.experiments.composition import finished_pools
from advprompts.experiments.config import ExperimentConfig
from advprompts.experiments.runner import ExperimentRunner
from advprompts.world import benchmarks
from advprompts.world.benchmarks import Benchmark

BENCH = Benchmark(name="tiny-birds", classes=["landbird", "waterbird"],
                  class_objects={"landbird": ["sparrow"], "waterbird": ["duck"]},
                  splits={"train": {"size": 8, "cells": [{"classes": ["waterbird"], "places": "water"},
                                                         {"classes": ["landbird"], "places": "land"}]},
                          "test": {"size": 4, "balanced": True, "cells": [{"classes": ["waterbird"], "places": "land"},
                                                                          {"classes": ["landbird"], "places": "water"}]}})


def _files(folder):
    """Every file's bytes but lock files and a shard's row log (a resumed shard appends its rows again)."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and not p.name.endswith(".lock") and ".parts" not in p.parts}


def test_a_torn_cell_and_a_half_written_pool_are_rebuilt_not_read(tmp_path, tiny):
    cfg = ExperimentConfig(
        name="t", benchmark=str(benchmarks.export_benchmark(BENCH, tmp_path / "bench")), model="tiny", image_size=16,
        train={"epochs": 1, "batch_size": 8}, finetune={"epochs": 1, "batch_size": 8}, max_extra=4, budgets=[1.0],
        seeds=[0], generation={"steps": 1, "guidance_scale": 3.0, "batch_size": 4},
        methods={"text": {"kind": "text", "prompts": ["a photo of a {class}"]}})
    out = tmp_path / "exp"
    rows = ExperimentRunner(cfg, out, components=tiny, progress=False).run()
    pool, cell = out / "pools" / "text-s0", out / "cells" / "text-n4-s0.json"
    pool_files = _files(pool)
    cell.write_text(cell.read_text()[:25])  # torn (a copy cut short, a full disk without atomic rename)
    for name in ("metadata.csv", "u0/metadata.csv", "u0/README.md", "u0/images/00003.png"):
        (pool / name).unlink()  # as a kill in mid-generation leaves the pool: no completion marker
    assert pool not in finished_pools(out)
    again = ExperimentRunner(cfg, out, components=tiny, progress=False).run()
    assert [{k: v for k, v in r.items() if k != "seconds"} for r in again] == \
        [{k: v for k, v in r.items() if k != "seconds"} for r in rows]
    assert _files(pool) == pool_files and json.loads(cell.read_text())["avg_acc"] == rows[0]["avg_acc"]


def test_cached_results_that_cannot_be_trusted_are_recomputed(tmp_path, monkeypatch, caplog):
    from advprompts.experiments import composition

    assert fsio.read_json(tmp_path / "absent.json") is None
    (tmp_path / "list.json").write_text("[1, 2]")
    assert fsio.read_json(tmp_path / "list.json", required=("avg_acc",)) is None
    pool = tmp_path / "pools" / "gap-s0"
    pool.mkdir(parents=True)
    (pool / "composition.json").write_text('{"faithfulness": 0.')  # torn
    monkeypatch.setattr(composition, "composition", lambda *a, **k: {"faithfulness": 1.0})
    ctx = {"bench": {}, "train_groups": set(), "target": set()}
    assert composition.pool_compositions([pool], ctx, oracle=None) == {"gap-s0": {"faithfulness": 1.0}}
    assert json.loads((pool / "composition.json").read_text()) == {"faithfulness": 1.0}
    assert "composition.json: not readable JSON" in caplog.text


@pytest.fixture
def renders(tmp_path, monkeypatch):
    """Every render of ``cached_export("tiny-birds")`` into a cache under tmp_path."""
    monkeypatch.setenv("ADVPROMPTS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(benchmarks, "load_benchmark", lambda name: BENCH)
    done, real = [], benchmarks.export_benchmark
    monkeypatch.setattr(benchmarks, "export_benchmark", lambda bench, out: done.append(out) or real(bench, out))
    return done


def _flip_a_bit_unseen(path):
    """Change a byte keeping size, mtime and inode (what stat cannot see), and forget this process's
    verification, as a new process would not have it."""
    stat, data = path.stat(), bytearray(path.read_bytes())
    data[-5] ^= 1
    path.write_bytes(bytes(data))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    fsio._VERIFIED.clear()


TAMPER = {
    "image edited": lambda d: (d / "images/test/00000.png").write_bytes(b"not the render"),
    "bit flipped, stat unchanged": lambda d: _flip_a_bit_unseen(d / "images/train/00001.png"),
    "mask deleted": lambda d: (d / "masks/train/00002.png").unlink(),
    "metadata.csv truncated": lambda d: (d / "metadata.csv").write_text("file_name,label\n"),
    "manifest missing": lambda d: (d / "manifest.json").unlink(),
}


@pytest.mark.parametrize("tamper", list(TAMPER))
def test_a_cached_benchmark_that_no_longer_matches_its_manifest_is_rendered_again(renders, tamper):
    first = benchmarks.cached_export("tiny-birds")
    rendered = _files(first)
    assert benchmarks.cached_export("tiny-birds") == first and len(renders) == 1  # intact: reused
    TAMPER[tamper](first)
    assert benchmarks.cached_export("tiny-birds") == first and len(renders) == 2
    assert _files(first) == rendered and fsio.manifest_problem(first) is None
    assert sorted(p.name for p in first.parent.iterdir()) == [first.name]  # no stale or partial folder left

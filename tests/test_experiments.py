"""The closed loop on tiny random models and a small custom benchmark: cells, caching, resume,
results.csv, report, loop; and the fine-tuning recipe itself on separable data."""

from __future__ import annotations

import copy
import csv
import json

import numpy as np
import pytest
import torch
import yaml

from advprompts.experiments.config import ExperimentConfig, load_experiment_config
from advprompts.experiments.report import adversary_tables, budget_table, write_report
from advprompts.experiments.runner import ExperimentRunner
from advprompts.tasks.models import load_task_model
from advprompts.tasks.train import Tensors, TrainRecipe, evaluate, train_classifier
from advprompts.world.benchmarks import Benchmark, export_benchmark

SMALL_BENCH = {
    "name": "mini-birds", "classes": ["landbird", "waterbird"],
    "class_objects": {"landbird": ["sparrow"], "waterbird": ["duck"]},
    "target_descriptions": ["a bird in the snow", "a bird in a lake"],
    "splits": {
        "train": {"size": 16, "cells": [{"classes": ["waterbird"], "places": "water"},
                                        {"classes": ["landbird"], "places": "land"}]},
        "test": {"size": 12, "balanced": True, "cells": [
            {"classes": ["waterbird"], "places": "water"}, {"classes": ["waterbird"], "places": "land"},
            {"classes": ["landbird"], "places": "water"}, {"classes": ["landbird"], "places": "land"}]},
        "ood_pool": {"size": 8, "balanced": True, "cells": [{"classes": ["waterbird"], "places": "land"},
                                                             {"classes": ["landbird"], "places": "water"}]},
    },
}


@pytest.fixture(scope="module")
def bench_dir(tmp_path_factory):
    return export_benchmark(Benchmark(**SMALL_BENCH), tmp_path_factory.mktemp("bench") / "mini-birds")


def _config(bench_dir, **kw) -> ExperimentConfig:
    data = {
        "name": "t", "benchmark": str(bench_dir), "ood_split": "ood_pool", "model": "tiny", "image_size": 16,
        "train": {"epochs": 2, "batch_size": 8}, "finetune": {"epochs": 1, "batch_size": 8},
        "max_extra": 4, "budgets": [1.0, 0.5], "seeds": [0],
        "generation": {"steps": 2, "guidance_scale": 3.0, "batch_size": 8},
        "methods": {
            "no_extra": {"kind": "no_extra"},
            "agnostic": {"kind": "text", "prompts": ["a photo of a {class} in nature"]},
            "guided_text": {"kind": "text"},
            "random": {"kind": "random", "num_prompts": 2, "num_tokens": 2},
            "ap": {"kind": "optimized", "optimize": "tiny-ap", "set": ["optim.steps=2", "log.tensorboard=false"]},
            "cutmix": {"kind": "augment", "augment": "cutmix"},
            "real_ood": {"kind": "real_ood"},
        },
    }
    data.update(kw)
    return ExperimentConfig(**data)


def test_experiment_cells_results_report_and_resume(bench_dir, tmp_path, tiny):
    cfg = _config(bench_dir)
    out = tmp_path / "exp"
    rows = ExperimentRunner(cfg, out, components=tiny, progress=False).run()
    # no_extra once, every other method at both budgets (4 and 2 extra images).
    assert len(rows) == 1 + 6 * 2
    assert sorted({(r["method"], r["n_extra"]) for r in rows})[:2] == [("agnostic", 2), ("agnostic", 4)]
    with open(out / "results.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert list(table[0])[:6] == ["benchmark", "method", "n_extra", "seed", "avg_acc", "worst_group_acc"]
    groups = [c for c in table[0] if c.startswith("acc_")]
    assert groups == ["acc_landbird-land", "acc_landbird-water", "acc_waterbird-land", "acc_waterbird-water"]
    for r in table:
        accs = [float(r[g]) for g in groups]
        assert float(r["worst_group_acc"]) == pytest.approx(min(accs), abs=1e-4)
    # Generated pools: label-preserving, one image per (source, prompt), per-class AP prompts on their class.
    with open(out / "pools" / "ap-s0" / "metadata.csv", newline="") as f:
        ap_rows = list(csv.DictReader(f))
    assert len(ap_rows) >= 4
    for r in ap_rows:
        assert r["prompt_file"].endswith(".safetensors")
    assert (out / "pools" / "random-s0" / "prompts" / "prompt_1.safetensors").is_file()
    # Resume: cached cells are reused; a deleted cell is the only one recomputed.
    (out / "cells" / "agnostic-n2-s0.json").unlink()
    before = {p.name: p.stat().st_mtime_ns for p in (out / "cells").iterdir()}
    rows2 = ExperimentRunner(cfg, out, components=tiny, progress=False).run()
    after = {p.name: p.stat().st_mtime_ns for p in (out / "cells").iterdir()}
    assert {k for k in after if after[k] != before.get(k)} == {"agnostic-n2-s0.json"}
    assert len(rows2) == len(rows)
    from advprompts.zoo.oracle import Oracle

    report = write_report(out, cfg, components=tiny, oracle=Oracle().eval())
    text = report.read_text()
    assert "absent from train or under a quarter of their class there (train holds landbird-land, waterbird-water)" in text
    assert "| ap | 4 | 1 |" in text and (out / "figures" / "accuracy_vs_extra.png").is_file()
    assert "## Learned prompts" in text and (out / "figures" / "grid_ap-s0.png").is_file()


def test_experiment_refuses_other_config(bench_dir, tmp_path, tiny):
    from advprompts.errors import OutputExistsError

    cfg = _config(bench_dir, methods={"no_extra": {"kind": "no_extra"}})
    ExperimentRunner(cfg, tmp_path / "e", components=tiny, progress=False).run()
    with pytest.raises(OutputExistsError):
        ExperimentRunner(_config(bench_dir, max_extra=3, methods={"no_extra": {"kind": "no_extra"}}),
                         tmp_path / "e", components=tiny, progress=False)


def test_per_group_prompts_and_transfer_rows(tmp_path, tiny):
    """wildcam-synth's shape: one GAP per target group, each guided by that group's own unlabelled images,
    and transfer rows (the same extra data fine-tuning another architecture)."""
    spec = dict(SMALL_BENCH, target_split="target")
    spec["splits"] = dict(SMALL_BENCH["splits"], target=dict(SMALL_BENCH["splits"]["ood_pool"], size=4))
    bench = export_benchmark(Benchmark(**spec), tmp_path / "bench-t")
    cfg = _config(bench, target_split="target", max_extra=4, budgets=[1.0], transfer=["resnet18"],
                  transfer_methods=["gap"], methods={
                      "no_extra": {"kind": "no_extra"},
                      "gap": {"kind": "optimized", "optimize": "tiny-gap", "per_group": True, "set": ["optim.steps=1"]}})
    out = tmp_path / "pg"
    rows = ExperimentRunner(cfg, out, components=tiny, progress=False).run()
    groups = ["landbird-water", "waterbird-land"]
    for group in groups:
        run = yaml.safe_load((out / "prompts" / "gap-s0" / group / "config.yaml").read_text())
        image_loss = next(loss for loss in run["losses"] if loss["name"] == "image_cosine")
        folder = out / "targets" / group
        assert image_loss["params"]["target_images"] == str(folder)
        assert len(list(folder.iterdir())) == 2  # the group's own target images, nothing else
    with open(out / "pools" / "gap-s0" / "metadata.csv", newline="") as f:
        used = {r["prompt_file"] for r in csv.DictReader(f)}
    assert {g for g in groups if any(f"/{g}/" in u or f"-{g}" in u for u in used)} == set(groups)
    assert sorted(r["method"] for r in rows) == ["gap", "gap->resnet18", "no_extra"]


def test_target_groups_prompts_batched_together_match_one_group_at_a_time(tmp_path, tiny):
    """With prompt_batch > 1 a per_group method's groups are optimised in one batch: same prompts, same pool,
    one profile row for the batch."""
    from safetensors.torch import load_file

    from advprompts.fsio import read_csv

    spec = dict(SMALL_BENCH, target_split="target")
    spec["splits"] = dict(SMALL_BENCH["splits"], target=dict(SMALL_BENCH["splits"]["ood_pool"], size=4))
    bench = export_benchmark(Benchmark(**spec), tmp_path / "bench-t")
    gap = {"kind": "optimized", "optimize": "tiny-gap", "per_group": True, "set": ["optim.steps=2"]}
    cfg = _config(bench, target_split="target", max_extra=4, budgets=[1.0], methods={"gap": gap})
    files = {}
    for batch in (None, 4):
        runner = ExperimentRunner(cfg, tmp_path / f"b{batch}", components=copy.deepcopy(tiny), progress=False,
                                  prompt_batch=batch)
        runner.pool("gap", cfg.methods["gap"], 0)
        files[batch] = sorted((tmp_path / f"b{batch}" / "prompts").rglob("prompt_*.safetensors"))
        stages = [r["method"] for r in read_csv(tmp_path / f"b{batch}" / "profile.csv") if r["stage"] == "prompts"]
        assert stages == (["gap/landbird-water", "gap/waterbird-land"] if batch is None else ["gap/2 groups"])
    assert [f.relative_to(tmp_path / "bNone") for f in files[None]] == [f.relative_to(tmp_path / "b4") for f in files[4]]
    assert len(files[4]) == 4  # 2 groups x 2 classes
    for a, b in zip(files[None], files[4]):
        torch.testing.assert_close(load_file(b), load_file(a), rtol=1e-5, atol=1e-5)
    pools = [read_csv(tmp_path / f"b{b}" / "pools" / "gap-s0" / "metadata.csv") for b in (None, 4)]
    assert [r["source_file"] for r in pools[0]] == [r["source_file"] for r in pools[1]]


def test_adversary_finds_prompts_against_another_architecture(bench_dir, tmp_path, tiny):
    """`adversary: resnet18` optimises against the seed's ResNet-18 base model while the experiment fine-tunes
    small_cnn; with transfer=[resnet18] the report shows the 2 x 2 (found against x fine-tuned)."""
    opt = {"kind": "optimized", "optimize": "tiny-ap", "set": ["optim.steps=1", "log.tensorboard=false"]}
    cfg = _config(bench_dir, budgets=[1.0], transfer=["resnet18"],
                  methods={"ap": opt, "ap_r18": dict(opt, adversary="resnet18")})
    out = tmp_path / "adv"
    rows = ExperimentRunner(cfg, out, components=tiny, progress=False).run()
    for method, arch in (("ap", "small_cnn"), ("ap_r18", "resnet18")):
        task = yaml.safe_load((out / "prompts" / f"{method}-s0" / "config.yaml").read_text())["task"]
        assert task["arch"] == arch
        assert task["weights"] == str(out / "models" / f"base-{arch}-s0.safetensors")
    assert sorted(r["method"] for r in rows) == ["ap", "ap->resnet18", "ap_r18", "ap_r18->resnet18"]
    wg = {r["method"]: 100 * r["worst_group_acc"] for r in rows}
    text = write_report(out, cfg).read_text()
    assert "## Model-specific data" in text
    assert "| prompts found against | fine-tuned small_cnn | fine-tuned resnet18 |" in text
    assert f"| small_cnn (`ap`) | {wg['ap']:.1f} | {wg['ap->resnet18']:.1f} |" in text
    assert f"| resnet18 (`ap_r18`) | {wg['ap_r18']:.1f} | {wg['ap_r18->resnet18']:.1f} |" in text


def test_adversary_table_and_validation(bench_dir):
    opt = {"kind": "optimized", "optimize": "tiny-gap"}
    cfg = _config(bench_dir, transfer=["resnet18"], methods={
        "no_extra": {"kind": "no_extra"}, "gap": opt, "gap_r": dict(opt, adversary="resnet18"),
        "ap": {"kind": "optimized", "optimize": "tiny-ap"}})
    rows = [{"method": m, "n_extra": n, "seed": s, "worst_group_acc": w}
            for m, n, s, w in [("gap", 4, 0, 0.1), ("gap", 4, 1, 0.2), ("gap->resnet18", 4, 0, 0.3),
                               ("gap->resnet18", 4, 1, 0.5), ("gap_r", 4, 0, 0.4), ("gap_r", 4, 1, 0.4),
                               ("gap_r->resnet18", 4, 0, 0.6), ("gap_r", 2, 0, 0.9), ("ap", 4, 0, 0.7),
                               ("no_extra", 0, 0, 0.0)]]
    lines = adversary_tables(rows, cfg)
    assert "at 4 extra images" in lines[0]
    assert lines[2:6] == ["| prompts found against | fine-tuned small_cnn | fine-tuned resnet18 |", "|---|---|---|",
                          "| small_cnn (`gap`) | 15.0 ± 7.1 | 40.0 ± 14.1 |",  # sample std (ddof=1)
                          "| resnet18 (`gap_r`) | 40.0 ± 0.0 | 60.0 |"]      # one seed: the mean alone
    assert adversary_tables(rows, cfg, n_extra=2)[4:6] == ["| small_cnn (`gap`) |  |  |",
                                                           "| resnet18 (`gap_r`) | 90.0 |  |"]
    assert adversary_tables(rows, _config(bench_dir, methods={"gap": opt})) == []  # no adversary: no table
    with pytest.raises(ValueError, match="optimized methods only"):
        _config(bench_dir, methods={"t": {"kind": "text", "adversary": "resnet18"}})
    with pytest.raises(ValueError, match="not a task model"):
        _config(bench_dir, methods={"g": dict(opt, adversary="resnet7")})


def test_budget_table_pivots_mean_and_std_over_seeds():
    rows = [{"method": m, "n_extra": n, "seed": s, "worst_group_acc": w, "avg_acc": a}
            for m, n, s, w, a in [("no_extra", 0, 0, 0.01, 0.5), ("no_extra", 0, 1, 0.03, 0.6),
                                  ("gap", 20, 0, 0.40, 0.8), ("gap", 20, 1, 0.50, 0.9), ("gap", 40, 0, 0.6, 0.7),
                                  ("ap", 40, 0, 0.1, 0.55)]]
    lines = budget_table(rows).splitlines()
    assert lines[0] == "| method | 0 extra | 20 extra | 40 extra |"
    assert lines[2] == "| no_extra | 2.0 ± 1.4 / 55.0 |  |  |"  # sample std (ddof 1); methods without extra data first
    assert lines[3] == "| ap |  |  | 10.0 ± 0.0 / 55.0 |"
    assert lines[4] == "| gap |  | 45.0 ± 7.1 / 85.0 | 60.0 ± 0.0 / 70.0 |"


def test_headroom_pairs_real_ood_with_no_extra_per_seed():
    from advprompts.experiments.report import headroom_lines

    rows = [{"method": m, "n_extra": n, "seed": s, "worst_group_acc": w, "avg_acc": a}
            for m, n, s, w, a in [("no_extra", 0, 0, 0.10, 0.50), ("no_extra", 0, 1, 0.20, 0.60),
                                  ("real_ood", 64, 0, 0.80, 0.90), ("real_ood", 64, 1, 0.70, 0.80),
                                  ("real_ood", 16, 0, 0.5, 0.7), ("gap", 64, 0, 0.3, 0.6)]]
    lines = headroom_lines(rows)
    assert lines[6] == "| average accuracy | 55.0 ± 7.1 | 85.0 ± 7.1 | 30.0 ± 14.1 |"  # gains 40 and 20
    assert lines[7] == "| worst-group accuracy | 15.0 ± 7.1 | 75.0 ± 7.1 | |"
    assert headroom_lines([r for r in rows if r["method"] != "real_ood"]) == []


def test_presets_validate():
    for name in ("waterbirds-synth", "waterbirds-synth-95", "demo", "demo-quick", "wildcam-synth", "wildcam-synth-easy",
                 "waterbirds-sd15"):
        cfg = load_experiment_config(name)
        assert cfg.methods and cfg.max_extra > 0
        if cfg.benchmark.startswith("waterbirds-synth"):  # the embedded generator knows the species, not the class names
            assert cfg.generation.class_words == {"waterbird": "duck", "landbird": "sparrow"}
            assert "agnostic" not in cfg.methods or "{class}" in cfg.methods["agnostic"].prompts[0]
    cfg = load_experiment_config("waterbirds-synth", ["seeds=[5]"], methods=["gap", "no_extra"])
    assert cfg.seeds == [5] and list(cfg.methods) == ["gap", "no_extra"]
    # A subset keeps the transfer rows of the methods it keeps, and its dump (the run's experiment.yaml) loads.
    for methods, transfer in ((["no_extra", "gp", "gap"], (["resnet18"], ["no_extra", "gap"])),
                              (["gp", "ap"], ([], []))):
        cfg = load_experiment_config("wildcam-synth", methods=methods)
        assert (cfg.transfer, cfg.transfer_methods) == transfer
        assert ExperimentConfig.model_validate(cfg.model_dump(mode="json")) == cfg


def test_documented_experiment_configs_validate():
    """Every config in docs/experiments (probes the README and FINDINGS cite) still loads, and so does each
    optimised method's preset with its overrides, so a documented command cannot rot unnoticed."""
    from pathlib import Path

    from advprompts.config.presets import apply_overrides, read_yaml
    from advprompts.config.schema import parse_config

    docs = Path(__file__).parents[1] / "docs" / "experiments"
    files = sorted(docs.glob("*.yaml")) + sorted(docs.glob("results/*/experiment.yaml"))  # probes, recorded runs
    assert len(files) >= 20
    for f in files:
        cfg = load_experiment_config(str(f))
        for name, spec in cfg.methods.items():
            if spec.kind == "optimized":
                parse_config(apply_overrides(read_yaml(spec.optimize), spec.set), what=f"{f.name}: {name}")


@pytest.mark.parametrize("fast", [{}, {"autocast": "bf16", "channels_last": True}], ids=["fp32", "bf16-channels-last"])
def test_fine_tuning_learns_from_extra_data(fast):
    """The shared recipe must learn a cue that only the extra data teaches (else no method can help), on its
    default path and on the opt-in fast path, which must hand back weights safetensors can save."""
    g = torch.Generator().manual_seed(0)

    def make(n, flip):  # label = bright square in the top-left; background colour = spurious cue
        y = torch.arange(n) % 2
        bg = y if not flip else 1 - y
        x = torch.rand(n, 3, 16, 16, generator=g) * 0.2 + bg.view(-1, 1, 1, 1) * 0.5
        x[:, :, :6, :6] += y.view(-1, 1, 1, 1) * 0.4
        return Tensors(x.clamp(0, 1), y, [f"{int(a)}-{int(b)}" for a, b in zip(y, bg)])

    train, ood, test = make(64, False), make(64, True), Tensors.concat([make(32, False), make(32, True)])
    torch.manual_seed(0)
    base = train_classifier(load_task_model("small_cnn", 2), train, TrainRecipe(epochs=3, batch_size=16, **fast), seed=0)
    before = evaluate(base, test)
    tuned = train_classifier(base, Tensors.concat([train, ood]), TrainRecipe(epochs=4, batch_size=16, **fast), seed=1)
    after = evaluate(tuned, test)
    assert after.worst_group_acc > before.worst_group_acc + 0.3
    assert after.avg_acc > 0.9
    assert all(t.is_contiguous() for t in tuned.state_dict().values())


def test_config_sets_prompt_batch_and_generation_precision(bench_dir, tmp_path, tiny):
    """``prompt_batch`` and ``generation.autocast`` in the config reach the optimiser and the generator; the
    command line's --prompt-batch wins over the config's."""
    cfg = _config(bench_dir, prompt_batch=4, generation={"steps": 2, "guidance_scale": 3.0, "batch_size": 8,
                                                         "autocast": "bf16"},
                  methods={"agnostic": {"kind": "text", "prompts": ["a photo of a {class}"]}}, budgets=[1.0])
    assert ExperimentRunner(cfg, tmp_path / "cli", components=tiny, progress=False, prompt_batch=2).prompt_batch == 2
    runner = ExperimentRunner(cfg, tmp_path / "exp", components=tiny, progress=False)
    assert runner.prompt_batch == 4
    runner.run()
    stored = yaml.safe_load((tmp_path / "exp" / "pools" / "agnostic-s0" / "u0" / "generate.yaml").read_text())
    assert stored["model"]["autocast"] == "bf16"


def test_macro_f1_averages_the_classes_present_in_the_labels():
    from advprompts.tasks.train import macro_f1

    labels, predicted = np.array([0, 0, 1, 1, 2]), np.array([0, 1, 1, 1, 0])
    # class 0: P 1/2, R 1/2 -> 0.5; class 1: P 2/3, R 1 -> 0.8; class 2: never right -> 0; class 3 absent
    assert macro_f1(predicted, labels) == pytest.approx((0.5 + 0.8 + 0.0) / 3)
    assert macro_f1(labels, labels) == 1.0


def test_backbone_loads_everything_but_the_head(tmp_path):
    from safetensors.torch import save_file

    from advprompts.errors import ModelLoadError
    from advprompts.tasks.models import load_backbone

    pre = load_task_model("small_cnn", 13)
    save_file({k: v for k, v in pre.net.state_dict().items() if not k.startswith("14.")}, str(tmp_path / "b.safetensors"))
    model = load_backbone(load_task_model("small_cnn", 2), tmp_path / "b.safetensors")
    assert torch.equal(model.net[0].weight, pre.net[0].weight)
    assert model.net[14].weight.shape == (2, 64)
    save_file({"x": torch.zeros(1)}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(ModelLoadError, match="do not fit"):
        load_backbone(load_task_model("small_cnn", 2), tmp_path / "bad.safetensors")


def test_waterbirds_sd15_experiment_runs_on_the_release_layout(tmp_path, monkeypatch, tiny):
    """The one-command real experiment, on a fake Waterbirds release with a tiny model substituted."""
    from test_real_data import make_waterbirds

    root = make_waterbirds(tmp_path)
    monkeypatch.setenv("ADVPROMPTS_WATERBIRDS_ROOT", str(root))
    small = ["optim.steps=1", "prompt.seeds=[0]", "sampler.image_size=16", "task.input_size=null",
             "log.tensorboard=false", "log.progress=false"]
    cfg = load_experiment_config("waterbirds-sd15", [
        "model=tiny", "image_size=16", "task.arch=small_cnn", "task.input_size=null", "max_extra=2", "budgets=[1.0]",
        "seeds=[0]", "train.epochs=1", "finetune.epochs=1", "generation.steps=2", "generation.batch_size=4",
        f"methods.gap.set={small}"], methods=["no_extra", "gap", "real_ood"])
    rows = ExperimentRunner(cfg, tmp_path / "exp", components=tiny, progress=False).run()
    assert {r["method"] for r in rows} == {"no_extra", "gap", "real_ood"}
    assert all(k.startswith("acc_") for k in rows[0] if k not in
               ("benchmark", "method", "n_extra", "seed", "avg_acc", "worst_group_acc", "macro_f1", "seconds"))
    assert (tmp_path / "exp" / "prompts" / "gap-s0" / "prompt_c1-s0.safetensors").is_file()


class _FixedOracle:
    """Stands in for the zoo's oracle: fixed predictions, so the report's arithmetic is checked exactly."""

    def __init__(self, pred):
        self.pred = pred

    def predict(self, images):
        assert len(images) == len(self.pred["object"])
        return self.pred


def test_composition_for_a_location_shift(tmp_path):
    """A camera-trap-like benchmark (evaluated at an unseen location whose place train rarely shows):
    the report gives the share at the evaluated place and at night, and no 'missing groups' column."""
    from PIL import Image

    from advprompts.experiments.composition import composition_context, composition_section, pool_compositions
    from advprompts.world.places import PLACES
    from advprompts.world.render import camera_location
    from advprompts.zoo.corpus import OBJECT_NAMES, PLACE_NAMES

    spec = {"name": "mini-cam", "classes": ["empty", "cattle"], "class_objects": {"empty": [None], "cattle": ["cattle"]},
            "group": "loc{location}-{time}", "splits": {
                "train": {"size": 12, "cells": [{"classes": "*", "locations": [0, 1], "times": ["day", "night"]}]},
                "test": {"size": 8, "balanced": True, "cells": [{"classes": "*", "locations": [13], "times": ["day"]},
                                                                {"classes": "*", "locations": [13], "times": ["night"]}]}}}
    root = export_benchmark(Benchmark(**spec), tmp_path / "mini-cam")
    target = camera_location(13).place
    pool = tmp_path / "pool"
    (pool / "images").mkdir(parents=True)
    with open(pool / "metadata.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file_name", "label"])
        for i in range(4):
            Image.new("RGB", (64, 64), (40 * i, 90, 30)).save(pool / "images" / f"{i}.png")
            w.writerow([f"images/{i}.png", 1])
    other = next(p for p in PLACE_NAMES if p != target and not PLACES[p].water)
    oracle = _FixedOracle({"object": [OBJECT_NAMES.index("cattle")] * 3 + [OBJECT_NAMES.index("zebra")],
                           "place": [PLACE_NAMES.index(p) for p in (target, target, target, other)],
                           "night": [1, 0, 0, 0]})
    with open(root / "metadata.csv", newline="") as f:
        train = [r for r in csv.DictReader(f) if r["split"] == "train"]
    assert target not in {r["place"] for r in train}
    ctx = composition_context(root, "train", "test")
    lines = composition_section(pool_compositions([pool], ctx, oracle), ctx)
    night = round(100 * sum(r["time"] == "night" for r in train) / len(train))
    assert f"`train` has 0% and {night}%, `test` 100% and 50%" in lines[0]
    assert lines[2] == f"| set | images | faithfulness | at {target} | at night | groups |"
    assert lines[4] == "| pool | 4 | 75.0% | 75% | 25% | cattle-land 50%, cattle-land-night 25%, other-land 25% |"


def test_rare_train_groups_count_as_missing_and_pool_columns(tmp_path):
    """A partial correlation (waterbirds-synth-95's shape): a group under a quarter of its class's train images
    counts as missing; each generated method's results rows get its pool's faithfulness and that share."""
    from PIL import Image

    from advprompts.experiments.composition import add_pool_columns, composition_context, pool_compositions
    from advprompts.world.places import LAND_PLACES, WATER_PLACES
    from advprompts.zoo.corpus import OBJECT_NAMES, PLACE_NAMES

    spec = dict(SMALL_BENCH, name="mini-95")
    spec["splits"] = dict(SMALL_BENCH["splits"], train={"size": 40, "balanced": True, "cells": [
        *[{"classes": ["waterbird"], "places": "water"}] * 9, {"classes": ["waterbird"], "places": "land"},
        *[{"classes": ["landbird"], "places": "land"}] * 9, {"classes": ["landbird"], "places": "water"}]})
    root = export_benchmark(Benchmark(**spec), tmp_path / "mini-95")
    ctx = composition_context(root, "train", "test")
    assert ctx["train_groups"] == {("waterbird", "water"), ("landbird", "land")}
    assert ctx["rare"] == [("landbird", "water"), ("waterbird", "land")] and ctx["has_missing"]
    pool = tmp_path / "pools" / "gap-s3"
    (pool / "images").mkdir(parents=True)
    with open(pool / "metadata.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file_name", "label"])
        for i, label in enumerate([1, 1, 0, 0]):  # two ducks, two sparrows
            Image.new("RGB", (64, 64), (50 * i, 90, 30)).save(pool / "images" / f"{i}.png")
            w.writerow([f"images/{i}.png", label])
    duck, sparrow = OBJECT_NAMES.index("duck"), OBJECT_NAMES.index("sparrow")
    oracle = _FixedOracle({"object": [duck, duck, sparrow, duck], "night": [0] * 4,
                           "place": [PLACE_NAMES.index(p) for p in (LAND_PLACES[0], WATER_PLACES[0],
                                                                    WATER_PLACES[0], WATER_PLACES[0])]})
    comps = pool_compositions([pool], ctx, oracle)
    # duck on land (rare: counts), duck on water (train's), sparrow on water (rare: counts), duck labelled sparrow.
    assert comps["gap-s3"]["faithfulness"] == 0.75 and comps["gap-s3"]["missing_groups"] == 0.5
    assert json.loads((pool / "composition.json").read_text()) == comps["gap-s3"]  # cached
    rows = add_pool_columns([{"method": "gap", "seed": 3, "n_extra": 20}, {"method": "gap", "seed": 0, "n_extra": 20},
                             {"method": "no_extra", "seed": 3, "n_extra": 0}], comps)
    assert rows[0]["pool_faithfulness"] == 0.75 and rows[0]["pool_missing_groups"] == 0.5
    assert "pool_faithfulness" not in rows[1] and "pool_faithfulness" not in rows[2]


def test_waterbirds_gp_and_gap_share_class_agnostic_guidance():
    """Every GP / GAP prompt sees the same eight descriptions (nothing says which class lacks which place);
    gap_nearest is GP plus the adversary; only the *_class_aware ablations are told the missing groups."""
    from advprompts.config.presets import apply_overrides, read_yaml
    from advprompts.world.benchmarks import load_benchmark

    cfg = load_experiment_config("waterbirds-synth")

    def losses(method):
        spec = cfg.methods[method]
        return {l["name"]: l for l in apply_overrides(read_yaml(spec.optimize), spec.set)["losses"]}

    eight = load_benchmark("waterbirds-synth").target_descriptions
    gp, gap, nearest = losses("gp"), losses("gap"), losses("gap_nearest")
    assert set(gp) == {"text_l2"} and set(gap) == set(nearest) == {"opposite_ce", "text_l2"}
    for guidance in (gp["text_l2"], gap["text_l2"], nearest["text_l2"]):
        assert guidance["params"]["descriptions"] == eight and "per_class" not in guidance["params"]
        assert not guidance["params"].get("spread")
    assert nearest["text_l2"] == gp["text_l2"] and gp["text_l2"]["params"]["target_mode"] == "nearest"
    assert {k: v for k, v in gap["text_l2"].items() if k != "params"} == \
        {k: v for k, v in gp["text_l2"].items() if k != "params"}
    assert gap["text_l2"]["params"] == {**gp["text_l2"]["params"], "target_mode": "adversary"}
    for method in ("gp_class_aware", "gap_class_aware"):
        assert set(losses(method)["text_l2"]["params"]["per_class"]) == {"waterbird", "landbird"}

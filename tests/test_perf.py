"""`advprompts benchmark --suite quick`: every figure is produced, finite and positive, in seconds."""

from __future__ import annotations

import json
import math

import pytest

from typer.testing import CliRunner

from advprompts.cli.app import app
from advprompts.perf import run_benchmark, table_rows
from advprompts.perf import runner as bench_runner

runner = CliRunner()


def _positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def test_quick_benchmark_writes_every_figure(tmp_path):
    path = tmp_path / "bench.json"
    result = runner.invoke(app, ["benchmark", "--suite", "quick", "--threads", "1", "--json", str(path)])
    assert result.exit_code == 0, result.output
    res = json.loads(path.read_text())
    for key in ("step_overhead_ratio", "generate_speedup_vs_diffusers", "checkpoint_memory_ratio",
                "prompt_batch_speedup"):
        assert _positive(res[key]), (key, res[key])
        assert res["targets"][key]["value"] == res[key] and isinstance(res["targets"][key]["met"], bool)
    scaling = res["steps_scaling"]
    assert scaling["K"] == [1, 2, 5, 10] and all(_positive(s) for s in scaling["seconds"])
    assert math.isfinite(scaling["slope_s_per_step"]) and math.isfinite(scaling["intercept_s"])
    step = res["step"]
    assert _positive(step["step_s"]) and set(step["components"]) == {
        "text_encoder", "unet", "vae_decode", "vae_encode", "clip", "task_model"}
    gen = res["generate"]
    assert _positive(gen["diffusers_images_per_s"]) and _positive(gen["exact_speedup"])
    # The baseline makes the same images as the exact default path (PNG rounding aside).
    assert 0 <= gen["max_pixel_diff_exact_vs_diffusers"] <= 1
    mem = res["checkpoint_memory"]
    assert _positive(mem["with_checkpointing"]["step_mb"]) and _positive(mem["without_checkpointing"]["step_mb"])
    assert res["profile"]["top_ops"] and "Self CPU" in res["profile"]["by_time"]
    assert res["gpu_sd15"] is None and res["complete"] is True
    # A GPU run adds one row per SD 1.5 batch size to the table.
    gpu = {"image_size": 512, "num_steps": 5, "runs": [
        {"checkpointing": mode, "batch_size": b, "seconds_per_step": 0.1 * b, "peak_gb": 6.0 * b, "fits_20gb": b < 4}
        for mode in (True, "blocks") for b in (1, 4)]}
    rows = [r for r in table_rows({**res, "gpu_sd15": gpu}) if r[0].startswith("gpu_sd15")]
    assert [r[0] for r in rows] == ["gpu_sd15[batch 1, per UNet call]", "gpu_sd15[batch 4, per UNet call]",
                                    "gpu_sd15[batch 1, blocks]", "gpu_sd15[batch 4, blocks]"]
    assert "24.0 GB at 512 px" in rows[1][3] and rows[1][2] == "does not fit 20 GB" and rows[0][2] == "fit 20 GB"
    # The batched prompts learn what the one-at-a-time ones learn (float rounding of a larger batch aside).
    assert res["prompt_batch"]["prompts"] == 4 and res["prompt_batch"]["max_embedding_diff"] < 1e-4
    # The fine-tuning fast path: a ratio and how often its model predicts what the fp32 one does.
    assert _positive(res["finetune_fast_speedup"]) and 0 <= res["finetune_fast"]["prediction_agreement"] <= 1
    assert "step_overhead_ratio" in result.output and "generate_speedup_vs_diffusers" in result.output


def test_unknown_suite_is_one_line_exit_2():
    result = runner.invoke(app, ["benchmark", "--suite", "huge"])
    assert result.exit_code == 2 and "huge" in result.output and "quick" in result.output


def test_a_benchmark_cut_short_keeps_its_finished_sections(tmp_path, monkeypatch):
    def boom(*args):
        raise RuntimeError("killed")

    monkeypatch.setattr(bench_runner.step, "steps_scaling", boom)
    path = tmp_path / "bench.json"
    with pytest.raises(RuntimeError, match="killed"):
        run_benchmark("quick", path, threads=1)
    res = json.loads(path.read_text())
    assert res["complete"] is False and _positive(res["step_overhead_ratio"]) and "steps_scaling" not in res


def test_gpu_targets_hold_prompt_batching_to_3():
    assert bench_runner.targets_for("cuda")["prompt_batch_speedup"] == (">=", 3.0)
    assert bench_runner.targets_for("cpu")["prompt_batch_speedup"] == (">=", 1.2)

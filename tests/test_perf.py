"""`advprompts benchmark --suite quick`: every figure is produced, finite and positive, in seconds."""

from __future__ import annotations

import json
import math

from typer.testing import CliRunner

from advprompts.cli.app import app

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
    assert res["gpu_sd15"] is None or _positive(res["gpu_sd15"]["peak_gb"])
    # The batched prompts learn what the one-at-a-time ones learn (float rounding of a larger batch aside).
    assert res["prompt_batch"]["prompts"] == 4 and res["prompt_batch"]["max_embedding_diff"] < 1e-4
    # The fine-tuning fast path: a ratio and how often its model predicts what the fp32 one does.
    assert _positive(res["finetune_fast_speedup"]) and 0 <= res["finetune_fast"]["prediction_agreement"] <= 1
    assert "step_overhead_ratio" in result.output and "generate_speedup_vs_diffusers" in result.output


def test_unknown_suite_is_one_line_exit_2():
    result = runner.invoke(app, ["benchmark", "--suite", "huge"])
    assert result.exit_code == 2 and "huge" in result.output and "quick" in result.output

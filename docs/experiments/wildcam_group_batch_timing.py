"""Paired timing of wildcam-synth GAP's 4 target groups (seed 0), one group at a time and optimised together.

    python docs/experiments/wildcam_group_batch_timing.py runs/gbt [STEPS]

Both arms run back to back in one process (this machine's speed drifts between sittings), each into its
own experiment folder; prints the seconds of each arm and the largest difference between their prompts.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from safetensors.torch import load_file

from advprompts.experiments.config import load_experiment_config
from advprompts.experiments.runner import ExperimentRunner


def main(out: Path, steps: int = 60) -> None:
    cfg = load_experiment_config("wildcam-synth", ["seeds=[0]", f"methods.gap.set=[optim.steps={steps}]"],
                                 methods=["gap"])
    seconds, files = {}, {}
    for batch in (1, 4):
        runner = ExperimentRunner(cfg, out / f"batch{batch}", progress=False, prompt_batch=batch, say=print)
        runner.base_model(0)
        t0 = time.perf_counter()
        results = runner.optimize_prompts("gap", cfg.methods["gap"], 0, runner.components)
        seconds[batch], files[batch] = time.perf_counter() - t0, [r.file for r in results]
    diff = max(float((load_file(a)[k] - load_file(b)[k]).abs().max())
               for a, b in zip(files[1], files[4]) for k in load_file(a))
    print(f"one group at a time {seconds[1]:.1f} s, together {seconds[4]:.1f} s: {seconds[1] / seconds[4]:.2f}x; "
          f"largest prompt difference {diff:.2g}")


if __name__ == "__main__":
    main(Path(sys.argv[1]), *(int(a) for a in sys.argv[2:3]))

"""The whole closed loop on the embedded waterbirds benchmark, in minutes on a CPU."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def main(
    out: Annotated[Path, typer.Option("--out", "-o", help="Demo folder.")] = Path("runs/demo"),
    quick: Annotated[bool, typer.Option("--quick", help="The 90-second version (fewer steps and images).")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Start again in --out.")] = False,
) -> None:
    from advprompts.errors import require_extra
    from advprompts.experiments.session import run_and_report

    require_extra("matplotlib", "plot", "plotting the report's figures")  # before the banner and the run
    preset = "demo-quick" if quick else "demo"
    typer.echo("advprompts demo: waterbirds-synth (train: waterbirds only on water, landbirds only on land), "
               "shipped tiny Stable Diffusion and CLIP.")
    typer.echo("Trains a classifier, finds AP and GAP prompts against it, generates extra data, fine-tunes, and "
               "compares with no extra data, agnostic prompts and real OOD images.")
    run_and_report(preset, out, overwrite=overwrite, echo=typer.echo)

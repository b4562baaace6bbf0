"""The embedded model zoo: build (retrain from scratch), retrain-inpaint, check (quality gates), path."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from advprompts.cli._errors import handle_errors

app = typer.Typer(help=__doc__.splitlines()[0], no_args_is_help=True)


@app.command("build")
@handle_errors
def build(out: Annotated[Path, typer.Option(help="Where to write sd/, clip/, oracle/.")] = Path("runs/zoo"),
          work: Annotated[Path, typer.Option(help="Checkpoints and caches; rerun to resume.")] = Path("runs/zoo-work"),
          bpe: Annotated[Optional[Path], typer.Option(help="CLIP bpe_simple_vocab_16e6.txt.gz (default: "
                                                     "open_clip's, else the committed tokenizer).")] = None,
          device: Annotated[str, typer.Option(help="cpu, cuda[:N] or auto (the committed models are from "
                                                   "cpu; other devices give other weights).")] = "cpu"):
    """Retrain every embedded model from scratch (deterministic, resumable; about 90 min on 2 cores)."""
    import logging

    from advprompts.zoo.build import build as build_zoo
    from advprompts.zoo.trainers import ZooRecipe

    logging.getLogger("advprompts").setLevel(logging.INFO)
    typer.echo(f"zoo written to {build_zoo(out, work, ZooRecipe(device=device), bpe=bpe)}")


@app.command("retrain-inpaint")
@handle_errors
def retrain_inpaint(out: Annotated[Path, typer.Option(help="New zoo folder: a copy of --base with the retrained "
                                                          "sd/unet_inpaint.")],
                    base: Annotated[Optional[Path], typer.Option(help="Zoo to start from (default: the embedded "
                                                                      "one).")] = None,
                    work: Annotated[Path, typer.Option(help="Corpus, latents, checkpoints; rerun to resume.")] =
                    Path("runs/zoo-inpaint-work"),
                    steps: Annotated[int, typer.Option(help="Training steps.")] = 600,
                    ring_weight: Annotated[float, typer.Option(help="Extra loss weight next to the kept object.")] = 0.0,
                    ring: Annotated[int, typer.Option(help="Width of that ring, in latent cells.")] = 2,
                    device: Annotated[str, typer.Option(help="cpu, cuda[:N] or auto.")] = "cpu"):
    """Retrain only the 9-channel inpainting UNet on a zoo's own models (about 10 min on 2 cores)."""
    import logging

    from advprompts.zoo.build import copy_zoo, retrain_inpaint as retrain
    from advprompts.zoo.paths import zoo_dir
    from advprompts.zoo.trainers import ZooRecipe

    copy_zoo(base or zoo_dir(), out)
    logging.getLogger("advprompts").setLevel(logging.INFO)
    recipe = ZooRecipe(device=device, inpaint_steps=steps, inpaint_ring_weight=ring_weight, inpaint_ring=ring)
    typer.echo(f"zoo with a retrained inpainting UNet: {retrain(out, work, recipe)}; run `advprompts zoo check "
               f"--zoo {out}` for its gates")


@app.command("check")
@handle_errors
def check(zoo: Annotated[Optional[Path], typer.Option(help="Zoo folder (default: the embedded one).")] = None,
          grid: Annotated[Optional[Path], typer.Option(help="Save a generation grid (objects x places).")] = None):
    """Run the quality gates; exit status 1 when one fails."""
    from advprompts.zoo.check import check as run_check
    from advprompts.zoo.check import format_gates, format_per_object
    from advprompts.zoo.paths import zoo_dir

    result = run_check(zoo or zoo_dir(), grid_out=grid)
    typer.echo(format_gates(result.gates) + "\n\n" + format_per_object(result.per_object))
    if not result.passed:
        raise typer.Exit(code=1)


@app.command("path")
def path():
    """Print the embedded Stable Diffusion pipeline folder."""
    from advprompts.zoo.paths import sd_path

    typer.echo(str(sd_path()))

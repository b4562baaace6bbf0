"""Learn prompts (AP / GP / GAP) from a config file or preset.

``--shard i/n`` (a job array) and ``accelerate launch -m advprompts optimize ...`` split the prompts
(per class / seed keys) over processes that all write into the same ``--out``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from advprompts.cli.commands import PromptBatch


def main(
    config: Annotated[str, typer.Option("--config", "-c", help="YAML config file or preset name.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Run folder.")],
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Override, e.g. optim.lr=1e-3 (YAML value).")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in --out from its checkpoints.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace the run in --out.")] = False,
    shard: Annotated[Optional[str], typer.Option("--shard", help="i/n: train every n-th prompt starting at i.")] = None,
    prompt_batch: PromptBatch = None,
) -> None:
    from advprompts.config.presets import load_config
    from advprompts.shards import parse_shard
    from advprompts.optim.loop import optimize

    parse_shard(shard)  # reject a bad --shard before loading anything
    cfg = load_config(config, set_ or [])
    result = optimize(cfg, out, resume=resume, overwrite=overwrite, shard=shard, prompt_batch=prompt_batch)
    for p in result.prompts:
        losses = ", ".join(f"{k}={v:.4g}" for k, v in p.losses.items() if k != "seconds")
        typer.echo(f"{p.file}  steps={p.steps}{' (early stop)' if p.stopped_early else ''}  {losses}")

"""One module per command; each defines ``main`` and imports heavy libraries inside it."""

from typing import Annotated, Optional

import typer

#: ``--prompt-batch`` of the commands that optimise prompts (optimize, experiment, loop).
PromptBatch = Annotated[Optional[int], typer.Option(
    "--prompt-batch", min=1, help="Optimise up to N prompts together in one batched rollout (fewer when "
                                  "memory is short); the results equal one-at-a-time to float rounding.")]

"""advprompts: controlled training data generation with diffusion models.

Adversarial Prompts (AP), Guided Prompts (GP) and Guided Adversarial Prompts (GAP):
learn prompt embeddings that make a text-to-image diffusion model generate the
training images a given model needs, then generate, fine-tune and measure.
"""

from __future__ import annotations

import importlib

from advprompts.registry import add_plugin as _add_plugin

__version__ = "0.1.0"

# The lab (embedded world, model zoo, experiments) sits above the core library, which never imports
# it: these modules add the lab's names (shipped benchmarks, embedded models, experiment presets) to
# the core's registries, imported by the first lookup that misses (advprompts.registry).
for _plugin in ("advprompts.world.plugin", "advprompts.zoo.plugin", "advprompts.experiments.plugin"):
    _add_plugin(_plugin)

# Public API, imported lazily so that `import advprompts` (and the CLI's --help) stays fast.
_EXPORTS = {
    "load_config": "advprompts.config.presets",
    "list_presets": "advprompts.config.presets",
    "RunConfig": "advprompts.config.schema",
    "GenerateConfig": "advprompts.config.schema",
    "load_components": "advprompts.models.loading",
    "load_clip": "advprompts.models.loading",
    "LearnablePrompt": "advprompts.prompts",
    "Sampler": "advprompts.sampler",
    "optimize": "advprompts.optim.loop",
    "generate_dataset": "advprompts.generate",
    "generate_text2img": "advprompts.generate",
    "list_losses": "advprompts.losses",
    "load_task_model": "advprompts.tasks.models",
    "FolderDataset": "advprompts.data.folder",
    "run_and_report": "advprompts.experiments.session",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'advprompts' has no attribute {name!r}")

"""The experiments' presets and config, added as a plugin to what the core lists and documents:
``advprompts presets`` (the ``experiment`` kind) and the config reference (``ExperimentConfig``)."""

from advprompts.config.presets import PRESET_KINDS, PresetKind
from advprompts.config.reference import DOCUMENTED
from advprompts.experiments.config import PRESET_DIR, ExperimentConfig

PRESET_KINDS.add("experiment", PresetKind("experiment presets", "advprompts experiment --config NAME", PRESET_DIR))
DOCUMENTED.add("ExperimentConfig", (ExperimentConfig, "`advprompts experiment|demo|loop --config`."))

"""Experiment configs: which benchmark, which methods (each a config of the same pipeline),
budgets, seeds, and the training recipe shared by every method.

A method is one of a few kinds:
- ``no_extra``: fine-tune on the train split only (same recipe as everyone);
- ``real_ood``: real images of the benchmark's OOD split (the upper bound);
- ``text``: fixed text prompts (agnostic prompts, ALIA-style target descriptions);
- ``random``: random vocabulary-Gaussian embeddings, not optimised;
- ``optimized``: prompts learned by ``advprompts optimize`` with a preset (GP / AP / GAP);
- ``augment``: CutMix / RandAugment copies of train images;
- ``derived``: another method's pool (``pool_of``) changed by ``label_noise`` / ``oracle_filter``: ablations
  that test what a pool's effect comes from without generating it again.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from advprompts.config.presets import find_yaml, load_yaml_config
from advprompts.config.schema import LatentMask, StrictModel, check_template
from advprompts.errors import ConfigError
from advprompts.tasks.train import TrainRecipe

PRESET_DIR = Path(__file__).parent / "presets"


def check_arch(arch: str, what: str) -> str:
    """``arch`` when it names a task model (registered, ``torchvision:<name>`` or ``timm:<name>``)."""
    from advprompts.tasks.models import list_task_models

    if arch not in list_task_models() and ":" not in arch:
        raise ValueError(f"{what} {arch!r} is not a task model; available: "
                         f"{', '.join(list_task_models())}, torchvision:<name>, timm:<name>")
    return arch


def check_pool_of(name: str, spec: "MethodSpec", methods: dict) -> None:
    """A derived method's source is another, non-derived method of the same experiment."""
    src = spec.pool_of
    if src is not None and (src not in methods or methods[src].kind in ("derived", "no_extra")):
        raise ValueError(f"method {name!r} takes the pool of {src!r}, which is not a method with a pool among "
                         f"{', '.join(methods)}; name it in the config (and in --methods)")


class MethodSpec(StrictModel):
    kind: Literal["no_extra", "real_ood", "text", "random", "optimized", "augment", "derived"]
    prompts: list[str] = []                 # text: prompts ({class} allowed); empty = benchmark's target descriptions
    optimize: str | None = None             # optimized: a RunConfig preset or YAML file
    set: list[str] = []                     # optimized: --set overrides of that preset
    per_group: bool = False                 # optimized: one prompt per target group, guided by its images
    num_prompts: int = Field(4, ge=1)       # random: how many random prompts
    num_tokens: int = Field(5, ge=1)        # random: tokens per prompt
    template: str = "{prompt}"              # random: prompt template
    augment: Literal["cutmix", "randaugment"] | None = None
    # optimized: the task architecture the prompts are found against (its base model for the seed);
    # default the experiment's task.arch. With ``transfer`` this separates model-specific data effects.
    adversary: str | None = None
    pool_of: str | None = None              # derived: the method whose pool this one changes
    label_noise: float = Field(0.0, ge=0, lt=1)  # ablation: this share of the pool's labels (of every budget's
                                            # prefix) replaced by a random other class
    oracle_filter: bool = False             # ablation: keep only the images in which the zoo's oracle (renderer
                                            # ground truth; embedded models only) sees the labelled class
    source_split: str | None = None         # text / random / optimized: generate from this split's labelled images
                                            # instead of train's (the prompts are still found on train); with the
                                            # evaluated shift's split an ablation: sources no method has
    # per_group optimized: each group's prompt paints around sources whose metadata column of this name equals
    # the group's (e.g. `time`: the night groups' prompts get train's night images); prompts are found as without
    source_match: str | None = None

    @field_validator("prompts")
    @classmethod
    def _prompts(cls, v: list[str]) -> list[str]:
        return [check_template(text, ("class",)) for text in v]

    @model_validator(mode="after")
    def _complete(self) -> "MethodSpec":
        if self.kind == "optimized" and not self.optimize:
            raise ValueError("an optimized method needs `optimize` (a preset name or YAML file)")
        if self.adversary is not None:
            if self.kind != "optimized":
                raise ValueError("`adversary` applies to optimized methods only")
            check_arch(self.adversary, "adversary")
        if self.kind == "augment" and self.augment is None:
            raise ValueError("an augment method needs `augment: cutmix | randaugment`")
        if (self.kind == "derived") != (self.pool_of is not None):
            raise ValueError("`pool_of` (the method whose pool is reused) goes with `kind: derived`, and only there")
        if self.source_split is not None and not self.generated:
            raise ValueError("`source_split` applies to generated methods (text, random, optimized) only")
        if self.source_match is not None and not (self.kind == "optimized" and self.per_group):
            raise ValueError("`source_match` applies to per_group optimized methods only")
        if (self.label_noise or self.oracle_filter) and self.kind == "no_extra":
            raise ValueError("`label_noise` and `oracle_filter` change a pool; no_extra has none")
        return self

    def finding(self) -> "MethodSpec":
        """What decides the prompts this method finds: the spec without the sources its pool paints around
        (methods equal here find the same prompts, so one run's prompts serve them all)."""
        return self.model_copy(update={"source_split": None, "source_match": None})

    @property
    def generated(self) -> bool:
        return self.kind in ("text", "random", "optimized")


class GenerationSettings(StrictModel):
    steps: int = Field(15, ge=1)
    guidance_scale: float = Field(7.0, ge=0)
    strength: float = Field(1.0, gt=0, le=1)
    eta: float = Field(0.0, ge=0, le=1)
    batch_size: int = Field(64, ge=1)
    latent_mask: LatentMask = "nearest"     # see SamplerConfig.latent_mask
    negative_prompt: str | None = None      # see SamplerConfig.negative_prompt
    class_words: dict[str, str] = Field(default_factory=dict)  # see PromptConfig; also used while optimising
    autocast: Literal["bf16", "fp16"] | None = None  # mixed-precision generation (opt-in; see ModelConfig.autocast)


class TaskSpec(StrictModel):
    arch: str = "small_cnn"
    input_size: int | None = None
    # Where the base model starts: random init, or a pretrained backbone state dict (safetensors/pt;
    # "embedded" = the zoo's small_cnn pretrained on web-corpus objects, the analogue of ImageNet weights).
    init: str = "scratch"


class ExperimentConfig(StrictModel):
    name: str
    benchmark: str                          # a registered dataset (embedded benchmark) or folder
    train_split: str = "train"
    eval_split: str = "test"
    ood_split: str | None = None            # real_ood pool
    target_split: str | None = None         # unlabelled target images (per-group image guidance)
    model: str = "embedded"                 # diffusion model for generation and optimisation
    image_size: int = Field(64, ge=8)       # the diffusion model's native size (sources are resized to it)
    device: str = "auto"                    # auto = cuda when available, else cpu
    task: TaskSpec = TaskSpec()
    train: TrainRecipe = TrainRecipe()      # the base model, trained on the train split
    finetune: TrainRecipe = TrainRecipe(epochs=10)  # every method: base model fine-tuned on train + extra
    methods: dict[str, MethodSpec]
    max_extra: int = Field(ge=1)
    budgets: list[float] = [1.0, 0.5, 0.25, 0.125, 0.0625]
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2], min_length=1)
    generation: GenerationSettings = GenerationSettings()
    transfer: list[str] = []                # other task architectures fine-tuned on the same extra data
    transfer_methods: list[str] = []        # which methods get a transfer row (default: all)
    # Optimise up to this many prompts of a method (or of a per_group method's target groups) together
    # (optimize's --prompt-batch; results equal one at a time up to float rounding; None: one at a time).
    # The command line's --prompt-batch overrides it.
    prompt_batch: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _budgets(self) -> "ExperimentConfig":
        if any(not 0 < b <= 1 for b in self.budgets):
            raise ValueError("budgets are fractions of max_extra in (0, 1]")
        for arch in self.transfer:  # checked here, not after the base models are trained
            check_arch(arch, "transfer architecture")
        for name, spec in self.methods.items():
            check_pool_of(name, spec, self.methods)
        unknown = [m for m in self.transfer_methods if m not in self.methods]
        if unknown:
            raise ValueError(f"transfer_methods names {unknown[0]!r}, which is not among the methods "
                             f"({', '.join(self.methods)})")
        return self

    def prompt_owner(self, name: str, spec: MethodSpec | None = None) -> str:
        """The method whose prompts ``name`` paints with: the first that finds them the same way (itself,
        unless an earlier method differs from it only in the sources its pool paints around)."""
        spec = spec or self.methods[name]
        return next((m for m, other in self.methods.items() if other.finding() == spec.finding()), name)

    def n_extra(self, budget: float) -> int:
        return max(1, round(self.max_extra * budget))


def experiment_presets() -> dict[str, Path]:
    """The shipped experiment presets, name -> file."""
    return {p.stem: p for p in sorted(PRESET_DIR.glob("*.yaml"), key=lambda p: p.stem)}


def list_experiment_presets() -> list[str]:
    return list(experiment_presets())


def load_experiment_config(spec: str | Path, overrides: list[str] | tuple[str, ...] = (),
                           methods: list[str] | None = None) -> ExperimentConfig:
    """An experiment config from a YAML file or preset name (a file of that name wins), with ``--set``
    overrides and an optional subset of its methods (in the given order)."""
    where = dict(presets=experiment_presets(), what="experiment config", file_first=True)
    config = load_yaml_config(spec, ExperimentConfig, overrides, **where)
    if methods:
        unknown = [m for m in methods if m not in config.methods]
        if unknown:
            raise ConfigError(f"method {unknown[0]!r} is not in {find_yaml(spec, **where).name}; its methods: "
                              f"{', '.join(config.methods)}")
        update: dict = {"methods": {m: config.methods[m] for m in methods}}
        if config.transfer_methods:  # the kept ones (none kept: no transfer rows; [] would mean all)
            kept = [m for m in config.transfer_methods if m in methods]
            update["transfer_methods"] = kept
            if not kept:
                update["transfer"] = []
        config = config.model_copy(update=update)
        try:
            for name, spec in config.methods.items():
                check_pool_of(name, spec, config.methods)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    return config

"""The run configuration: frozen pydantic models, unknown keys and wrong types rejected.

AP, GP and GAP differ only in ``losses``: AP = an adversarial term, GP = guidance terms only,
GAP = both. Every field: ``docs/config-reference.md`` (generated from this file's comments by
``python -m advprompts.config.reference``); loss terms: ``docs/engine.md``.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from advprompts.errors import ConfigError

#: How inpainting brings the object mask to latent resolution: "nearest" (diffusers' inpainting
#: pipelines: one pixel per latent cell) or "cover" (keep every latent cell the object touches).
LatentMask = Literal["nearest", "cover"]


def check_template(text: str, fields: tuple[str, ...]) -> str:
    """``text`` when ``str.format`` fills it from ``fields`` alone (else a ValueError in one line)."""
    try:
        text.format(**{name: "" for name in fields})
    except (KeyError, IndexError, ValueError) as exc:
        allowed = " and ".join("{" + name + "}" for name in fields)
        problem = f"unknown field {{{exc.args[0]}}}" if isinstance(exc, KeyError) else str(exc)
        raise ValueError(f"{text!r}: {problem}; only {allowed} may stand in braces (write {{{{ and }}}} "
                         "for a literal brace)") from None
    return text


class StrictModel(BaseModel):
    """Base of every config section: frozen, unknown keys rejected."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class ModelConfig(StrictModel):
    diffusion: str = "embedded"          # load_components spec: embedded | tiny | folder | hub id
    controlnet: str | None = None        # ControlNet folder / hub id / "tiny" (dense tasks)
    device: str = "auto"                 # auto = cuda when available, else cpu
    autocast: Literal["none", "bf16", "fp16"] = "none"  # mixed precision (opt-in; not bit-identical)


class SamplerConfig(StrictModel):
    num_steps: int = Field(5, ge=1)                # DDIM steps while optimising
    guidance_scale: float = Field(7.0, ge=0)       # CFG scale (<= 1 disables CFG)
    eta: float = Field(0.0, ge=0, le=1)            # DDIM eta
    strength: float = Field(1.0, gt=0, le=1)       # SDEdit strength (1 = start from noise)
    conditioning: Literal["inpaint", "controlnet", "none"] = "inpaint"  # how the label is kept
    paste: bool = True                             # paste source object pixels back under the mask
    latent_mask: LatentMask = "nearest"            # object mask at latent size (see LatentMask)
    conditioning_scale: float = Field(1.0, ge=0)   # ControlNet scale
    negative_prompt: str | None = None             # text of CFG's unconditional branch (default "")
    image_size: int | None = Field(None, ge=8)     # source size (default: UNet sample size x VAE factor)
    # recompute each denoising step in backward (less memory); "blocks": also inside the UNet and VAE decoder,
    # block by block (least memory, about 1.5x the step time on a GPU; the same numbers)
    gradient_checkpointing: bool | Literal["blocks"] = True

    @model_validator(mode="after")
    def _some_step(self) -> "SamplerConfig":
        # SDEdit denoises int(num_steps * strength) steps: refused here, before a command writes anything
        # (the sampler's own check comes after the run folder exists, which then blocks the corrected rerun).
        if int(self.num_steps * self.strength) < 1:
            raise ValueError(f"strength={self.strength} with num_steps={self.num_steps} leaves no denoising step; "
                             "raise either")
        return self


class PromptConfig(StrictModel):
    num_tokens: int = Field(5, ge=1)     # placeholder tokens (learned embedding rows) per prompt
    init: str = "vocab-gaussian"         # vocab-gaussian | vocab-gaussian-cov | random | word:<w>
    template: str = "{prompt}"           # e.g. "a photo of a {class} {prompt}"
    prefix: str = "ap"                   # tokens are <prefix-key-i>
    per_class: bool = False              # one prompt per class, trained on that class's sources
    # The generator's word for a class where it differs from the class name ({class} in the template);
    # e.g. the embedded generator never saw "waterbird" in a caption: {waterbird: duck}.
    class_words: dict[str, str] = Field(default_factory=dict)
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)  # one prompt per seed

    @field_validator("init")
    @classmethod
    def _init(cls, v: str) -> str:
        from advprompts.prompts import check_init

        check_init(v)
        return v

    @field_validator("template")
    @classmethod
    def _template(cls, v: str) -> str:
        if "{prompt}" not in v:
            raise ValueError("must contain {prompt}")
        return check_template(v, ("prompt", "class"))


class DataConfig(StrictModel):
    source: str                          # dataset folder or registered name (name:split)
    split: str | None = None             # keep only rows of this split (the split column)


class TaskConfig(StrictModel):
    arch: str | None = None              # registered task model (small_cnn, resnet18, ...)
    num_classes: int = Field(2, ge=1)    # the task model's outputs
    weights: str | None = None           # safetensors / pt state dict (none: random init seeded by optim.seed)
    input_size: int | None = None        # resize images to this size first (default: the architecture's)


class LossConfig(StrictModel):
    name: str                            # registered loss term (advprompts.losses.list_losses())
    weight: float = 1.0                  # the term's factor in the total loss (lambda)
    warmup: int = Field(0, ge=0)         # active from this step on
    label: str | None = None             # log name (default: name)
    params: dict[str, Any] = Field(default_factory=dict)  # the term's own options (docs/engine.md)


class OptimConfig(StrictModel):
    optimizer: Literal["adam", "adamw"] = "adam"   # over the prompt embeddings only
    lr: float = Field(1e-3, gt=0)              # learning rate
    weight_decay: float = Field(0.0, ge=0)     # weight decay of the prompt embeddings
    batch_size: int = Field(2, ge=1)           # source images per sampler rollout
    grad_accum: int = Field(1, ge=1)           # rollouts accumulated per step (batch = batch_size x this)
    steps: int = Field(100, ge=1)              # optimisation steps per prompt
    seed: int = 0                              # seed of the source batches and sampler noise


class LogConfig(StrictModel):
    sample_every: int = Field(100, ge=0)       # 0 = never
    # Every N steps, each term's weighted gradient norm on the prompt embeddings (grad_<term> in log.csv):
    # the terms are then differentiated one by one (a second backward through the sampler when two
    # terms read the images). 0 = never.
    grad_norm_every: int = Field(1, ge=0)
    checkpoint_every: int = Field(100, ge=1)   # steps between resumable checkpoints
    tensorboard: bool = True                   # write tensorboard/ in the run folder (needs the tensorboard extra)
    progress: bool = True                      # show a progress bar


class RunConfig(StrictModel):
    method: Literal["ap", "gp", "gap"] = "ap"  # informational; ``losses`` defines the method
    model: ModelConfig = ModelConfig()         # the diffusion model and device
    sampler: SamplerConfig = SamplerConfig()   # the differentiable sampler while optimising
    prompt: PromptConfig = PromptConfig()      # the learned prompts: tokens, template, how many
    data: DataConfig                           # the source images (labelled)
    task: TaskConfig = TaskConfig()            # the model under attack (AP / GAP)
    losses: list[LossConfig] = Field(min_length=1)  # AP: adversarial term; GP: guidance; GAP: both
    optim: OptimConfig = OptimConfig()         # the optimiser
    log: LogConfig = LogConfig()               # logs, samples, checkpoints

    @model_validator(mode="after")
    def _consistent(self) -> "RunConfig":
        from advprompts.losses import list_losses

        for loss in self.losses:
            if loss.name not in list_losses():
                raise ValueError(f"loss {loss.name!r} is unknown; available: {', '.join(list_losses())}")
        if self.sampler.conditioning == "controlnet" and self.model.controlnet is None:
            raise ValueError("sampler.conditioning=controlnet needs model.controlnet")
        return self


class GenerateConfig(StrictModel):
    """Source-conditioned generation (``advprompts generate --source``)."""

    model: ModelConfig = ModelConfig()             # the diffusion model and device
    sampler: SamplerConfig = SamplerConfig(num_steps=15)  # steps, CFG, SDEdit strength, conditioning
    source: str                                    # dataset folder / registered name
    split: str | None = None                       # keep only rows of this split
    prompt_files: list[str] = Field(default_factory=list)   # learned prompts (TI safetensors)
    prompts: list[str] = Field(default_factory=list)        # text prompts ({class} allowed)
    template: str | None = None                    # overrides the learned prompts' templates
    class_words: dict[str, str] = Field(default_factory=dict)  # {class} fill per class name (see PromptConfig)
    images_per_source: int = Field(1, ge=1)        # per source and prompt
    # "own": a prompt learned for one class (per_class) is applied to that class's sources only;
    # "all": every prompt on every source.
    class_prompts: Literal["own", "all"] = "own"
    batch_size: int = Field(4, ge=1)               # images per batch
    seed: int = 0                                  # run seed: image k depends only on it and k

    @field_validator("prompts")
    @classmethod
    def _prompts(cls, v: list[str]) -> list[str]:
        return [check_template(text, ("class",)) for text in v]

    @field_validator("template")
    @classmethod
    def _template(cls, v: str | None) -> str | None:
        return v if v is None else check_template(v, ("prompt", "class"))

    @model_validator(mode="after")
    def _some_prompt(self) -> "GenerateConfig":
        if not self.prompt_files and not self.prompts:
            raise ValueError("give at least one prompt file (--prompt-file) or text prompt (--prompt)")
        return self


def format_validation_error(exc: ValidationError, what: str = "config") -> str:
    """One line naming the first offending key and the problem."""
    err = exc.errors()[0]
    key = ".".join(str(p) for p in err["loc"]) or "(root)"
    if err["type"] == "extra_forbidden":
        return f"{what}: unknown key {key!r}; remove it or check its spelling (see docs/config-reference.md)"
    if err["type"] == "missing":
        return f"{what}: missing required key {key!r}"
    value = err.get("input")
    if err["type"] == "value_error" and isinstance(value, dict):  # a validator of a whole section: its own words
        return f"{what}: {'' if key == '(root)' else key + ': '}{err['msg'].removeprefix('Value error, ')}"
    shown = repr(value) if not isinstance(value, dict) else "{...}"
    return f"{what}: invalid value for {key!r} ({shown[:60]}): {err['msg']}"


def parse_config(data: dict, model: type[StrictModel] = RunConfig, what: str = "config"):
    """Validate a dict into ``model``, raising a one-line ConfigError."""
    if not isinstance(data, dict):
        raise ConfigError(f"{what}: expected a mapping at the top level, got {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, what)) from None
    except ConfigError as exc:
        raise ConfigError(f"{what}: {exc}") from None

"""Composable loss terms: a registry, the term base class and the weighted sum with warm-ups."""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from advprompts.errors import ConfigError

logger = logging.getLogger(__name__)

_LOSSES: dict[str, type["LossTerm"]] = {}


def register_loss(name: str) -> Callable[[type["LossTerm"]], type["LossTerm"]]:
    """Class decorator registering a :class:`LossTerm` under ``name`` (duplicates raise)."""

    def wrap(cls):
        if name in _LOSSES:
            raise ValueError(f"loss {name!r} is already registered (by {_LOSSES[name].__qualname__})")
        cls.name = name
        _LOSSES[name] = cls
        return cls

    return wrap


def list_losses() -> list[str]:
    """Names of all registered loss terms."""
    return sorted(_LOSSES)


@dataclass
class LossInputs:
    """What a loss term sees at one step.

    Attributes:
        images: generated images (B, 3, H, W) in [0, 1], differentiable; None when no active term reads
            them (:attr:`LossTerm.reads_images`), for the step then skips the rollout.
        labels: integer labels (B,) of the source samples, or None.
        dense: dense targets (B, 1, H, W) for regression tasks (e.g. the depth map), or None.
        prompt: the :class:`~advprompts.prompts.LearnablePrompt` being optimised.
        class_names: class name per sample (for prompt templates), or None.
        step: the optimisation step (0-based).
        generator: a seeded generator for terms that draw random numbers.
        prompt_slot: the prompt's position among its class's prompts (``prompt.seeds`` order).
        sources: the source images (B, 3, H, W) in [0, 1] the generations start from, or None.
    """

    images: torch.Tensor | None
    labels: torch.Tensor | None = None
    dense: torch.Tensor | None = None
    prompt: Any = None
    class_names: list[str] | None = None
    step: int = 0
    generator: torch.Generator | None = None
    prompt_slot: int = 0
    sources: torch.Tensor | None = None


@dataclass
class LossResources:
    """Shared resources handed to :meth:`LossTerm.setup`: the diffusion components, the task model
    and the device; terms load anything else (CLIP, target images) from their own params."""

    components: Any = None
    task_model: torch.nn.Module | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))


class LossTerm:
    """A loss term. Subclasses take their params as keyword arguments and implement ``__call__``.

    ``stop_threshold`` (adversarial terms): :attr:`last_task_loss` is compared to it after each step
    and the loop stops early once the task loss reaches it. ``reads_images``: False for a term computed from
    the prompt alone (text guidance): a step whose active terms all say so skips the rollout.
    """

    name = "base"
    reads_images = True
    stop_threshold: float | None = None
    last_task_loss: float | None = None

    def setup(self, resources: LossResources) -> None:
        """Precompute targets / check resources (raise ConfigError when something is missing)."""

    def __call__(self, inputs: LossInputs) -> torch.Tensor:
        raise NotImplementedError

    def should_stop(self) -> bool:
        return self.stop_threshold is not None and self.last_task_loss is not None \
            and self.last_task_loss >= self.stop_threshold


def _init_params(cls: type) -> set[str]:
    """Keyword parameters of ``cls.__init__``, following ``**kwargs`` into the base classes."""
    accepted: set[str] = set()
    for klass in cls.__mro__:
        if "__init__" not in vars(klass):
            continue
        params = inspect.signature(klass.__init__).parameters.values()
        accepted |= {p.name for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)} - {"self"}
        if not any(p.kind == p.VAR_KEYWORD for p in params):
            break
    return accepted


def build_loss(name: str, **params) -> LossTerm:
    """Instantiate a registered loss term, turning bad params into a one-line ConfigError."""
    if name not in _LOSSES:
        raise ConfigError(f"loss {name!r} is unknown; available: {', '.join(list_losses())}")
    cls = _LOSSES[name]
    accepted = _init_params(cls)
    unknown = sorted(set(params) - accepted)
    if unknown:
        raise ConfigError(f"loss {name!r} has no parameter {unknown[0]!r}; accepted: {', '.join(sorted(accepted))}")
    try:
        return cls(**params)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"loss {name!r}: {exc}") from exc


@dataclass
class WeightedTerm:
    term: LossTerm
    weight: float = 1.0
    warmup: int = 0  # active from this step on
    label: str = ""


class LossSet:
    """A weighted sum of terms; each is active from its warm-up step and logged separately."""

    def __init__(self, terms: list[WeightedTerm]):
        if not terms:
            raise ConfigError("no loss terms configured; add at least one under losses:")
        labels = [t.label or t.term.name for t in terms]
        if len(set(labels)) != len(labels):
            raise ConfigError(f"loss labels must be unique, got {labels}; set `label:` on repeated terms")
        for t, label in zip(terms, labels):
            t.label = label
        self.terms = terms

    @property
    def labels(self) -> list[str]:
        return [t.label for t in self.terms]

    def setup(self, resources: LossResources) -> None:
        for t in self.terms:
            t.term.setup(resources)

    def __call__(self, inputs: LossInputs) -> tuple[torch.Tensor, dict[str, float]]:
        """Returns ``(total, {label: unweighted value, ...})``; inactive terms log NaN-free 0."""
        total, logs, _ = self.evaluate(inputs)
        return total, logs

    def evaluate(self, inputs: LossInputs) -> tuple[torch.Tensor, dict[str, float], dict[str, torch.Tensor]]:
        """``(total, {label: unweighted value}, {label: weighted value tensor})``; the last holds the
        active terms only (for their separate gradients)."""
        total = torch.zeros(()) if inputs.images is None else inputs.images.new_zeros(())
        logs: dict[str, float] = {}
        weighted: dict[str, torch.Tensor] = {}
        for t in self.terms:
            if inputs.step < t.warmup:
                logs[t.label] = 0.0
                continue
            value = t.term(inputs)
            logs[t.label] = float(value.detach())
            weighted[t.label] = t.weight * value
            total = total + weighted[t.label]
        return total, logs, weighted

    def should_stop(self) -> bool:
        return any(t.term.should_stop() for t in self.terms)

    def reads_images(self, step: int) -> bool:
        """Whether a term active at ``step`` needs the generated images (else the rollout can be skipped)."""
        return any(t.term.reads_images for t in self.terms if step >= t.warmup)

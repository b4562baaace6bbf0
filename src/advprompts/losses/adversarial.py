"""Adversarial terms on the task model f (Feedback 1, model-informed)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from advprompts.errors import ConfigError
from advprompts.losses.registry import LossInputs, LossResources, LossTerm, register_loss


class _TaskTerm(LossTerm):
    def setup(self, resources: LossResources) -> None:
        if resources.task_model is None:
            raise ConfigError(f"loss {self.name!r} needs a task model; set task.arch (and task.weights)")
        self.model = resources.task_model

    def _labels(self, inputs: LossInputs) -> torch.Tensor:
        if inputs.labels is None:
            raise ConfigError(f"loss {self.name!r} needs labelled source samples")
        return inputs.labels.to(inputs.images.device)


@register_loss("opposite_ce")
class OppositeCE(_TaskTerm):
    """CE towards the opposite class ``1 - y`` (binary tasks) or towards ``target_class``."""

    def __init__(self, target_class: int | None = None):
        self.target_class = target_class

    def __call__(self, inputs: LossInputs) -> torch.Tensor:
        logits = self.model(inputs.images)
        y = self._labels(inputs)
        if self.target_class is not None:
            target = torch.full_like(y, int(self.target_class))
        elif logits.shape[1] == 2:
            target = 1 - y
        else:
            raise ConfigError(f"opposite_ce without target_class needs a binary task; the model has {logits.shape[1]} classes")
        return F.cross_entropy(logits, target)


@register_loss("neg_ce")
class NegCE(_TaskTerm):
    """Minus the CE on the true label (maximises the task loss)."""

    def __call__(self, inputs: LossInputs) -> torch.Tensor:
        return -F.cross_entropy(self.model(inputs.images), self._labels(inputs))


@register_loss("uniform_ce")
class UniformCE(_TaskTerm):
    """CE to the uniform distribution over classes (pushes f to maximal uncertainty)."""

    def __call__(self, inputs: LossInputs) -> torch.Tensor:
        return -F.log_softmax(self.model(inputs.images), dim=-1).mean()


class _DenseTerm(_TaskTerm):
    def __init__(self, stop_threshold: float | None = None):
        self.stop_threshold = stop_threshold

    def _pair(self, inputs: LossInputs) -> tuple[torch.Tensor, torch.Tensor]:
        if inputs.dense is None:
            raise ConfigError(f"loss {self.name!r} needs dense targets (e.g. depth maps) in the source dataset")
        pred = self.model(inputs.images)
        target = inputs.dense.to(pred)
        if pred.shape != target.shape:
            pred = F.interpolate(pred.reshape(target.shape[0], -1, *pred.shape[-2:]), size=target.shape[-2:],
                                 mode="bilinear", align_corners=False).reshape(target.shape)
        return pred, target

    def __call__(self, inputs: LossInputs) -> torch.Tensor:
        task = self.task_loss(*self._pair(inputs))
        self.last_task_loss = float(task.detach())
        return -task


@register_loss("neg_l1")
class NegL1(_DenseTerm):
    """Minus the L1 task loss; stops early once the L1 reaches ``stop_threshold``."""

    @staticmethod
    def task_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return (pred - target).abs().mean()


def ssi_loss(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """MiDaS scale-and-shift-invariant L1: per image, fit ``s * pred + t`` to target by least
    squares, then average the absolute residual."""
    p, g = pred.flatten(1), target.flatten(1)
    pm, gm = p.mean(1, keepdim=True), g.mean(1, keepdim=True)
    scale = ((p - pm) * (g - gm)).sum(1, keepdim=True) / ((p - pm).square().sum(1, keepdim=True) + eps)
    shift = gm - scale * pm
    return (scale * p + shift - g).abs().mean()


@register_loss("neg_ssi")
class NegSSI(_DenseTerm):
    """Minus the scale-and-shift-invariant loss; early stop at ``stop_threshold``."""

    @staticmethod
    def task_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return ssi_loss(pred, target)

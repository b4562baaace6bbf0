"""Adversarial terms on the task model f (Feedback 1, model-informed)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from advprompts.errors import ConfigError
from advprompts.losses.registry import LossInputs, LossResources, LossTerm, register_loss


class TaskTerm(LossTerm):
    """A term on the task model. ``stop_threshold``: the optimisation stops once the task loss (for
    classifiers the CE on the true label, e.g. 2.3: the true class below p = 0.1) reaches it."""

    def __init__(self, stop_threshold: float | None = None):
        self.stop_threshold = stop_threshold

    def setup(self, resources: LossResources) -> None:
        if resources.task_model is None:
            raise ConfigError(f"loss {self.name!r} needs a task model; set task.arch (and task.weights)")
        self.model = resources.task_model

    def _labels(self, inputs: LossInputs) -> torch.Tensor:
        if inputs.labels is None:
            raise ConfigError(f"loss {self.name!r} needs labelled source samples")
        return inputs.labels.to(inputs.images.device)

    def _track(self, logits: torch.Tensor, inputs: LossInputs) -> None:
        if self.stop_threshold is not None:
            self.last_task_loss = float(F.cross_entropy(logits.detach(), self._labels(inputs)))

class _ClassifierTerm(TaskTerm):
    """A term on a classifier's logits. ``temperature`` T divides the logits before the loss (the
    paper's Waterbirds code: CE on 0.5 x logits, T = 2), which softens the model's confidence and so
    keeps the CE's gradient alive longer as the model is fooled; the stop threshold is always read
    on the plain logits."""

    def __init__(self, temperature: float = 1.0, stop_threshold: float | None = None):
        if temperature <= 0:
            raise ValueError(f"temperature={temperature}; expected > 0")
        super().__init__(stop_threshold)
        self.temperature = temperature

    def logits(self, inputs: LossInputs) -> torch.Tensor:
        """The model's logits divided by the temperature (the plain ones go to the stop tracking)."""
        logits = self.model(inputs.images)
        self._track(logits, inputs)
        return logits / self.temperature


@register_loss("opposite_ce")
class OppositeCE(_ClassifierTerm):
    """CE towards the opposite class ``1 - y`` (binary tasks) or towards ``target_class``.

    ``margin``: an image whose CE is already below it (the model fooled with probability above
    ``exp(-margin)``) gets no gradient, as in Carlini-Wagner's confidence margin: each image is pushed
    until it fools the model, not beyond. The value is still the plain CE.
    """

    def __init__(self, target_class: int | None = None, margin: float | None = None,
                 temperature: float = 1.0, stop_threshold: float | None = None):
        if margin is not None and margin <= 0:
            raise ValueError(f"margin={margin}; it is a CE value, > 0 (e.g. 0.1: fooled with p > 0.9)")
        super().__init__(temperature, stop_threshold)
        self.target_class, self.margin = target_class, margin

    def __call__(self, inputs: LossInputs) -> torch.Tensor:
        logits = self.logits(inputs)
        y = self._labels(inputs)
        if self.target_class is not None:
            target = torch.full_like(y, int(self.target_class))
        elif logits.shape[1] == 2:
            target = 1 - y
        else:
            raise ConfigError(f"opposite_ce without target_class needs a binary task; the model has {logits.shape[1]} classes")
        ce = F.cross_entropy(logits, target, reduction="none")
        if self.margin is not None:
            ce = torch.where(ce > self.margin, ce, ce.detach())
        return ce.mean()


@register_loss("neg_ce")
class NegCE(_ClassifierTerm):
    """Minus the CE on the true label (maximises the task loss). Its gradient on the logits grows as
    the model is fooled (``opposite_ce``'s vanishes), so pair it with ``stop_threshold``."""

    def __call__(self, inputs: LossInputs) -> torch.Tensor:
        return -F.cross_entropy(self.logits(inputs), self._labels(inputs))


@register_loss("logit_margin")
class LogitMargin(_ClassifierTerm):
    """Carlini-Wagner's margin: the true class's logit minus the largest other logit, floored at
    ``-kappa``. Its gradient stays constant while the model is fooled (``opposite_ce``'s fades as
    ``1 - p``), until the image is fooled by ``kappa`` logits, where it stops: each image is pushed
    a fixed distance past the decision boundary, which bounds how far the scene drifts from its label."""

    def __init__(self, kappa: float = 5.0, temperature: float = 1.0, stop_threshold: float | None = None):
        if kappa < 0:
            raise ValueError(f"kappa={kappa}; expected >= 0 (logits past the boundary)")
        super().__init__(temperature, stop_threshold)
        self.kappa = kappa

    def __call__(self, inputs: LossInputs) -> torch.Tensor:
        logits = self.logits(inputs)
        y = self._labels(inputs)
        true = logits.gather(1, y[:, None])[:, 0]
        other = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), float("-inf")).max(dim=1).values
        return (true - other).clamp(min=-self.kappa).mean()


@register_loss("uniform_ce")
class UniformCE(_ClassifierTerm):
    """CE to the uniform distribution over classes (pushes f to maximal uncertainty)."""

    def __call__(self, inputs: LossInputs) -> torch.Tensor:
        return -F.log_softmax(self.logits(inputs), dim=-1).mean()


class _DenseTerm(TaskTerm):
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

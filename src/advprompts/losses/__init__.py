"""Composable loss terms; importing this package registers the built-in ones."""

from advprompts.losses import adversarial, guidance, image_guidance, label  # noqa: F401  (registration side effect)
from advprompts.losses.registry import (
    LossInputs,
    LossResources,
    LossSet,
    LossTerm,
    WeightedTerm,
    build_loss,
    list_losses,
    register_loss,
)

__all__ = ["LossInputs", "LossResources", "LossSet", "LossTerm", "WeightedTerm", "build_loss", "list_losses",
           "register_loss"]

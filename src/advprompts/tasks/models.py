"""Task models f: images in [0, 1] -> logits (or dense maps), each with its own preprocessing.

``load_task_model(arch, num_classes, weights)`` is the single entry point (one config entry):
a registered name, ``torchvision:<name>`` (any ``torchvision.models`` builder) or ``timm:<name>``
(when timm is installed). Networks are random-init unless ``weights`` (a safetensors / pt state
dict) is given; nothing is downloaded.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from advprompts.errors import ConfigError, ModelLoadError
from advprompts.registry import Registry

logger = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_TASK_MODELS: dict[str, Callable[[int], nn.Module]] = {}
_INPUT_SIZE: dict[str, int | None] = {}
#: ``task.init`` names -> ``f(arch) -> Path`` of a state dict (the model zoo registers ``embedded``).
BACKBONES = Registry("task backbone")
register_backbone = BACKBONES.register


def register_task_model(name: str, input_size: int | None = None):
    """Decorator registering ``factory(num_classes) -> nn.Module`` (inputs normalised) under ``name``."""

    def wrap(factory):
        if name in _TASK_MODELS:
            raise ValueError(f"task model {name!r} is already registered")
        _TASK_MODELS[name] = factory
        _INPUT_SIZE[name] = input_size
        return factory

    return wrap


def list_task_models() -> list[str]:
    return sorted(_TASK_MODELS)


class TaskModel(nn.Module):
    """Wraps a network with differentiable preprocessing: resize (optional) + normalise."""

    def __init__(self, net: nn.Module, arch: str, num_classes: int, input_size: int | None,
                 mean=IMAGENET_MEAN, std=IMAGENET_STD):
        super().__init__()
        self.net, self.arch, self.num_classes, self.input_size = net, arch, num_classes, input_size
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        if self.input_size and tuple(images.shape[-2:]) != (self.input_size, self.input_size):
            images = F.interpolate(images, size=(self.input_size, self.input_size), mode="bilinear",
                                   align_corners=False, antialias=True)
        return (images - self.mean.to(images)) / self.std.to(images)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(self.preprocess(images))


@register_task_model("small_cnn")
def small_cnn(num_classes: int) -> nn.Module:
    """Four conv-BN-ReLU blocks and global average pooling; fast on CPU at 64 px, any input size."""
    layers, ch = [], 3
    for out, stride in ((16, 1), (32, 2), (64, 2), (64, 2)):
        layers += [nn.Conv2d(ch, out, 3, stride, 1, bias=False), nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
        ch = out
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(ch, num_classes))


@register_task_model("resnet18")
def resnet18(num_classes: int) -> nn.Module:
    from torchvision.models import resnet18 as tv

    return tv(weights=None, num_classes=num_classes)


@register_task_model("resnet50")
def resnet50(num_classes: int) -> nn.Module:
    from torchvision.models import resnet50 as tv

    return tv(weights=None, num_classes=num_classes)


@register_task_model("vit_b_16", input_size=224)
def vit_b_16(num_classes: int) -> nn.Module:
    from torchvision.models import vit_b_16 as tv

    return tv(weights=None, num_classes=num_classes)


def _external(arch: str, num_classes: int) -> TaskModel:
    """``torchvision:<name>`` or ``timm:<name>``, random-init, with its input size and normalisation."""
    lib, _, name = arch.partition(":")
    if lib == "torchvision":
        import torchvision.models as tvm

        if name not in tvm.list_models():
            raise ConfigError(f"task model {arch!r}: torchvision has no model {name!r}; "
                              "see torchvision.models.list_models()")
        size = 224 if name.startswith(("vit_", "swin", "maxvit")) else None  # fixed-size transformers
        return TaskModel(tvm.get_model(name, weights=None, num_classes=num_classes), arch, num_classes, size)
    if lib == "timm":
        try:
            import timm
        except ImportError:
            raise ConfigError(f"task model {arch!r} needs timm, which is not installed; `pip install timm --no-deps` "
                              "adds it without touching torch (its other dependencies are already installed)") from None
        if not timm.is_model(name):
            raise ConfigError(f"task model {arch!r}: timm has no model {name!r}; see timm.list_models()")
        net = timm.create_model(name, pretrained=False, num_classes=num_classes)
        cfg = dict(getattr(net, "pretrained_cfg", None) or {})
        size = cfg["input_size"][-1] if cfg.get("fixed_input_size") and cfg.get("input_size") else None
        return TaskModel(net, arch, num_classes, size, cfg.get("mean", IMAGENET_MEAN), cfg.get("std", IMAGENET_STD))
    raise ConfigError(f"task model {arch!r} is unknown; available: {', '.join(list_task_models())}, "
                      "torchvision:<name>, timm:<name>")


def read_state(path: Path) -> dict:
    """A task model's state dict from a .safetensors or .pt file (ModelLoadError when unreadable)."""
    if not path.is_file():
        raise ModelLoadError(f"task model weights {str(path)!r} do not exist; pass a .safetensors or .pt state dict")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch / safetensors raise many types for a bad file
        raise ModelLoadError(f"task model weights {str(path)!r} are unreadable ({type(exc).__name__})") from exc
    return state.get("state_dict", state) if isinstance(state, dict) else state


def load_task_model(arch: str, num_classes: int, weights: str | Path | None = None,
                    input_size: int | None = None) -> TaskModel:
    """Build a registered task model, optionally loading a state dict.

    Args:
        arch: a name from :func:`list_task_models`, ``torchvision:<name>`` or ``timm:<name>``.
        num_classes: output classes.
        weights: safetensors / pt state dict of the bare network or of a :class:`TaskModel`.
        input_size: resize inputs to this size first (default: the architecture's, if fixed).

    Returns:
        A frozen-free :class:`TaskModel` in eval mode.

    Raises:
        ConfigError: unknown architecture or invalid num_classes.
        ModelLoadError: unreadable weights or keys that do not match the architecture.
    """
    if arch not in _TASK_MODELS and ":" not in arch:
        raise ConfigError(f"task model {arch!r} is unknown; available: {', '.join(list_task_models())}, "
                          "torchvision:<name>, timm:<name>")
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ConfigError(f"num_classes={num_classes!r} is invalid; expected an integer >= 1")
    if arch in _TASK_MODELS:
        model = TaskModel(_TASK_MODELS[arch](num_classes), arch, num_classes, input_size or _INPUT_SIZE[arch])
    else:
        model = _external(arch, num_classes)
        model.input_size = input_size or model.input_size
    if weights is not None:
        state = read_state(Path(weights))
        target = model if any(k.startswith("net.") for k in state) else model.net
        try:
            target.load_state_dict(state)
        except RuntimeError as exc:
            raise ModelLoadError(f"task model weights {str(weights)!r} do not fit {arch} with {num_classes} "
                                 f"classes; check task.arch and task.num_classes") from exc
    return model.eval()


def backbone_path(arch: str, weights: str | Path) -> Path:
    """The state dict file behind ``task.init``: a registered name (``embedded``: the zoo's pretrained
    backbone) or a file."""
    named = BACKBONES.find(str(weights))
    return Path(weights) if named is None else named(arch)


def load_backbone(model: TaskModel, weights: str | Path) -> TaskModel:
    """Load pretrained weights into every layer but the classifier head (left at its fresh init).

    ``weights`` is a safetensors / pt state dict, or ``"embedded"``: the zoo's small_cnn pretrained
    to name objects on web-corpus images (``zoo/embedded/task/small_cnn.safetensors``).
    """
    state = read_state(backbone_path(model.arch, weights))
    target = model if any(k.startswith("net.") for k in state) else model.net
    own = target.state_dict()
    shaped = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    missing = [k for k in own if k not in shaped]
    if len(missing) > 2 or not shaped:  # only the head's weight and bias may differ
        raise ModelLoadError(f"backbone weights {str(weights)!r} do not fit {model.arch} "
                             f"({len(missing)} tensors missing or mis-shaped, e.g. {missing[:2]})")
    target.load_state_dict(shaped, strict=False)
    return model

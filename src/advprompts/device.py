"""Which device a run uses: ``--device`` / ``model.device`` as given by the user."""

from __future__ import annotations

import torch

from advprompts.errors import ConfigError


def resolve_device(spec: str) -> torch.device:
    """``auto`` (CUDA when visible), ``cpu`` or ``cuda[:N]``; a CUDA device this machine lacks,
    or a string torch does not read as a device, is a ConfigError."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except (RuntimeError, TypeError):
        raise ConfigError(f"device {spec!r} is not a device; use auto, cpu or cuda[:N] (e.g. cuda:1)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {spec!r} is requested but no CUDA device is visible; use cpu or auto")
    return device

"""Which device a run uses: ``--device`` / ``model.device`` as given by the user."""

from __future__ import annotations

import torch

from advprompts.errors import ConfigError


def resolve_device(spec: str) -> torch.device:
    """``auto`` (CUDA when visible), ``cpu`` or ``cuda[:N]``; a CUDA device this machine lacks is a ConfigError."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(spec)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {spec!r} is requested but no CUDA device is visible; use cpu or auto")
    return device

"""Oracle classifiers trained on renderer ground truth: they judge generated images.

Never the CLIP under test: the oracle sees only rendered pixels and their true attributes,
so it measures whether a generation shows the prompted object, place and time.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file
from torch import nn
from torch.nn import functional as F

from advprompts.checkpoints import save_weights
from advprompts.zoo.corpus import NO_OBJECT, OBJECT_NAMES, PLACE_NAMES


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                         nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class Oracle(nn.Module):
    """Object (incl. "none"), place and day/night heads over a shared small CNN; input [-1, 1]."""

    def __init__(self, width: int = 32):
        super().__init__()
        w = width
        self.features = nn.Sequential(_block(3, w), nn.MaxPool2d(2), _block(w, 2 * w), nn.MaxPool2d(2),
                                      _block(2 * w, 4 * w), nn.MaxPool2d(2), _block(4 * w, 4 * w),
                                      nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.object = nn.Linear(4 * w, NO_OBJECT + 1)
        self.place = nn.Linear(4 * w, len(PLACE_NAMES))
        self.night = nn.Linear(4 * w, 2)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.features(x)
        return {"object": self.object(h), "place": self.place(h), "night": self.night(h)}

    def loss(self, x, obj, place, night) -> torch.Tensor:
        out = self(x)
        return F.cross_entropy(out["object"], obj) + F.cross_entropy(out["place"], place) + \
            F.cross_entropy(out["night"], night)

    @torch.no_grad()
    def predict(self, images01: torch.Tensor, batch: int = 256) -> dict[str, np.ndarray]:
        """Predicted indices for images in [0, 1] (NCHW)."""
        self.eval()
        outs: dict[str, list] = {"object": [], "place": [], "night": []}
        for i in range(0, len(images01), batch):
            o = self(images01[i:i + batch] * 2 - 1)
            for k in outs:
                outs[k].append(o[k].argmax(1).numpy())
        return {k: np.concatenate(v) for k, v in outs.items()}

    def save(self, folder: Path) -> None:
        save_weights(folder / "model.safetensors", self.state_dict())
        (folder / "config.json").write_text(json.dumps({"objects": OBJECT_NAMES + ["none"], "places": PLACE_NAMES},
                                                       indent=2))

    @classmethod
    def load(cls, folder: Path) -> "Oracle":
        m = cls()
        m.load_state_dict(load_file(folder / "model.safetensors"))
        return m.eval()

"""The "web" corpus the embedded models are trained on: every object in every place, any time.

It is far broader than any benchmark's train split (the analogue of LAION for Stable
Diffusion): images are rendered once and cached; captions are re-drawn at every use.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from advprompts.world.captions import Caption, caption
from advprompts.world.objects import OBJECTS
from advprompts.world.places import PLACES
from advprompts.world.render import Scene, render, web_scene

logger = logging.getLogger(__name__)

OBJECT_NAMES = list(OBJECTS)
PLACE_NAMES = list(PLACES)
NO_OBJECT = len(OBJECT_NAMES)  # object index of an empty scene
KIND_NAMES = sorted({o.kind for o in OBJECTS.values()})
NO_KIND = len(KIND_NAMES)


@dataclass
class Corpus:
    images: np.ndarray  # uint8 [N, 64, 64, 3]
    masks: np.ndarray  # uint8 [N, 64, 64]
    obj: np.ndarray  # int [N], NO_OBJECT for empty scenes
    kind: np.ndarray  # int [N]: index into KIND_NAMES, NO_KIND for empty scenes
    place: np.ndarray  # int [N]
    night: np.ndarray  # bool [N]
    scenes: list[Scene]

    def __len__(self) -> int:
        return len(self.scenes)

    def image_batch(self, idx: np.ndarray) -> torch.Tensor:
        """Images in [-1, 1], NCHW float32."""
        x = torch.from_numpy(self.images[idx]).permute(0, 3, 1, 2).float()
        return x / 127.5 - 1.0

    def captions(self, idx: np.ndarray, rng: np.random.Generator) -> list[Caption]:
        return [caption(self.scenes[i], rng) for i in idx]


def render_corpus(n: int, seed: int, cache: Path | None = None, desc: str = "render corpus") -> Corpus:
    """Render `n` web scenes deterministically from `seed` (cached as .npz when `cache` is given)."""
    rng = np.random.default_rng(seed)
    scenes = [web_scene(rng) for _ in range(n)]
    if cache is not None and cache.exists():
        data = np.load(cache)
        images, masks = data["images"], data["masks"]
    else:
        images = np.zeros((n, 64, 64, 3), np.uint8)
        masks = np.zeros((n, 64, 64), np.uint8)
        # Every scene carries its own seed, so rendering in worker processes gives the same pixels.
        with ProcessPoolExecutor(max(1, min(os.cpu_count() or 1, 8))) as pool:
            for i, (img, mask) in enumerate(tqdm(pool.map(render, scenes, chunksize=256), total=n, desc=desc,
                                                 mininterval=5)):
                images[i], masks[i] = img, mask
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_suffix(".tmp.npz")
            np.savez(tmp, images=images, masks=masks)
            tmp.replace(cache)
    return Corpus(
        images=images, masks=masks,
        obj=np.array([OBJECT_NAMES.index(s.obj) if s.obj else NO_OBJECT for s in scenes]),
        kind=np.array([KIND_NAMES.index(OBJECTS[s.obj].kind) if s.obj else NO_KIND for s in scenes]),
        place=np.array([PLACE_NAMES.index(s.place) for s in scenes]),
        night=np.array([s.time == "night" for s in scenes]),
        scenes=scenes,
    )

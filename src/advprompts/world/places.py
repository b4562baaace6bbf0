"""Procedural places: textured backgrounds with a horizon, each with a distinctive layout.

Water places (lake, ocean, river, pond) and land places differ in colour *and* layout, so
the background is an easy cue, as in Waterbirds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw

from advprompts.world.objects import jitter


@dataclass(frozen=True)
class PlaceSpec:
    name: str
    water: bool
    phrase: str  # canonical "in/on ..." phrase used by the gate prompts
    synonyms: tuple[str, ...]  # other ways web captions say it
    draw: Callable  # (canvas, rng, horizon) -> ground band (top, bottom) for objects


def noise(rng: np.random.Generator, size: int, cells: int, amp: float) -> np.ndarray:
    """Smooth value noise in [-amp, amp], size x size."""
    small = rng.uniform(-amp, amp, (cells, cells)).astype(np.float32)
    return np.asarray(Image.fromarray(small).resize((size, size), Image.BICUBIC))


def gradient(size: int, top, bottom, y0: int = 0, y1: int | None = None) -> np.ndarray:
    y1 = size if y1 is None else y1
    t = np.clip((np.arange(size) - y0) / max(1, y1 - y0), 0, 1)[:, None, None]
    col = np.asarray(top, float) * (1 - t) + np.asarray(bottom, float) * t
    return np.broadcast_to(col, (size, size, 3)).copy()


def fill_below(arr: np.ndarray, horizon: int, colour_top, colour_bottom) -> None:
    size = arr.shape[0]
    arr[horizon:] = gradient(size, colour_top, colour_bottom, horizon, size)[horizon:]


def textured(arr: np.ndarray, rng, cells: int, amp: float) -> np.ndarray:
    return arr + noise(rng, arr.shape[0], cells, amp)[..., None]


def _sky(size, rng, horizon, top=(90, 150, 230), bottom=(185, 215, 240)):
    return gradient(size, jitter(rng, top, 10), jitter(rng, bottom, 10), 0, horizon)


def _to_draw(arr):
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    return img, ImageDraw.Draw(img)


def lake(size, rng, h):
    a = _sky(size, rng, h)
    shore = h + int(size * 0.06)
    a[h:shore] = jitter(rng, (60, 110, 50))  # far shoreline with trees
    fill_below(a, shore, jitter(rng, (70, 120, 170)), jitter(rng, (40, 85, 140)))
    a = textured(a, rng, 12, 10)
    img, d = _to_draw(a)
    for _ in range(12):  # soft ripples
        y = rng.integers(shore + 4, size)
        x = rng.integers(0, size)
        d.line([(x, y), (x + size // 8, y)], fill=(130, 170, 210), width=1)
    return np.asarray(img, float), (shore + 8, size - 4)


def ocean(size, rng, h):
    a = _sky(size, rng, h)
    fill_below(a, h, jitter(rng, (20, 60, 130)), jitter(rng, (10, 40, 100)))
    img, d = _to_draw(textured(a, rng, 8, 8))
    for _ in range(28):  # white wave crests
        y = rng.integers(h + 3, size)
        x = rng.integers(-10, size)
        d.arc([x, y, x + size // 6, y + 6], 200, 340, fill=(235, 240, 250), width=2)
    return np.asarray(img, float), (h + 8, size - 4)


def river(size, rng, h):
    a = _sky(size, rng, h)
    fill_below(a, h, jitter(rng, (90, 140, 60)), jitter(rng, (60, 120, 40)))
    a = textured(a, rng, 16, 14)
    img, d = _to_draw(a)
    c = size / 2 + rng.uniform(-0.1, 0.1) * size
    d.polygon([(c - size * 0.05, h), (c + size * 0.05, h), (c + size * 0.45, size), (c - size * 0.45, size)],
              fill=jitter(rng, (60, 110, 160)))  # river in perspective
    for _ in range(10):
        y = rng.integers(h + 10, size)
        d.line([(c - (y - h) * 0.25, y), (c - (y - h) * 0.1, y)], fill=(150, 190, 220), width=1)
    return np.asarray(img, float), (h + 10, size - 4)


def pond(size, rng, h):
    a = _sky(size, rng, h)
    fill_below(a, h, jitter(rng, (110, 160, 70)), jitter(rng, (80, 140, 50)))
    a = textured(a, rng, 16, 14)
    img, d = _to_draw(a)
    d.ellipse([size * 0.05, h + size * 0.08, size * 0.95, size * 1.05], fill=jitter(rng, (40, 90, 90)))
    for _ in range(7):  # lily pads
        x, y = rng.uniform(0.15, 0.85) * size, rng.uniform(h / size + 0.15, 0.95) * size
        d.ellipse([x, y, x + size * 0.07, y + size * 0.035], fill=(60, 150, 60))
    return np.asarray(img, float), (h + int(size * 0.18), size - 4)


def forest(size, rng, h):
    a = gradient(size, jitter(rng, (40, 70, 40)), jitter(rng, (30, 55, 30)))
    fill_below(a, h, jitter(rng, (70, 60, 35)), jitter(rng, (55, 45, 25)))
    img, d = _to_draw(textured(a, rng, 20, 18))
    for _ in range(9):  # trunks
        x, w = rng.uniform(0, size), rng.uniform(0.04, 0.09) * size
        d.rectangle([x, 0, x + w, h + rng.uniform(0, 0.1) * size], fill=jitter(rng, (80, 55, 35)))
    for _ in range(14):  # canopy blobs
        x, y = rng.uniform(-0.1, 1) * size, rng.uniform(-0.1, 0.25) * size
        d.ellipse([x, y, x + size * 0.3, y + size * 0.2], fill=jitter(rng, (35, 95, 40)))
    return np.asarray(img, float), (h + 4, size - 4)


def bamboo(size, rng, h):
    a = gradient(size, jitter(rng, (150, 200, 110)), jitter(rng, (120, 170, 80)))
    fill_below(a, h, jitter(rng, (100, 120, 60)), jitter(rng, (80, 100, 50)))
    img, d = _to_draw(textured(a, rng, 16, 10))
    for _ in range(16):  # thin bright stalks with nodes
        x, w = rng.uniform(0, size), rng.uniform(0.018, 0.035) * size
        col = jitter(rng, (80, 170, 60))
        d.rectangle([x, 0, x + w, h + size * 0.05], fill=col)
        for y in np.arange(rng.uniform(0, 10), h, size * 0.12):
            d.line([(x - 1, y), (x + w + 1, y)], fill=(50, 110, 40), width=2)
        d.polygon([(x + w, size * rng.uniform(0.1, 0.4)), (x + w + size * 0.08, size * 0.1),
                   (x + w + 2, size * 0.45)], fill=(110, 190, 80))  # leaf
    return np.asarray(img, float), (h + 4, size - 4)


def desert(size, rng, h):
    a = _sky(size, rng, h, (120, 170, 230), (230, 220, 200))
    fill_below(a, h, jitter(rng, (230, 200, 140)), jitter(rng, (210, 170, 100)))
    img, d = _to_draw(textured(a, rng, 10, 8))
    for k in range(3):  # dunes
        y0 = h + k * size * 0.15
        xs = np.linspace(0, size, 12)
        ys = y0 + np.sin(xs / size * 6 + rng.uniform(0, 6)) * size * 0.03
        d.line(list(zip(xs, ys)), fill=(190, 150, 90), width=2)
    return np.asarray(img, float), (h + 6, size - 4)


def snow(size, rng, h):
    a = _sky(size, rng, h, (160, 175, 195), (210, 215, 225))
    fill_below(a, h, jitter(rng, (235, 238, 245), 6), jitter(rng, (215, 222, 235), 6))
    img, d = _to_draw(textured(a, rng, 12, 6))
    for _ in range(30):  # snowflakes
        x, y = rng.uniform(0, size), rng.uniform(0, size)
        d.ellipse([x, y, x + 2, y + 2], fill=(255, 255, 255))
    for _ in range(3):  # snowy firs on the horizon
        x = rng.uniform(0, size)
        d.polygon([(x, h - size * 0.2), (x - size * 0.06, h + 2), (x + size * 0.06, h + 2)], fill=(40, 70, 60))
    return np.asarray(img, float), (h + 6, size - 4)


def field(size, rng, h):
    a = _sky(size, rng, h)
    fill_below(a, h, jitter(rng, (200, 190, 80)), jitter(rng, (160, 170, 60)))
    img, d = _to_draw(textured(a, rng, 16, 8))
    for y in np.arange(h + 3, size, size * 0.06):  # crop rows
        d.line([(0, y), (size, y + rng.uniform(-2, 2))], fill=jitter(rng, (120, 140, 40)), width=2)
    return np.asarray(img, float), (h + 6, size - 4)


def mountains(size, rng, h):
    a = _sky(size, rng, h, (70, 130, 220), (170, 200, 235))
    fill_below(a, h, jitter(rng, (100, 120, 80)), jitter(rng, (80, 95, 70)))
    img, d = _to_draw(textured(a, rng, 12, 8))
    for _ in range(3):  # grey peaks with snow caps
        x, w, ht = rng.uniform(0, size), rng.uniform(0.3, 0.5) * size, rng.uniform(0.3, 0.5) * size
        top = (x, h - ht)
        d.polygon([top, (x - w / 2, h + 2), (x + w / 2, h + 2)], fill=jitter(rng, (110, 110, 120)))
        d.polygon([top, (x - w * 0.12, h - ht * 0.72), (x + w * 0.12, h - ht * 0.72)], fill=(245, 245, 250))
    return np.asarray(img, float), (h + 6, size - 4)


def savanna(size, rng, h):
    a = _sky(size, rng, h, (230, 160, 90), (245, 210, 150))
    fill_below(a, h, jitter(rng, (200, 170, 90)), jitter(rng, (170, 140, 70)))
    img, d = _to_draw(textured(a, rng, 18, 12))
    for _ in range(2):  # flat-topped acacias
        x, y = rng.uniform(0, size), h + rng.uniform(-0.02, 0.04) * size
        d.line([(x, y), (x, y - size * 0.15)], fill=(70, 50, 30), width=3)
        d.ellipse([x - size * 0.14, y - size * 0.2, x + size * 0.14, y - size * 0.13], fill=(60, 90, 40))
    return np.asarray(img, float), (h + 6, size - 4)


def city(size, rng, h):
    a = _sky(size, rng, h, (150, 170, 200), (200, 205, 215))
    fill_below(a, h, (95, 95, 100), (70, 70, 75))
    img, d = _to_draw(textured(a, rng, 10, 6))
    x = -rng.uniform(0, 10)
    while x < size:  # buildings with windows
        w, ht = rng.uniform(0.12, 0.25) * size, rng.uniform(0.25, 0.6) * size
        d.rectangle([x, h - ht, x + w, h], fill=jitter(rng, (140, 130, 125), 25))
        for wy in np.arange(h - ht + 4, h - 4, 7):
            for wx in np.arange(x + 3, x + w - 3, 6):
                d.rectangle([wx, wy, wx + 2, wy + 3], fill=(230, 220, 150))
        x += w + 1
    d.line([(0, h + size * 0.25), (size, h + size * 0.25)], fill=(230, 230, 230), width=2)  # road marking
    return np.asarray(img, float), (h + 6, size - 4)


PLACES: dict[str, PlaceSpec] = {
    p.name: p
    for p in [
        PlaceSpec("lake", True, "in a lake", ("on a lake", "at the lake", "lakeside water"), lake),
        PlaceSpec("ocean", True, "in the ocean", ("at sea", "on the ocean", "in the sea"), ocean),
        PlaceSpec("river", True, "in a river", ("on a river", "by the river", "in the stream"), river),
        PlaceSpec("pond", True, "in a pond", ("on a pond", "at the pond", "in a small pond"), pond),
        PlaceSpec("forest", False, "in a forest", ("in the woods", "in a dark forest", "among trees"), forest),
        PlaceSpec("bamboo forest", False, "in a bamboo forest", ("among bamboo", "in a bamboo grove"), bamboo),
        PlaceSpec("desert", False, "in the desert", ("on sand dunes", "in a sandy desert"), desert),
        PlaceSpec("snow", False, "in the snow", ("on snow", "in a snowy landscape", "on a snowfield"), snow),
        PlaceSpec("field", False, "in a field", ("on farmland", "in a wheat field", "in a crop field"), field),
        PlaceSpec("mountains", False, "in the mountains", ("below the mountains", "in the alps"), mountains),
        PlaceSpec("savanna", False, "in the savanna", ("on the savanna", "in the african savanna"), savanna),
        PlaceSpec("city", False, "in a city", ("on a city street", "downtown", "in town"), city),
    ]
}
WATER_PLACES = tuple(n for n, p in PLACES.items() if p.water)
LAND_PLACES = tuple(n for n, p in PLACES.items() if not p.water)

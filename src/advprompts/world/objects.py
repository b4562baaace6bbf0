"""Procedural objects: each is drawn from shape parts in a unit box, with its own pattern.

Objects differ by silhouette and pattern, not only colour, so that a 64 px classifier has
to look at shape; colours are jittered per instance. Every draw function paints onto an RGB
canvas and a mask canvas (255 = object) with the same geometry.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from PIL import ImageDraw


@dataclass(frozen=True)
class ObjectSpec:
    name: str
    kind: str  # "bird", "mammal" or "thing"
    synonyms: tuple[str, ...]
    aspect: float  # box height / box width
    scale: float  # relative size in the scene
    draw: Callable


class Painter:
    """Maps unit-box coordinates (u right, v down) to canvas pixels, mirrored when flipped."""

    def __init__(self, img_draw: ImageDraw.ImageDraw, mask_draw: ImageDraw.ImageDraw,
                 box: tuple[float, float, float, float], flip: bool, rng: np.random.Generator):
        self.d, self.m = img_draw, mask_draw
        self.x0, self.y0, self.w, self.h = box
        self.flip, self.rng = flip, rng

    def p(self, u: float, v: float) -> tuple[float, float]:
        u = 1.0 - u if self.flip else u
        return (self.x0 + u * self.w, self.y0 + v * self.h)

    def _box(self, u0, v0, u1, v1):
        (a, b), (c, d) = self.p(u0, v0), self.p(u1, v1)
        return [min(a, c), min(b, d), max(a, c), max(b, d)]

    def ellipse(self, u0, v0, u1, v1, color, mask=True):
        self.d.ellipse(self._box(u0, v0, u1, v1), fill=color)
        if mask:
            self.m.ellipse(self._box(u0, v0, u1, v1), fill=255)

    def rect(self, u0, v0, u1, v1, color, mask=True):
        self.d.rectangle(self._box(u0, v0, u1, v1), fill=color)
        if mask:
            self.m.rectangle(self._box(u0, v0, u1, v1), fill=255)

    def poly(self, pts, color, mask=True):
        xy = [self.p(u, v) for u, v in pts]
        self.d.polygon(xy, fill=color)
        if mask:
            self.m.polygon(xy, fill=255)

    def line(self, pts, color, width: float, mask=True):
        xy = [self.p(u, v) for u, v in pts]
        wpx = max(1, int(round(width * self.w)))
        self.d.line(xy, fill=color, width=wpx)
        if mask:
            self.m.line(xy, fill=255, width=wpx)


def jitter(rng: np.random.Generator, rgb, amount: int = 18) -> tuple[int, int, int]:
    c = np.asarray(rgb, dtype=float) + rng.normal(0, amount, 3)
    return tuple(int(v) for v in np.clip(c, 0, 255))


def _legs(P: Painter, us, v0, v1, width, color):
    for u in us:
        P.line([(u, v0), (u + P.rng.uniform(-0.02, 0.02), v1)], color, width)


def draw_duck(P: Painter):
    r = P.rng
    body, head = jitter(r, (120, 100, 80)), jitter(r, (30, 110, 50), 12)
    P.poly([(0.15, 0.55), (0.0, 0.42), (0.22, 0.78)], jitter(r, (60, 60, 60)))  # tail
    P.ellipse(0.12, 0.42, 0.85, 0.95, body)
    for _ in range(10):  # speckles
        u, v = r.uniform(0.25, 0.75), r.uniform(0.55, 0.85)
        P.ellipse(u, v, u + 0.04, v + 0.04, jitter(r, (70, 55, 45)), mask=False)
    P.ellipse(0.3, 0.52, 0.7, 0.78, jitter(r, (90, 85, 95)), mask=False)  # wing
    P.rect(0.72, 0.32, 0.84, 0.55, head)  # neck
    P.ellipse(0.66, 0.12, 0.94, 0.42, head)
    P.ellipse(0.7, 0.48, 0.86, 0.55, (235, 235, 235), mask=False)  # neck ring
    P.poly([(0.9, 0.24), (1.08, 0.3), (1.06, 0.36), (0.9, 0.35)], jitter(r, (240, 160, 20), 10))
    P.ellipse(0.8, 0.2, 0.85, 0.26, (10, 10, 10), mask=False)


def draw_sparrow(P: Painter):
    # House-sparrow marks (grey crown, white cheek, black bib, white wing bar) on a rufous back with dark
    # streaks: the earlier plain brown sparrow with a pale, dark-spotted belly read as a brown cow after
    # the VAE and the tiny CLIP put "sparrow" next to "cattle" (builds 3-5).
    r = P.rng
    back = jitter(r, (165, 95, 50), 12)
    P.poly([(0.35, 0.62), (0.0, 0.98), (0.12, 1.0), (0.45, 0.72)], jitter(r, (70, 50, 35), 8))  # tail
    _legs(P, [0.45, 0.58], 0.78, 0.97, 0.035, (80, 60, 40))
    P.ellipse(0.22, 0.3, 0.82, 0.84, back)
    P.ellipse(0.5, 0.5, 0.82, 0.82, jitter(r, (175, 170, 160), 8), mask=False)  # grey-buff belly
    for _ in range(5):  # dark streaks on the back
        u, v = r.uniform(0.25, 0.45), r.uniform(0.4, 0.65)
        P.line([(u, v), (u + 0.08, v + 0.04)], (55, 35, 20), 0.04, mask=False)
    P.line([(0.3, 0.55), (0.5, 0.6)], (245, 245, 240), 0.05, mask=False)  # white wing bar
    P.ellipse(0.45, 0.05, 0.85, 0.42, jitter(r, (150, 85, 45), 10))  # head
    P.ellipse(0.47, 0.04, 0.8, 0.2, (115, 115, 120), mask=False)  # grey crown
    P.ellipse(0.55, 0.2, 0.8, 0.36, (240, 240, 235), mask=False)  # white cheek
    P.poly([(0.68, 0.32), (0.86, 0.3), (0.8, 0.55), (0.66, 0.5)], (15, 15, 15), mask=False)  # black bib
    P.poly([(0.83, 0.2), (1.0, 0.25), (0.83, 0.3)], (40, 35, 30))  # thin beak
    P.ellipse(0.7, 0.15, 0.77, 0.23, (5, 5, 5), mask=False)


def draw_cattle(P: Painter):
    # Holstein black-and-white only: a plain brown cow was generated for sparrows (builds 3-5), and a
    # Hereford (deep red, white face) took both the sparrow and the chocolate, white-eyed dikdik (build 6).
    r = P.rng
    base = jitter(r, (235, 235, 230), 6)
    _legs(P, [0.22, 0.32, 0.66, 0.75], 0.55, 1.0, 0.07, base)
    P.line([(0.14, 0.3), (0.06, 0.7)], base, 0.03)  # tail
    P.rect(0.14, 0.2, 0.8, 0.65, base)
    P.rect(0.78, 0.12, 0.98, 0.45, base)  # head
    for _ in range(int(r.integers(4, 7))):
        u, v = r.uniform(0.15, 0.7), r.uniform(0.2, 0.5)
        P.ellipse(u, v, u + r.uniform(0.1, 0.2), v + r.uniform(0.1, 0.2), (25, 25, 25), mask=False)
    P.line([(0.82, 0.13), (0.78, 0.0)], (220, 210, 180), 0.03)  # horns
    P.line([(0.94, 0.13), (0.98, 0.0)], (220, 210, 180), 0.03)
    P.rect(0.92, 0.32, 1.0, 0.45, jitter(r, (200, 140, 140)))  # muzzle


def draw_elephant(P: Painter):
    r = P.rng
    grey = jitter(r, (125, 120, 118), 10)
    _legs(P, [0.2, 0.32, 0.58, 0.7], 0.6, 1.0, 0.11, grey)
    P.ellipse(0.05, 0.12, 0.82, 0.78, grey)
    P.ellipse(0.66, 0.08, 0.98, 0.5, grey)  # head
    P.poly([(0.88, 0.35), (1.0, 0.4), (1.02, 0.95), (0.94, 0.97), (0.92, 0.5)], grey)  # trunk
    P.ellipse(0.56, 0.12, 0.8, 0.55, jitter(r, (100, 95, 95), 8), mask=False)  # ear
    P.line([(0.9, 0.45), (1.0, 0.62)], (245, 240, 225), 0.035)  # tusk
    P.ellipse(0.84, 0.2, 0.88, 0.25, (20, 20, 20), mask=False)


def draw_impala(P: Painter):
    r = P.rng
    coat = jitter(r, (185, 110, 55), 12)
    _legs(P, [0.25, 0.33, 0.62, 0.7], 0.55, 1.0, 0.03, coat)
    P.ellipse(0.18, 0.35, 0.78, 0.62, coat)
    P.ellipse(0.3, 0.5, 0.7, 0.63, (235, 225, 205), mask=False)  # white belly
    P.poly([(0.66, 0.42), (0.78, 0.15), (0.86, 0.18), (0.78, 0.48)], coat)  # neck
    P.ellipse(0.76, 0.1, 0.96, 0.24, coat)  # head
    P.line([(0.8, 0.12), (0.74, 0.0), (0.78, -0.1)], (50, 40, 30), 0.025)  # lyre horns
    P.line([(0.85, 0.12), (0.86, 0.0), (0.9, -0.1)], (50, 40, 30), 0.025)
    P.line([(0.18, 0.42), (0.14, 0.52)], (20, 20, 20), 0.03)  # black tail


def draw_zebra(P: Painter):
    r = P.rng
    white = jitter(r, (240, 240, 235), 6)
    _legs(P, [0.22, 0.3, 0.64, 0.72], 0.55, 1.0, 0.06, white)
    P.ellipse(0.14, 0.22, 0.8, 0.64, white)
    P.poly([(0.7, 0.35), (0.82, 0.05), (0.9, 0.06), (1.0, 0.42), (0.92, 0.46), (0.8, 0.45)], white)
    # Black stripes over body, neck and legs, about 3.5 px apart: at 2 px (the first builds) the
    # factor-4 VAE blurred them away and drew a grey antelope (the oracle saw a zebra in 67% of them).
    for u in np.arange(0.2, 0.95, 0.13):
        P.line([(u, 0.2), (u + 0.04, 1.0)], (15, 15, 15), 0.06, mask=False)
    P.line([(0.72, 0.3), (0.84, 0.03)], (20, 20, 20), 0.04, mask=False)  # mane


def draw_giraffe(P: Painter):
    r = P.rng
    coat = jitter(r, (225, 185, 90), 10)
    _legs(P, [0.18, 0.28, 0.55, 0.63], 0.62, 1.0, 0.05, coat)
    P.ellipse(0.1, 0.45, 0.72, 0.7, coat)
    P.poly([(0.55, 0.52), (0.78, 0.06), (0.88, 0.08), (0.7, 0.58)], coat)  # long neck
    P.ellipse(0.76, 0.0, 1.0, 0.12, coat)  # head
    P.line([(0.82, 0.02), (0.82, -0.05)], (90, 60, 30), 0.02)  # ossicones
    for _ in range(14):  # brown patches
        u, v = r.uniform(0.15, 0.7), r.uniform(0.47, 0.66)
        P.rect(u, v, u + 0.07, v + 0.06, (130, 75, 30), mask=False)
    for t in np.linspace(0.15, 0.85, 4):
        u, v = 0.58 + t * 0.22, 0.52 - t * 0.44
        P.rect(u, v, u + 0.05, v + 0.05, (130, 75, 30), mask=False)


def draw_dikdik(P: Painter):
    # Dark chocolate body, tan head and legs, white eye ring, dark snout. A plain grey-brown dikdik blended
    # into land places (build 4); a grey-brown body with a tan head was generated as an elephant (build 5).
    r = P.rng
    body, tan = jitter(r, (85, 58, 42), 8), jitter(r, (205, 160, 105), 10)
    _legs(P, [0.3, 0.38, 0.6, 0.68], 0.6, 1.0, 0.05, tan)
    P.ellipse(0.22, 0.35, 0.75, 0.68, body)
    P.ellipse(0.6, 0.12, 0.98, 0.45, tan)  # big head
    P.poly([(0.9, 0.3), (1.05, 0.36), (0.92, 0.42)], (40, 30, 25))  # snout
    P.ellipse(0.72, 0.16, 0.9, 0.34, (245, 245, 240), mask=False)  # white eye ring
    P.ellipse(0.76, 0.2, 0.86, 0.3, (10, 10, 10), mask=False)
    P.poly([(0.62, 0.15), (0.58, -0.05), (0.7, 0.12)], body)  # ears


def draw_car(P: Painter):
    r = P.rng
    paint = tuple(int(c) for c in r.choice([(200, 30, 30), (30, 60, 190), (230, 200, 40), (240, 240, 240)]))
    P.rect(0.0, 0.45, 1.0, 0.82, jitter(r, paint, 10))
    P.poly([(0.18, 0.45), (0.3, 0.12), (0.72, 0.12), (0.85, 0.45)], jitter(r, paint, 10))
    P.poly([(0.26, 0.43), (0.34, 0.18), (0.49, 0.18), (0.49, 0.43)], (160, 200, 230), mask=False)
    P.poly([(0.53, 0.43), (0.53, 0.18), (0.69, 0.18), (0.79, 0.43)], (160, 200, 230), mask=False)
    for u in (0.22, 0.78):
        P.ellipse(u - 0.12, 0.66, u + 0.12, 1.0, (20, 20, 20))
        P.ellipse(u - 0.05, 0.77, u + 0.05, 0.89, (170, 170, 170), mask=False)


def draw_boat(P: Painter):
    r = P.rng
    P.poly([(0.0, 0.68), (1.0, 0.68), (0.82, 0.95), (0.16, 0.95)], jitter(r, (110, 60, 30)))
    P.rect(0.0, 0.68, 1.0, 0.74, (245, 245, 245), mask=False)
    P.line([(0.5, 0.0), (0.5, 0.7)], (70, 50, 30), 0.03)  # mast
    P.poly([(0.53, 0.03), (0.53, 0.64), (0.92, 0.64)], jitter(r, (245, 245, 240), 6))
    P.poly([(0.47, 0.1), (0.47, 0.64), (0.15, 0.64)], jitter(r, (220, 60, 50)))


def draw_tent(P: Painter):
    r = P.rng
    fabric = tuple(int(c) for c in r.choice([(240, 130, 30), (40, 140, 60), (200, 40, 40)]))
    P.poly([(0.0, 1.0), (0.5, 0.0), (1.0, 1.0)], jitter(r, fabric, 10))
    P.poly([(0.38, 1.0), (0.5, 0.5), (0.62, 1.0)], (40, 30, 25), mask=False)  # door
    P.line([(0.5, 0.0), (0.5, -0.1)], (90, 90, 90), 0.03)


def draw_balloon(P: Painter):
    r = P.rng
    P.ellipse(0.0, 0.0, 1.0, 0.72, (0, 0, 0))
    cols = [jitter(r, c, 10) for c in ((220, 40, 40), (250, 210, 40), (40, 90, 200))]
    for i, u in enumerate(np.linspace(0.05, 0.8, 6)):  # vertical colour gores
        P.ellipse(u, 0.02, u + 0.18, 0.7, cols[i % 3], mask=False)
    P.line([(0.3, 0.65), (0.4, 0.85)], (60, 60, 60), 0.02)
    P.line([(0.7, 0.65), (0.6, 0.85)], (60, 60, 60), 0.02)
    P.rect(0.38, 0.84, 0.62, 1.0, jitter(r, (120, 80, 40)))


# Scales keep every object at 4% of the image or more: a dikdik at scale 0.6 (2%, about 9x9 px) was
# lost by the 16x16-latent VAE (the oracle recognised 67% of its reconstructions) and seldom generated.
OBJECTS: dict[str, ObjectSpec] = {
    s.name: s
    for s in [
        ObjectSpec("duck", "bird", ("mallard",), 0.62, 0.95, draw_duck),
        ObjectSpec("sparrow", "bird", ("songbird",), 1.0, 0.85, draw_sparrow),
        ObjectSpec("cattle", "mammal", ("cow",), 0.7, 1.0, draw_cattle),
        ObjectSpec("elephant", "mammal", ("elephant",), 0.85, 1.15, draw_elephant),
        ObjectSpec("impala", "mammal", ("antelope",), 0.9, 0.9, draw_impala),
        ObjectSpec("zebra", "mammal", ("zebra",), 0.75, 1.0, draw_zebra),
        ObjectSpec("giraffe", "mammal", ("giraffe",), 1.3, 1.0, draw_giraffe),
        ObjectSpec("dikdik", "mammal", ("dik-dik",), 0.85, 0.95, draw_dikdik),
        ObjectSpec("car", "thing", ("automobile",), 0.55, 1.0, draw_car),
        ObjectSpec("boat", "thing", ("sailboat",), 0.9, 0.95, draw_boat),
        ObjectSpec("tent", "thing", ("tent",), 0.75, 0.9, draw_tent),
        ObjectSpec("balloon", "thing", ("hot air balloon",), 1.1, 0.85, draw_balloon),
    ]
}

"""Deterministic scene rendering: a `Scene` (attributes + seed) -> 64x64 RGB image, object mask, caption.

Scenes are drawn at 2x and downsampled, so edges are anti-aliased and the mask is the
object's exact coverage thresholded at one half.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image, ImageDraw

from advprompts.world.objects import OBJECTS, Painter
from advprompts.world.places import PLACES, noise

SUPERSAMPLE = 2


@dataclass(frozen=True)
class Scene:
    """Everything that determines one rendered image."""

    place: str
    obj: str | None = None  # None: an empty scene (camera trap "empty")
    time: str = "day"  # "day" or "night" (dark infrared-like grey)
    location: int | None = None  # camera location id: fixed layout, viewpoint and lighting
    size: float = 1.0  # object size multiplier
    x: float = 0.5  # object centre, fraction of width
    y: float = 0.7  # object ground line within the place's ground band (0 = far, 1 = near)
    flip: bool = False
    distractors: int = 0
    seed: int = 0
    occlusion: float = 0.0  # foreground vegetation over the object's lower part, fraction of its height
    crop: float = 0.1  # the largest fraction of the object's width that may leave the frame


    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class CameraLocation:
    """A fixed camera: the same place, horizon, props, tint and viewpoint for all its images."""

    place: str
    horizon: float
    tint: tuple[float, float, float]
    zoom: float  # object scale at this camera
    props_seed: int


def camera_location(location: int) -> CameraLocation:
    rng = np.random.default_rng(10_000 + location)
    places = ("savanna", "field", "forest", "desert", "mountains", "snow", "bamboo forest", "savanna")
    return CameraLocation(
        place=places[location % len(places)],
        horizon=float(rng.uniform(0.25, 0.5)),
        tint=tuple(float(t) for t in rng.uniform(0.8, 1.15, 3)),
        zoom=float(rng.uniform(0.8, 1.2)),
        props_seed=int(rng.integers(1 << 30)),
    )


def _draw_props(d: ImageDraw.ImageDraw, size: int, rng: np.random.Generator, horizon: int) -> None:
    """Big fixed foreground props (rocks, bushes, a post) that identify a camera location."""
    for _ in range(int(rng.integers(2, 4))):
        x, w = rng.uniform(-0.1, 0.9) * size, rng.uniform(0.12, 0.3) * size
        y = rng.uniform(horizon, size * 0.95)
        col = tuple(int(c) for c in rng.choice([(95, 90, 85), (60, 95, 45), (120, 100, 70)]))
        d.ellipse([x, y - w * 0.5, x + w, y + w * 0.2], fill=col)
    x = rng.uniform(0.05, 0.95) * size
    d.rectangle([x, horizon - size * 0.1, x + 3, size], fill=(70, 50, 35))


def _draw_distractors(d, size, rng, n, band):
    for _ in range(n):
        x, y = rng.uniform(0, size), rng.uniform(*band)
        r = rng.uniform(0.02, 0.05) * size
        col = tuple(int(c) for c in rng.choice([(110, 105, 100), (70, 110, 50), (150, 130, 100)]))
        d.ellipse([x - r, y - r * 0.6, x + r, y + r * 0.6], fill=col)


def _draw_vegetation(img: Image.Image, mask: Image.Image, box, seed: int) -> Image.Image:
    """Grass blades in front of the object's lower part (camera traps sit low, in the grass): painted over
    the image and cut out of the mask, which stays the visible object. Its own generator, so scenes without
    vegetation render exactly as before."""
    rng = np.random.default_rng([seed, 17])
    x0, top, x1, bottom = box
    d, m = ImageDraw.Draw(img), ImageDraw.Draw(mask)
    base = np.array(rng.choice([(70, 110, 45), (120, 120, 60), (90, 80, 50)]), float)
    width = x1 - x0
    for _ in range(int(12 + 24 * (bottom - top) / max(1.0, width))):
        x = rng.uniform(x0 - 0.1 * width, x1 + 0.1 * width)
        tip = (x + rng.uniform(-0.08, 0.08) * width, rng.uniform(top, top + 0.5 * (bottom - top)))
        half = rng.uniform(0.015, 0.04) * width + 1
        blade = [(x - half, bottom + 2), tip, (x + half, bottom + 2)]
        d.polygon(blade, fill=tuple(int(c) for c in np.clip(base + rng.normal(0, 12, 3), 0, 255)))
        m.polygon(blade, fill=0)
    return img


def to_night(arr: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Infrared camera-trap look: grey, dark, grainy, vignetted."""
    size = arr.shape[0]
    grey = arr @ np.array([0.3, 0.59, 0.11])
    yy, xx = np.mgrid[0:size, 0:size] / size - 0.5
    vignette = 1.0 - 1.2 * (xx**2 + yy**2)
    out = (grey * 0.45 + 12) * vignette + rng.normal(0, 6, grey.shape)
    return np.repeat(out[..., None], 3, axis=2)


def render(scene: Scene, resolution: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Render a scene.

    Returns:
        (image uint8 [H, W, 3], mask uint8 [H, W] with 255 on the object, 0 elsewhere).
    """
    size = resolution * SUPERSAMPLE
    rng = np.random.default_rng(scene.seed)
    cam = camera_location(scene.location) if scene.location is not None else None
    place = PLACES[cam.place if cam else scene.place]
    horizon = int(size * (cam.horizon if cam else rng.uniform(0.3, 0.5)))
    bg_rng = np.random.default_rng(cam.props_seed) if cam else rng
    arr, band = place.draw(size, bg_rng, horizon)
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    d = ImageDraw.Draw(img)
    if cam:
        _draw_props(d, size, np.random.default_rng(cam.props_seed + 1), horizon)
    _draw_distractors(d, size, rng, scene.distractors, band)
    mask = Image.new("L", (size, size), 0)
    if scene.obj is not None:
        spec = OBJECTS[scene.obj]
        w = size * 0.42 * spec.scale * scene.size * (cam.zoom if cam else 1.0)
        # Tall objects are shrunk so they fit in the frame.
        w = min(w, size * 0.8 / spec.aspect, size * 0.95)
        h = w * spec.aspect
        ground = band[0] + scene.y * (band[1] - band[0])
        cx = scene.x * size
        x0 = float(np.clip(cx - w / 2, -scene.crop * w, size - (1 - scene.crop) * w))
        y0 = float(np.clip(ground - h, 0.02 * size, size - h))
        background = np.asarray(img).copy()
        spec.draw(Painter(d, ImageDraw.Draw(mask), (x0, y0, w, h), scene.flip, rng))
        # Pattern strokes (stripes, spots) are not masked: clip everything to the object's silhouette.
        img = Image.fromarray(np.where(np.asarray(mask)[..., None] > 0, np.asarray(img), background))
        if scene.occlusion > 0:
            img = _draw_vegetation(img, mask, (x0, y0 + h * (1 - scene.occlusion), x0 + w, y0 + h), scene.seed)
    arr = np.asarray(img, dtype=float)
    if scene.obj is not None:  # fine texture on the object
        m = np.asarray(mask, dtype=float)[..., None] / 255
        arr = arr * (1 + m * noise(rng, size, 24, 0.12)[..., None])
    if cam:
        arr = arr * np.asarray(cam.tint)
    if scene.time == "night":
        arr = to_night(arr, rng)
    out = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).resize((resolution, resolution), Image.BOX)
    m = mask.resize((resolution, resolution), Image.BOX)
    return np.asarray(out), (np.asarray(m) >= 128).astype(np.uint8) * 255


def random_scene(rng: np.random.Generator, obj: str | None, place: str, time: str = "day",
                 location: int | None = None) -> Scene:
    """A scene with the given attributes and random size, position, pose and distractors."""
    return Scene(
        place=place, obj=obj, time=time, location=location,
        size=float(rng.uniform(0.8, 1.2)), x=float(rng.uniform(0.3, 0.7)), y=float(rng.uniform(0.2, 1.0)),
        flip=bool(rng.random() < 0.5), distractors=int(rng.integers(0, 3)), seed=int(rng.integers(1 << 31)),
    )


def web_scene(rng: np.random.Generator, p_empty: float = 0.08, p_night: float = 0.15,
              p_location: float = 0.15) -> Scene:
    """A scene of the "web" corpus: every object in every place, any time, sometimes a camera trap."""
    obj = None if rng.random() < p_empty else str(rng.choice(list(OBJECTS)))
    location = int(rng.integers(0, 16)) if rng.random() < p_location else None
    place = camera_location(location).place if location is not None else str(rng.choice(list(PLACES)))
    time = "night" if rng.random() < p_night else "day"
    return random_scene(rng, obj, place, time, location)


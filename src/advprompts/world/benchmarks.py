"""Benchmarks of the embedded world, declared in YAML: classes, places, splits with their group
structure (how attributes correlate with the label), target descriptions and target images.

`export_benchmark` renders a benchmark into the folder format every loader of advprompts reads
(images/, masks/, metadata.csv); registered names (`waterbirds-synth:train`) export once into a
cache folder and load from there.
"""

from __future__ import annotations

import csv
import glob
import hashlib
import logging
import os
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Literal

import numpy as np
import yaml
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from advprompts.errors import ConfigError
from advprompts.fsio import check_writable, manifest_problem, pid_alive, write_manifest
from advprompts.world.captions import caption
from advprompts.world.objects import OBJECTS
from advprompts.world.places import LAND_PLACES, PLACES, WATER_PLACES
from advprompts.world.render import Scene, camera_location, random_scene, render

BENCHMARK_DIR = Path(__file__).parent / "benchmarks"
COLUMNS = ["file_name", "label", "label_name", "group", "place", "location", "time", "split", "mask_file", "caption"]
logger = logging.getLogger(__name__)
PLACE_SETS = {"water": WATER_PLACES, "land": LAND_PLACES, "all": tuple(PLACES)}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Cell(_Strict):
    """One kind of image in a split: which classes, where, when; drawn with probability ~ weight."""

    classes: list[str] | Literal["*"] = "*"
    places: list[str] | Literal["water", "land", "all"] | None = None  # None: the camera location's place
    locations: list[int] | None = None
    times: list[Literal["day", "night"]] = ["day"]
    weight: float = 1.0


class Split(_Strict):
    size: int = Field(gt=0)
    cells: list[Cell]
    balanced: bool = False  # True: image i comes from cell i mod len(cells), so groups are exactly equal


class CameraTrap(_Strict):
    """Camera-trap framing: animals low in the grass and cut by the frame's edge (drawn from a generator of
    their own, so benchmarks without it render as before)."""

    p_occluded: float = Field(0.0, ge=0, le=1)  # share of images with grass in front of the animal
    occlusion: tuple[float, float] = (0.3, 0.6)  # how much of the animal's height the grass covers
    crop: float = Field(0.1, ge=0, lt=1)  # at most this share of the animal's width leaves the frame
    x: tuple[float, float] = (0.3, 0.7)  # the animal's centre, fraction of the width


class Benchmark(_Strict):
    name: str
    description: str = ""
    classes: list[str]  # label order
    class_objects: dict[str, list[str | None]]  # class -> world objects (None: an empty scene)
    class_weights: dict[str, float] = {}  # imbalance when a cell draws from several classes
    group: str = "{class}-{place_type}"  # keys: class, place, place_type, location, time
    camera_trap: CameraTrap | None = None
    splits: dict[str, Split]
    target_split: str | None = None  # unlabelled target images for image guidance
    target_descriptions: list[str] = []
    seed: int = 0

    def check(self) -> "Benchmark":
        for cls, objs in self.class_objects.items():
            if cls not in self.classes:
                raise ConfigError(f"benchmark {self.name}: class_objects names unknown class {cls!r}")
            for o in objs:
                if o is not None and o not in OBJECTS:
                    raise ConfigError(f"benchmark {self.name}: unknown object {o!r}; known: {', '.join(OBJECTS)}")
        for split in self.splits.values():
            for cell in split.cells:
                for p in cell.places if isinstance(cell.places, list) else []:
                    if p not in PLACES:
                        raise ConfigError(f"benchmark {self.name}: unknown place {p!r}; known: {', '.join(PLACES)}")
        return self


def list_benchmarks() -> list[str]:
    return sorted(p.stem for p in BENCHMARK_DIR.glob("*.yaml"))


def load_benchmark(name_or_file: str | Path) -> Benchmark:
    path = Path(name_or_file)
    if not path.is_file():
        path = BENCHMARK_DIR / f"{name_or_file}.yaml"
    if not path.is_file():
        raise ConfigError(f"unknown benchmark {str(name_or_file)!r}; shipped: {', '.join(list_benchmarks())}, "
                          "or pass a YAML file")
    try:
        return Benchmark(**yaml.safe_load(path.read_text())).check()
    except ValidationError as exc:
        err = exc.errors()[0]
        raise ConfigError(f"benchmark {path}: {'.'.join(map(str, err['loc']))}: {err['msg']}") from None


def _draw(bench: Benchmark, split: str, index: int) -> dict:
    rng = np.random.default_rng([bench.seed, int(hashlib.md5(split.encode()).hexdigest()[:8], 16), index])
    cells = bench.splits[split].cells
    if bench.splits[split].balanced:
        cell = cells[index % len(cells)]
    else:
        cell = cells[rng.choice(len(cells), p=np.array([c.weight for c in cells]) / sum(c.weight for c in cells))]
    classes = bench.classes if cell.classes == "*" else cell.classes
    w = np.array([bench.class_weights.get(c, 1.0) for c in classes])
    cls = str(classes[rng.choice(len(classes), p=w / w.sum())])
    objs = bench.class_objects[cls]
    obj = objs[int(rng.integers(len(objs)))]
    location = int(rng.choice(cell.locations)) if cell.locations else None
    if location is not None and cell.places is None:
        place = camera_location(location).place
    else:
        places = PLACE_SETS[cell.places] if isinstance(cell.places, str) else (cell.places or tuple(PLACES))
        place = str(rng.choice(places))
    time = str(rng.choice(cell.times))
    scene = random_scene(rng, obj, place, time, location)
    if bench.camera_trap is not None:
        scene = _frame(scene, bench.camera_trap, np.random.default_rng([scene.seed, 29]))
    keys = {"class": cls, "place": place, "place_type": "water" if PLACES[place].water else "land",
            "location": "" if location is None else location, "time": time}
    return {"scene": scene, "label": bench.classes.index(cls), "label_name": cls,
            "group": bench.group.format(**keys), "caption": caption(scene, rng).text, **keys}


def _frame(scene: Scene, trap: CameraTrap, rng: np.random.Generator) -> Scene:
    occluded = rng.random() < trap.p_occluded
    return replace(scene, x=float(rng.uniform(*trap.x)), crop=trap.crop,
                   occlusion=float(rng.uniform(*trap.occlusion)) if occluded else 0.0)


def export_benchmark(bench: Benchmark, out: Path, splits: list[str] | None = None) -> Path:
    """Render the benchmark into `out` (images/<split>/, masks/<split>/, metadata.csv, manifest.json);
    atomic: it is rendered into a temporary folder, removed again if anything fails, then renamed."""
    out = Path(out)
    if (out / "metadata.csv").exists():
        raise ConfigError(f"{out} already holds a dataset; choose another --out or delete it")
    splits = splits or list(bench.splits)
    for split in splits:  # validated before anything is rendered
        if split not in bench.splits:
            raise ConfigError(f"benchmark {bench.name} has no split {split!r}; splits: {', '.join(bench.splits)}")
    check_writable(out)
    # One temporary folder per process: concurrent first uses of a cached benchmark never share one.
    tmp = out.with_name(f"{out.name}.partial-{os.getpid()}")
    for stale in out.parent.glob(f"{glob.escape(out.name)}.partial-*"):  # left by a killed export
        pid = stale.name.rsplit("-", 1)[1]
        if pid.isdigit() and not pid_alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)
    try:
        _render(bench, tmp, splits)
        out.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(tmp, out)
        except OSError:
            if not (out / "metadata.csv").exists():
                raise
            shutil.rmtree(tmp)  # another process finished the same export first
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # no half-rendered folder left behind (disk full, Ctrl-C)
        raise
    return out


def _render(bench: Benchmark, tmp: Path, splits: list[str]) -> None:
    rows = []
    for split in splits:
        (tmp / "images" / split).mkdir(parents=True, exist_ok=True)
        (tmp / "masks" / split).mkdir(parents=True, exist_ok=True)
        for i in range(bench.splits[split].size):
            d = _draw(bench, split, i)
            image, mask = render(d["scene"])
            name = f"{split}/{i:05d}.png"
            Image.fromarray(image).save(tmp / "images" / name)
            Image.fromarray(mask).save(tmp / "masks" / name)
            rows.append({"file_name": f"images/{name}", "label": d["label"], "label_name": d["label_name"],
                         "group": d["group"], "place": d["place"], "location": d["location"], "time": d["time"],
                         "split": split, "mask_file": f"masks/{name}", "caption": d["caption"]})
    with open(tmp / "metadata.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    (tmp / "benchmark.yaml").write_text(yaml.safe_dump(bench.model_dump(), sort_keys=False))
    write_manifest(tmp)  # last: every file's sha256, checked before a cached export is used


def renderer_fingerprint() -> str:
    """A hash of the code that turns a benchmark file into pixels, masks and captions."""
    folder = Path(__file__).parent
    digest = hashlib.sha256()
    for module in ("benchmarks.py", "render.py", "objects.py", "places.py", "captions.py"):
        digest.update((folder / module).read_bytes())
    return digest.hexdigest()


def cached_export(name: str) -> Path:
    """The exported folder of a shipped benchmark, rendered on first use into the cache.

    The key covers the renderer's code as well as the benchmark file: a changed object look must not
    reuse renders of the old one (a stale cache once paired new zoo models with old sparrows). A cached
    folder whose files no longer match its manifest (edited, truncated, deleted) is rendered again."""
    bench = load_benchmark(name)
    key = hashlib.sha256((yaml.safe_dump(bench.model_dump()) + renderer_fingerprint()).encode()).hexdigest()[:12]
    root = Path(os.environ.get("ADVPROMPTS_CACHE", Path.home() / ".cache" / "advprompts")) / "benchmarks"
    out = root / f"{name}-{key}"
    if out.exists():
        problem = manifest_problem(out)
        if problem is None:
            return out
        logger.warning("cached benchmark %s is not what was rendered (%s); rendering it again", out, problem)
        stale = out.with_name(f"{out.name}.stale-{os.getpid()}")
        try:
            os.replace(out, stale)  # atomic: no reader sees a half-deleted folder
        except FileNotFoundError:
            pass  # another process moved it first
        shutil.rmtree(stale, ignore_errors=True)
    return export_benchmark(bench, out)


def register_shipped() -> None:
    from advprompts.data.folder import FolderDataset, register_dataset

    for name in list_benchmarks():
        register_dataset(name)(lambda split=None, image_size=None, _n=name:
                               FolderDataset(cached_export(_n), split=split, image_size=image_size))

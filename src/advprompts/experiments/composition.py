"""What a generated pool holds, judged by the zoo's oracle (trained on renderer ground truth; never the
task model or the CLIP used for guidance): label faithfulness, the share in the (class, place type) groups
train lacks or holds rarely, and for location shifts the share at the evaluated places and at night."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import yaml

from advprompts.fsio import atomic_write_text, read_csv, read_json


def pool_images(pool_dir: Path) -> tuple[torch.Tensor, np.ndarray]:
    from advprompts.tasks.train import as_float, load_tensors

    data = load_tensors(pool_dir, image_size=64)
    return as_float(data.images), data.labels.numpy()


def seen_classes(pred: dict, bench: dict) -> list[str | None]:
    """The benchmark class of the object the oracle sees in each image (None: an object of no class)."""
    from advprompts.zoo.corpus import OBJECT_NAMES

    obj_to_class = {(o or "none"): c for c, objs in bench["class_objects"].items() for o in objs}
    names = OBJECT_NAMES + ["none"]
    return [obj_to_class.get(names[int(o)]) for o in pred["object"]]


def oracle_faithful(pool, bench: dict, oracle) -> np.ndarray:
    """Whether the oracle sees each pool image's labelled class (``pool``: in-memory Tensors at any size)."""
    from advprompts.tasks.train import as_float

    images = as_float(pool.images)
    if images.shape[-1] != 64:  # the oracle's size, as for composition()
        images = torch.nn.functional.interpolate(images, size=64, mode="bilinear", antialias=True).clamp(0, 1)
    classes = bench["classes"]
    seen = seen_classes(oracle.predict(images), bench)
    return np.array([s == classes[int(y)] for s, y in zip(seen, pool.labels)], dtype=bool)


def embedded_oracle(cfg):
    """The zoo's oracle that judges generated sets, for an experiment on the embedded models (else None)."""
    from advprompts.zoo.oracle import Oracle
    from advprompts.zoo.paths import is_embedded, oracle_path

    if not is_embedded(cfg.model):
        return None
    path = oracle_path()
    return Oracle.load(path) if (path / "model.safetensors").is_file() else None


def _place_type(place: str) -> str:
    """The place type the groups use: water or land."""
    from advprompts.world.places import PLACES

    return "water" if PLACES[place].water else "land"


def composition(pool_dir: Path, bench: dict, train_groups: set[tuple[str, str]], oracle,
                target_places: set[str] = frozenset()) -> dict:
    """Fractions of a generated set per (class, place type) as the oracle sees it, the share in
    groups the train split lacks, label faithfulness (the oracle finds the labelled object), the share
    the oracle places at one of ``target_places`` and the share it sees at night."""
    from advprompts.zoo.corpus import PLACE_NAMES

    images, labels = pool_images(pool_dir)
    pred = oracle.predict(images)
    classes = bench["classes"]
    groups: dict[str, int] = {}
    faithful = missing = at_target = nights = 0
    for y, seen, p, night in zip(labels, seen_classes(pred, bench), pred["place"], pred["night"]):
        at_target += PLACE_NAMES[int(p)] in target_places
        nights += bool(night)
        cls = classes[int(y)]
        faithful += seen == cls
        ptype = _place_type(PLACE_NAMES[int(p)])
        key = f"{seen or 'other'}-{ptype}" + ("-night" if night else "")
        groups[key] = groups.get(key, 0) + 1
        missing += seen == cls and (cls, ptype) not in train_groups
    n = len(labels)
    return {"n": n, "faithfulness": faithful / n, "missing_groups": missing / n,
            "target_places": at_target / n, "night": nights / n,
            "groups": {k: v / n for k, v in sorted(groups.items())}}


def _split_rows(benchmark_root: Path, split: str | None = None) -> list[dict]:
    return [r for r in read_csv(benchmark_root / "metadata.csv") if split is None or r.get("split") == split]


def _share(rows: list[dict], keep) -> float:
    return sum(map(keep, rows)) / max(len(rows), 1)


def _is_night(row: dict) -> bool:
    return row.get("time") == "night"


def benchmark_root(config) -> Path:
    """The folder an experiment's benchmark was exported to (its ``benchmark.yaml`` and ``metadata.csv``)."""
    from advprompts.data import resolve_dataset

    return Path(getattr(resolve_dataset(config.benchmark, split=config.train_split), "root", ""))


def composition_context(root: Path, train_split: str, eval_split: str) -> dict | None:
    """What judging a pool needs: the benchmark, the (class, place type) groups train holds (a group under
    a quarter of its class's train images counts as missing: the minority groups of a partial correlation)
    and, for a location shift, the places of the evaluated scenes. None without a ``benchmark.yaml``."""
    from advprompts.world.places import PLACES

    if not (root / "benchmark.yaml").is_file():
        return None
    bench = yaml.safe_load((root / "benchmark.yaml").read_text())
    rows, train, evaluated = _split_rows(root), _split_rows(root, train_split), _split_rows(root, eval_split)
    counts: dict[tuple[str, str], int] = {}
    for r in train:
        if r.get("place") in PLACES:
            key = (r["label_name"], _place_type(r["place"]))
            counts[key] = counts.get(key, 0) + 1
    per_class = {c: sum(n for (cc, _), n in counts.items() if cc == c) for c, _ in counts}
    train_groups = {g for g, n in counts.items() if n >= 0.25 * per_class[g[0]]}
    places = {r["place"] for r in rows if r.get("place") in PLACES}
    ptypes = {_place_type(p) for p in places}
    classes = [c for c in bench["classes"] if any(bench["class_objects"][c])]
    target = {r["place"] for r in evaluated if r.get("place") in PLACES}
    shift = bool(target) and target < places
    return {"bench": bench, "train": train, "evaluated": evaluated, "train_groups": train_groups,
            "rare": sorted(g for g in counts if g not in train_groups), "target": target if shift else set(),
            "has_missing": any((c, t) not in train_groups for c in classes for t in ptypes),
            "train_split": train_split, "eval_split": eval_split}


def pool_compositions(pools: list[Path], ctx: dict, oracle) -> dict[str, dict]:
    """The oracle's composition of each finished generated pool, by folder name (cached in the pool's
    ``composition.json``: a finished pool never changes)."""
    result = {}
    for pool in pools:
        cache = pool / "composition.json"
        cached = read_json(cache)  # a torn file is recomputed
        if cached is not None:
            result[pool.name] = cached
            continue
        comp = composition(pool, ctx["bench"], ctx["train_groups"], oracle, target_places=ctx["target"])
        atomic_write_text(cache, json.dumps(comp))
        result[pool.name] = comp
    return result


def finished_pools(out: Path) -> list[Path]:
    """The experiment's generated pools whose ``metadata.csv`` (written last) exists."""
    return sorted(p for p in (out / "pools").glob("*-s*") if (p / "metadata.csv").is_file()) \
        if (out / "pools").is_dir() else []


def add_pool_columns(rows: list[dict], compositions: dict[str, dict]) -> list[dict]:
    """Give each results row of a generated method its pool's label faithfulness and share in the groups
    train lacks (``pool_faithfulness``, ``pool_missing_groups``, ``pool_target_places``, ``pool_night``)."""
    for r in rows:
        comp = compositions.get(f"{r['method']}-s{r['seed']}")
        if comp is not None:
            r.update({f"pool_{k}": round(comp[k], 4) for k in ("faithfulness", "missing_groups", "target_places", "night")})
    return rows


def composition_section(compositions: dict[str, dict], ctx: dict) -> list[str]:
    """The composition table. Spurious-correlation benchmarks (train lacks some (class, place type)
    combinations, or holds them rarely) get the share in those; location-shift benchmarks (the evaluated
    scenes sit at a subset of the benchmark's places) get the shares at those places and at night, beside
    train's."""
    train, evaluated, target = ctx["train"], ctx["evaluated"], ctx["target"]
    text = ("Composition judged by the oracle (trained on renderer ground truth): the share of images whose "
            "object is the labelled class (faithfulness)")
    head, rule = "| set | images | faithfulness |", "|---|---|---|"
    if ctx["has_missing"]:
        rare = f"; {', '.join('-'.join(g) for g in ctx['rare'])} rare there" if ctx["rare"] else ""
        text += (", the share in (class, place type) combinations absent from train or under a quarter of their "
                 f"class there (train holds {', '.join('-'.join(g) for g in sorted(ctx['train_groups']))}{rare})")
        head, rule = head + " in missing groups |", rule + "---|"
    if target:
        where = " / ".join(sorted(target))
        at_target = _share(train, lambda r: r.get("place") in target)
        text += (f", the share the oracle places at the evaluated scenes' places ({where}) and at night (by "
                 f"ground truth `{ctx['train_split']}` has {100 * at_target:.0f}% and "
                 f"{100 * _share(train, _is_night):.0f}%, `{ctx['eval_split']}` 100% and "
                 f"{100 * _share(evaluated, _is_night):.0f}%)")
        head, rule = head + f" at {where} | at night |", rule + "---|---|"
    lines = [text + ", and the share per group.", "", head + " groups |", rule + "---|"]
    for name, comp in compositions.items():
        row = f"| {name} | {comp['n']} | {100 * comp['faithfulness']:.1f}% |"
        if ctx["has_missing"]:
            row += f" {100 * comp['missing_groups']:.1f}% |"
        if target:
            row += f" {100 * comp['target_places']:.0f}% | {100 * comp['night']:.0f}% |"
        shown = ", ".join(f"{k} {100 * v:.0f}%" for k, v in comp["groups"].items() if v >= 0.02)
        lines.append(f"{row} {shown} |")
    return lines + [""]

"""Start an experiment from another experiment's finished stages (``advprompts experiment --reuse OLD``).

An ablation or a new method beside a finished sweep needs the sweep's base models, prompts, pools and
cells, not hours to compute them again. What is copied is what the two configs make the same way: base
models and target-image folders when the benchmark, task model, training and generation settings match;
an optimised method's prompts when a method of the old experiment finds them the same way (the same spec
but for ``source_split`` / ``source_match``, under any name); a method's finished pool when its spec matches too; its cells
when the fine-tuning recipe matches as well. Nothing already in the new folder is replaced.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from advprompts.errors import ConfigError

#: Settings every reused stage depends on (base models, prompts and pools are made from them).
SHARED = ("benchmark", "train_split", "eval_split", "ood_split", "target_split", "model", "image_size", "task",
          "train", "generation", "max_extra")


def _copy(src: Path, dst: Path, moved: tuple[Path, Path] | None = None) -> bool:
    """Copy a file or folder unless ``dst`` exists; a folder lands whole or not at all (renamed at the end).
    ``moved`` = (old folder, new folder): the optimisation configs inside name the new one instead (their
    base model and target images), so that the copied runs resume as the new folder's own."""
    if dst.exists() or not src.exists():
        return False
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.reuse-partial")
    shutil.rmtree(tmp, ignore_errors=True)
    if src.is_dir():
        shutil.copytree(src, tmp)
    else:
        shutil.copy2(src, tmp)
    if moved is not None:
        before, after = (f"{p.resolve()}/" for p in moved)
        for config in tmp.rglob("config.yaml"):
            config.write_text(config.read_text().replace(before, after))
    tmp.replace(dst)
    return True


def _prompt_twin(name: str, spec, old) -> str | None:
    """The method of the old experiment whose prompts this optimised method would find again: the same
    spec but for the sources its pool is generated from (``source_split``, ``source_match``), under any name."""
    if spec.kind != "optimized":
        return None
    return next((m for m in (name, *old.methods)  # its own name first
                 if m in old.methods and old.methods[m].finding() == spec.finding()), None)


def reusable_config(config, source: Path):
    """``source``'s experiment config, when its shared settings equal ``config``'s (ConfigError if not)."""
    from advprompts.experiments.config import ExperimentConfig

    stored = source / "experiment.yaml"
    if not stored.is_file():
        raise ConfigError(f"--reuse {source}: no experiment.yaml there; name a folder `advprompts experiment` wrote")
    data = yaml.safe_load(stored.read_text())
    if isinstance(data, dict) and isinstance(data.get("methods"), dict):  # a --methods subset keeps them all
        data["transfer_methods"] = [m for m in data.get("transfer_methods") or [] if m in data["methods"]]
    try:
        old = ExperimentConfig(**data)
    except Exception as exc:  # noqa: BLE001 (one line whatever was wrong with it)
        raise ConfigError(f"--reuse {source}: its experiment.yaml does not load ({str(exc).splitlines()[0]})") from None
    differs = [k for k in SHARED if getattr(old, k) != getattr(config, k)]
    if differs:
        raise ConfigError(f"--reuse {source}: its `{differs[0]}` differs from this config's, so none of its "
                          "stages can be reused")
    return old


def reuse_stages(config, out: Path, source: Path, old=None) -> list[str]:
    """Copy ``source``'s reusable stages into ``out`` (see the module docstring); the copied paths,
    relative to ``out``. ``old``: ``source``'s config when :func:`reusable_config` has already read it."""
    source, out = Path(source), Path(out)
    old = old if old is not None else reusable_config(config, source)
    seeds = [s for s in config.seeds if s in old.seeds]
    copied = []

    def take(rel: str, src_rel: str | None = None, moved: tuple[Path, Path] | None = None) -> None:
        if _copy(source / (src_rel or rel), out / rel, moved):
            copied.append(rel)

    for seed in seeds:
        for model in sorted((source / "models").glob(f"base-*-s{seed}.safetensors")):
            take(f"models/{model.name}")
    if (source / "targets").is_dir():
        for folder in sorted(p for p in (source / "targets").iterdir() if p.is_dir() and not p.name.startswith(".")):
            take(f"targets/{folder.name}")
    for name, spec in config.methods.items():
        shares = config.prompt_owner(name, spec) != name  # it paints with its owner's prompts
        twin = None if shares else _prompt_twin(name, spec, old)
        for seed in seeds if twin is not None else []:  # finished or not: the runs resume in the new folder
            take(f"prompts/{name}-s{seed}", f"prompts/{twin}-s{seed}", moved=(source, out))
        if old.methods.get(name) != spec or (spec.pool_of and old.methods.get(spec.pool_of) != config.methods[spec.pool_of]):
            continue
        for seed in seeds:
            if spec.generated:
                if not (source / "pools" / f"{name}-s{seed}" / "metadata.csv").is_file():
                    continue  # unfinished: generated anew (from the copied prompts)
                take(f"pools/{name}-s{seed}")
            if old.finetune == config.finetune:
                for cell in sorted((source / "cells").glob(f"{name}-n*-s{seed}.json")) + \
                        sorted((source / "cells").glob(f"{name}->*-n*-s{seed}.json")):
                    take(f"cells/{cell.name}")
    return copied

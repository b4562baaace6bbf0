"""Probes that reproduce: every experiment config in docs/experiments pins what its optimised methods run.

A probe's recorded numbers (README, docs/experiments/FINDINGS.md) came from its optimisation preset as the
preset was then, plus the probe's ``set:`` overrides. When a packaged preset (src/advprompts/config/presets)
changes its defaults, every probe that took those keys from it silently runs something else: e.g. the
waterbirds-synth-gap preset gained ``spread: true`` in dc4ea78, which turned the class-guidance probe's
"one mean target per class" methods into spread ones. So each probe pins its methods' prompt, sampler,
optimiser and losses in ``set:``, and this module checks that nothing else moves.

For every optimized method of every ``docs/experiments/*.yaml``, :func:`resolve_method` builds the dict
``ExperimentRunner.optimize_prompts`` validates (the preset, the method's ``set:``, then the keys the runner
fills per run, which are left out here: data, task, model.diffusion / device, log.progress, and
prompt.class_words when the experiment's ``generation.class_words`` fills it; ``per_group`` methods get
placeholders for the per-group target images and prompt prefix), validates it into a ``RunConfig`` and
compares its ``model_dump(mode="json")`` with the snapshot in ``docs/experiments/resolved/<stem>.json``
(``{method: resolved config}``). ``prompt.seeds`` stay as listed: the runner offsets them by 1000 x the
experiment seed, but how many prompts a method learns is the probe's, not the runner's.

When the comparison fails, do NOT regenerate the snapshot: a preset or schema default changed under a
probe whose numbers are already recorded. Pin the snapshot's value in that method's ``set:`` (e.g.
``"losses.1.params.spread=false"``, or the whole ``"losses=[...]"`` / ``"prompt={...}"``) so the probe runs
what it ran. Write a snapshot only for a NEW probe (or a probe you changed on purpose and re-ran):

    .venv/bin/python tests/test_probe_configs.py docs/experiments/<new-probe>.yaml

which refuses to overwrite an existing snapshot unless given ``--force``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from advprompts.config.presets import apply_overrides, read_yaml
from advprompts.config.schema import parse_config
from advprompts.experiments.config import ExperimentConfig, MethodSpec, load_experiment_config

DOCS = Path(__file__).resolve().parents[1] / "docs" / "experiments"
RESOLVED = DOCS / "resolved"
PROBES = sorted(DOCS.glob("*.yaml"))

#: What the runner writes into a ``per_group`` method's image terms and prompt prefix, one per target group.
GROUP_IMAGES = "<per-group target images>"
GROUP_PREFIX = "-<group>"


def resolve_method(config: ExperimentConfig, name: str, spec: MethodSpec) -> dict:
    """The optimisation config ``ExperimentRunner.optimize_prompts`` would validate for this method
    (experiment seed 0, round 1), without the keys it fills per run (see the module docstring)."""
    data = apply_overrides(read_yaml(spec.optimize), spec.set)
    # What the runner overwrites, as it does (data / task / model / log.progress are dropped again below).
    data["data"] = {"source": config.benchmark, "split": config.train_split}
    data["task"] = {"arch": config.task.arch, "input_size": config.task.input_size}
    data.setdefault("model", {}).update(diffusion=config.model, device=config.device)
    prompt = data.setdefault("prompt", {})
    prompt["seeds"] = list(prompt.get("seeds", [0]))
    filled_words = bool(config.generation.class_words)
    if filled_words:
        prompt["class_words"] = dict(config.generation.class_words)
    data.setdefault("log", {})["progress"] = False
    if spec.per_group:
        for loss in data.get("losses") or []:
            if loss["name"].startswith("image_") or loss["name"] == "ti_denoise":
                loss.setdefault("params", {})["target_images"] = GROUP_IMAGES
        prompt["prefix"] = f"{prompt.get('prefix', 'ap')}{GROUP_PREFIX}"
    resolved = parse_config(data, what=f"method {name} ({spec.optimize})").model_dump(mode="json")
    del resolved["data"], resolved["task"], resolved["model"]["diffusion"], resolved["model"]["device"]
    del resolved["log"]["progress"]
    if filled_words:
        del resolved["prompt"]["class_words"]
    return resolved


def resolve_probe(path: Path) -> dict[str, dict]:
    """``{method: resolved config}`` for every optimized method of the experiment config at ``path``."""
    config = load_experiment_config(str(path))
    return {name: resolve_method(config, name, spec) for name, spec in config.methods.items()
            if spec.kind == "optimized"}


def snapshot_path(probe: Path) -> Path:
    return RESOLVED / f"{probe.stem}.json"


def _flatten(value, key: str = "") -> dict[str, object]:
    if isinstance(value, dict) and value:
        return {k: v for sub, item in value.items() for k, v in _flatten(item, f"{key}.{sub}" if key else sub).items()}
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        return {k: v for i, item in enumerate(value) for k, v in _flatten(item, f"{key}.{i}").items()}
    return {key: value}


def _differences(snapshot: dict, now: dict) -> list[str]:
    old, new = _flatten(snapshot), _flatten(now)
    missing = object()
    lines = []
    for key in sorted(old.keys() | new.keys()):
        a, b = old.get(key, missing), new.get(key, missing)
        if {} in (a, b) and missing in (a, b):  # an empty section on one side, its keys listed on the other
            continue
        if a != b:
            shown = ["(absent)" if v is missing else json.dumps(v) for v in (a, b)]
            lines.append(f"  {key}: recorded {shown[0]}, now {shown[1]}")
    return lines


@pytest.mark.parametrize("probe", PROBES, ids=[p.stem for p in PROBES])
def test_probe_resolves_to_its_snapshot(probe):
    """A probe's optimised methods resolve to what they resolved to when its snapshot was written."""
    now = resolve_probe(probe)
    snap = snapshot_path(probe)
    rel = snap.relative_to(DOCS.parents[1])
    if not now:
        if snap.is_file():
            pytest.fail(f"{rel}: {probe.name} has no optimized method; delete the snapshot", pytrace=False)
        return
    if not snap.is_file():
        pytest.fail(f"{probe.name} has no snapshot {rel}; for a NEW probe write it with `.venv/bin/python "
                    f"tests/test_probe_configs.py {probe.relative_to(DOCS.parents[1])}`", pytrace=False)
    recorded = json.loads(snap.read_text())
    if now == recorded:
        return
    lines = []
    for method in sorted(recorded.keys() | now.keys()):
        if method not in now:
            lines.append(f"method {method}: in the snapshot, no longer an optimized method of the probe")
        elif method not in recorded:
            lines.append(f"method {method}: new in the probe, not in the snapshot")
        elif now[method] != recorded[method]:
            lines.append(f"method {method}:")
            lines += _differences(recorded[method], now[method])
    pytest.fail(
        f"{probe.name} no longer resolves to {rel} (a preset or schema default changed under it?):\n"
        + "\n".join(lines)
        + f"\nDo not regenerate the snapshot: the probe's recorded numbers came from the snapshot's values. Pin "
          f"each changed key in that method's `set:` in {probe.name} (e.g. \"losses.1.params.spread=false\" or "
          f"the whole \"losses=[...]\"), back to its recorded value. Only for a probe changed on purpose (and "
          f"re-run): `.venv/bin/python tests/test_probe_configs.py --force {probe.relative_to(DOCS.parents[1])}`.",
        pytrace=False)


@pytest.mark.parametrize("probe", PROBES, ids=[p.stem for p in PROBES])
def test_probe_loss_params_are_accepted(probe):
    """Every pinned loss parameter is still one its term takes (a renamed parameter fails here, not
    minutes into a run)."""
    from advprompts.losses import build_loss

    for name, resolved in resolve_probe(probe).items():
        for loss in resolved["losses"]:
            build_loss(loss["name"], **loss["params"])


def test_every_snapshot_belongs_to_a_probe():
    stems = {p.stem for p in PROBES}
    stale = sorted(p.name for p in RESOLVED.glob("*") if p.suffix != ".json" or p.stem not in stems)
    if stale:
        pytest.fail(f"docs/experiments/resolved/ holds files of no docs/experiments/*.yaml probe: {stale}; delete "
                    f"them with their probe (or rename them with it)", pytrace=False)


def write_snapshots(paths: list[str], force: bool = False) -> int:
    """Write ``docs/experiments/resolved/<stem>.json`` for each probe (new ones only, unless ``force``)."""
    status = 0
    for arg in paths:
        probe = Path(arg).resolve()
        snap = snapshot_path(probe)
        resolved = resolve_probe(probe)
        if not resolved:
            print(f"{probe.name}: no optimized method, no snapshot needed")
        elif snap.is_file() and not force:
            print(f"{snap}: exists; a recorded probe that no longer matches needs pins in its `set:`, not a new "
                  f"snapshot (--force overwrites it)", file=sys.stderr)
            status = 1
        else:
            RESOLVED.mkdir(parents=True, exist_ok=True)
            snap.write_text(json.dumps(resolved, indent=2) + "\n")
            print(f"wrote {snap} ({', '.join(resolved)})")
    return status


if __name__ == "__main__":
    args = sys.argv[1:]
    force = "--force" in args
    files = [a for a in args if a != "--force"]
    if not files:
        sys.exit("usage: python tests/test_probe_configs.py [--force] docs/experiments/PROBE.yaml ...")
    sys.exit(write_snapshots(files, force))

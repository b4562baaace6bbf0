"""What one method of an experiment generates from: its generation units (prompts or prompt files, and
the train sources each applies to) and, for learned prompts, its optimisation configs (the method's
preset pointed at the experiment's benchmark, base model or a loop round's model, and seeds; one config
per target group with ``per_group``)."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np

from advprompts.errors import ConfigError
from advprompts.experiments.pools import export_group_images, source_picks


def draw_seed(seed: int, rnd: int = 1) -> int:
    """The seed of round ``rnd``'s random draws (prompt inits, sources, generation noise). Round 1 is
    the experiment's own seed, so a loop's first round rebuilds (and can reuse) the experiment's pool;
    later rounds get seeds >= 10**6, apart from any experiment seed and from each other."""
    if rnd == 1:
        return seed
    return 1_000_000 + int(np.random.SeedSequence([seed, rnd]).generate_state(1)[0]) % 1_000_000


def round_tag(rnd: int) -> str:
    """Folder suffix of a loop round's prompts and pool (round 1 shares the experiment's folders)."""
    return "" if rnd == 1 else f"-r{rnd}"


def optimisation_runs(runner, name: str, spec, seed: int, weights: Path, draw: int,
                      rnd: int = 1) -> list[tuple[str | None, dict]]:
    """``(target group or None, config dict)`` of each optimisation run of method ``name`` at ``seed``
    against ``weights`` (``runner``: the :class:`~advprompts.experiments.runner.ExperimentRunner`)."""
    from advprompts.config.presets import apply_overrides, read_yaml

    c = runner.config
    base = apply_overrides(read_yaml(spec.optimize), spec.set)
    base["data"] = {"source": c.benchmark, "split": c.train_split}
    base["task"] = {"arch": runner.adversary(spec), "num_classes": runner.num_classes, "weights": str(weights),
                    "input_size": c.task.input_size}
    base.setdefault("model", {}).update(diffusion=c.model, device=c.device)
    prompt = base.setdefault("prompt", {})
    prompt["seeds"] = [draw * 1000 + s for s in prompt.get("seeds", [0])]
    if rnd > 1:  # fresh batches and noise too (round 1 keeps the preset's, as the experiment does)
        optim = base.setdefault("optim", {})
        optim["seed"] = optim.get("seed", 0) + draw
    if c.generation.class_words:  # one vocabulary for optimising and generating
        prompt["class_words"] = c.generation.class_words
    base.setdefault("log", {})["progress"] = runner.progress
    if not spec.per_group:
        return [(None, base)]
    if c.target_split is None:
        raise ConfigError(f"method {name!r} has per_group: true but the experiment has no target_split")
    target = runner.split(c.target_split)
    runs = []
    for group, folder in export_group_images(target, runner.out / "targets").items():
        data = copy.deepcopy(base)
        for loss in data["losses"]:
            if loss["name"].startswith("image_") or loss["name"] == "ti_denoise":
                loss.setdefault("params", {})["target_images"] = str(folder)
        data["prompt"]["prefix"] = f"{prompt.get('prefix', 'ap')}-{group}"
        runs.append((group, data))
    return runs


def pool_units(runner, name: str, spec, seed: int, pool_dir: Path, comps, weights: Path | None = None,
               rnd: int = 1) -> list[dict]:
    """What to generate: (prompts, sources) units adding up to about ``max_extra`` images (sources from
    train, or the method's ``source_split``); learned prompts are optimised first (``runner.optimize_prompts``)."""
    n, draw, train = runner.config.max_extra, draw_seed(seed, rnd), runner.sources(spec)
    if spec.kind == "text":
        texts = spec.prompts or target_descriptions(train)
        return [{"prompts": texts, "sources": source_picks(train, n, len(texts), draw)}]
    if spec.kind == "random":
        from advprompts.prompts import LearnablePrompt

        files = []
        for i in range(spec.num_prompts):
            p = LearnablePrompt(comps.tokenizer, comps.text_encoder, num_tokens=spec.num_tokens,
                                prefix=f"rand-s{draw}-{i}", init="vocab-gaussian", seed=draw * 1000 + i,
                                template=spec.template)
            files.append(p.save(pool_dir / "prompts" / f"prompt_{i}.safetensors"))
        return [{"prompt_files": files, "sources": source_picks(train, n, len(files), draw)}]
    results = runner.optimize_prompts(name, spec, seed, comps, weights, rnd)
    if spec.source_match:
        return matched_units(runner, spec.source_match, train, results, n, draw)
    by_class: dict[int | None, list[Path]] = {}
    for r in results:
        by_class.setdefault(r.class_label, []).append(r.file)
    if list(by_class) == [None]:
        files = by_class[None]
        return [{"prompt_files": files, "sources": source_picks(train, n, len(files), draw)}]
    # Per-class prompts apply to sources of their class only (equal images per class).
    per_class = n / len(by_class)
    return [{"prompt_files": files, "sources": source_picks(train, per_class, len(files), draw, label)}
            for label, files in sorted(by_class.items())]


def matched_units(runner, column: str, train, results, n: int, draw: int) -> list[dict]:
    """Per-group prompts, each painting around the sources whose ``column`` equals its target group's
    (equal images per group). A prompt's group is its run folder's name."""
    target = runner.split(runner.config.target_split)
    by_group: dict[str, list[Path]] = {}
    for r in results:
        by_group.setdefault(r.file.parent.name, []).append(r.file)
    values = [row.get(column) for row in train.rows]
    units = []
    for k, (group, files) in enumerate(sorted(by_group.items()), start=1):
        wanted = {row.get(column) for row in target.rows if (row.get("group") or "all") == group}
        if len(wanted) != 1 or None in wanted:
            raise ConfigError(f"source_match: {column!r}: target group {group!r} has no single value of that "
                              f"column ({sorted(map(str, wanted))}); name a column each group has one value of")
        among = np.array([v in wanted for v in values])
        if not among.any():
            raise ConfigError(f"source_match: no {runner.config.train_split} image has {column} = {wanted.pop()!r} "
                              f"(target group {group!r}); name another column")
        units.append({"prompt_files": files,
                      "sources": source_picks(train, n / len(by_group), len(files), draw, among=among, stream=k)})
    return units


def target_descriptions(dataset) -> list[str]:
    """The benchmark's ``target_descriptions`` (its benchmark.yaml), for text methods without ``prompts``."""
    import yaml

    bench = Path(getattr(dataset, "root", "")) / "benchmark.yaml"
    texts = yaml.safe_load(bench.read_text()).get("target_descriptions", []) if bench.is_file() else []
    if not texts:
        raise ConfigError("this benchmark has no target descriptions; give the method `prompts`")
    return texts

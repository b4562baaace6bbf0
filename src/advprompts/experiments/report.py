"""`report.md` of an experiment folder: the results table, accuracy-vs-budget plot, image grids,
the composition and label faithfulness of each generated set (judged by the zoo's oracle, never
by the task model or the CLIP used for guidance), decoded prompts and optimisation curves."""

from __future__ import annotations

import itertools
import json
import logging
from pathlib import Path

import numpy as np
import torch

from advprompts.experiments.composition import (benchmark_root, composition_context, composition_section,
                                                 finished_pools, pool_compositions, pool_images)
from advprompts.experiments.results import summarize
from advprompts.fsio import atomic_write_text, read_csv

logger = logging.getLogger(__name__)


def read_results(out: Path) -> list[dict]:
    return read_csv(out / "results.csv")


def results_table(rows: list[dict]) -> str:
    summary = sorted(summarize(rows), key=lambda r: (-r["n_extra"], r["method"]))
    lines = ["| method | extra images | seeds | worst-group acc | average acc | macro-F1 |", "|---|---|---|---|---|---|"]
    for r in summary:
        f1 = "–" if np.isnan(r["macro_f1_mean"]) else f"{100 * r['macro_f1_mean']:.1f} ± {100 * r['macro_f1_std']:.1f}"
        lines.append(f"| {r['method']} | {r['n_extra']} | {r['seeds']} | {100 * r['worst_group_mean']:.1f} ± "
                     f"{100 * r['worst_group_std']:.1f} | {100 * r['avg_mean']:.1f} ± {100 * r['avg_std']:.1f} | {f1} |")
    return "\n".join(lines)


def budget_table(rows: list[dict]) -> str:
    """Methods x budgets (number of extra images), each cell "worst-group ± std / average" in %."""
    summary = {(r["method"], r["n_extra"]): r for r in summarize(rows)}
    budgets = sorted({n for _, n in summary})
    lines = ["| method | " + " | ".join(f"{n} extra" for n in budgets) + " |", "|---" * (len(budgets) + 1) + "|"]
    for method in sorted({m for m, _ in summary}, key=lambda m: (min(n for mm, n in summary if mm == m) > 0, m)):
        cells = []
        for n in budgets:
            r = summary.get((method, n))
            cells.append("" if r is None else f"{100 * r['worst_group_mean']:.1f} ± {100 * r['worst_group_std']:.1f}"
                         f" / {100 * r['avg_mean']:.1f}")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _mean_std(values: list[float]) -> str:
    """Mean ± sample std (ddof=1) in %; the mean alone for one value (no spread to estimate)."""
    v = 100 * np.asarray(values, dtype=float)
    return f"{v.mean():.1f}" if len(v) == 1 else f"{v.mean():.1f} ± {v.std(ddof=1):.1f}"


def loop_table(rows: list[dict], key: str = "worst_group_acc") -> str:
    """Methods x loop rounds (``loop.csv`` rows), each cell ``key`` as mean ± std over seeds in %."""
    cells: dict[str, dict[int, list[float]]] = {}
    for r in rows:
        cells.setdefault(r["method"], {}).setdefault(int(r["round"]), []).append(float(r[key]))
    rounds = sorted({n for per in cells.values() for n in per})
    lines = ["| method | " + " | ".join(f"round {n}" for n in rounds) + " |", "|---" * (len(rounds) + 1) + "|"]
    for method, per in cells.items():
        lines.append(f"| {method} | " + " | ".join(_mean_std(per[n]) if n in per else "" for n in rounds) + " |")
    return "\n".join(lines)


def adversary_tables(rows: list[dict], config, n_extra: int | None = None) -> list[str]:
    """Model-specific data: for optimised methods that differ only in ``adversary``, the worst-group
    accuracy (mean ± std over seeds, %) with rows = the architecture the prompts were found against and
    columns = the architecture fine-tuned on them (``transfer``), at ``n_extra`` (default: the largest
    budget). Empty when no method names an adversary other than task.arch."""
    task = config.task.arch
    families: dict[str, list[tuple[str, str]]] = {}
    for name, spec in config.methods.items():
        if spec.kind == "optimized":
            key = json.dumps(spec.model_dump(mode="json", exclude={"adversary"}), sort_keys=True)
            families.setdefault(key, []).append((spec.adversary or task, name))
    lines = []
    for members in families.values():
        if all(adv == task for adv, _ in members):
            continue
        values: dict[tuple[str, str, int], list[float]] = {}
        for r in rows:
            name, _, tuned = r["method"].partition("->")
            adv = next((a for a, m in members if m == name), None)
            if adv is not None:
                values.setdefault((adv, tuned or task, int(r["n_extra"])), []).append(float(r["worst_group_acc"]))
        if not values:
            continue
        n = n_extra if n_extra is not None else max(k[2] for k in values)
        advs = sorted({a for a, _ in members}, key=lambda a: (a != task, a))
        tuned = sorted({t for _, t, _ in values}, key=lambda t: (t != task, t))
        lines += [f"Prompts found against one architecture, fine-tuning another: worst-group accuracy (%) at "
                  f"{n} extra images (rows: prompts found against; columns: fine-tuned).", "",
                  "| prompts found against | " + " | ".join(f"fine-tuned {t}" for t in tuned) + " |",
                  "|---" * (len(tuned) + 1) + "|"]
        for adv in advs:
            names = ", ".join(f"`{m}`" for a, m in members if a == adv)
            lines.append(f"| {adv} ({names}) | " + " | ".join(
                _mean_std(values[(adv, t, n)]) if (adv, t, n) in values else "" for t in tuned) + " |")
        lines.append("")
    return lines


def ablation_lines(config) -> list[str]:
    """What each ablation row changed (``pool_of``, ``oracle_filter``, ``label_noise``, ``source_split``,
    ``source_match``):
    such rows test why a method works, and some use information no method has (the oracle, the target's
    labelled images). Empty without ablations."""
    lines = []
    for name, spec in config.methods.items():
        changes = ([f"the pool of `{spec.pool_of}`"] if spec.pool_of else []) + \
            (["only the images in which the oracle sees the labelled class (ground truth no method has)"]
             if spec.oracle_filter else []) + \
            ([f"{100 * spec.label_noise:.0f}% of the labels replaced by a random other class"] if spec.label_noise else []) + \
            ([f"generated around the labelled images of `{spec.source_split}`"]
             if spec.source_split not in (None, config.train_split) else []) + \
            ([f"each target group's prompt generated around the images with that group's `{spec.source_match}`"]
             if spec.source_match else [])
        if changes:
            lines.append(f"- `{name}`: " + "; ".join(changes))
    return ["## Ablations", "", *lines, ""] if lines else []


def headroom_lines(rows: list[dict]) -> list[str]:
    """What the benchmark leaves to win, before any method: no extra data against the real images of the
    shift (``real_ood`` at its largest size), average accuracy paired per seed. Empty without both rows."""
    base = {int(r["seed"]): r for r in rows if r["method"] == "no_extra"}
    real = [r for r in rows if r["method"] == "real_ood" and int(r["seed"]) in base]
    if not real:
        return []
    n = max(int(r["n_extra"]) for r in real)
    real = {int(r["seed"]): r for r in real if int(r["n_extra"]) == n}
    seeds = sorted(real)
    value = lambda rs, key: [float(rs[s][key]) for s in seeds]  # noqa: E731
    gain = np.subtract(value(real, "avg_acc"), value(base, "avg_acc"))
    return ["## Headroom (before any method)", "", f"Seeds {seeds}; mean ± sample std, %.", "",
            "| | no extra data | real OOD images | real OOD - no extra (paired) |", "|---|---|---|---|",
            f"| average accuracy | {_mean_std(value(base, 'avg_acc'))} | {_mean_std(value(real, 'avg_acc'))} | "
            f"{_mean_std(gain)} |",
            f"| worst-group accuracy | {_mean_std(value(base, 'worst_group_acc'))} | "
            f"{_mean_std(value(real, 'worst_group_acc'))} | |", "", f"(real OOD: {n} labelled images of the shift)", ""]


def plot_accuracy(rows: list[dict], path: Path) -> Path:
    """Worst-group and average accuracy against the number of extra images, one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = summarize(rows)
    baseline = {r["method"]: r for r in summary if r["n_extra"] == 0}
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, title in ((axes[0], "worst_group", "worst-group accuracy"), (axes[1], "avg", "average accuracy")):
        for method in sorted({r["method"] for r in summary if r["n_extra"] > 0}):
            pts = sorted((r["n_extra"], r[f"{key}_mean"], r[f"{key}_std"]) for r in summary
                         if r["method"] == method and r["n_extra"] > 0)
            x, y, s = map(np.array, zip(*pts))
            ax.errorbar(x, 100 * y, yerr=100 * s, marker="o", capsize=3, label=method)
        for (method, r), ls in zip(baseline.items(), itertools.cycle(["--", ":", "-."])):  # one per architecture
            ax.axhline(100 * r[f"{key}_mean"], ls=ls, c="grey", label=method)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("extra images")
        ax.set_ylabel(f"{title} (%)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8, loc="center left", bbox_to_anchor=(1.02, 0.5))  # beside the curves, not over them
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def save_grid(pool_dir: Path, class_names: list[str], path: Path, per_class: int = 8) -> Path:
    """One row of generated images per class."""
    from torchvision.utils import save_image

    images, labels = pool_images(pool_dir)
    rows = []
    for c in range(len(class_names)):
        idx = np.flatnonzero(labels == c)[:per_class]
        row = images[idx] if len(idx) else torch.zeros(0, *images.shape[1:])
        rows.append(torch.cat([row, torch.ones(per_class - len(row), *images.shape[1:])]))
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(torch.cat(rows), path, nrow=per_class, padding=1, pad_value=1.0)
    return path


def decoded_prompts(prompt_dir: Path, components) -> list[tuple[str, str]]:
    from advprompts.experiments.pools import fresh_text_side
    from advprompts.prompts import LearnablePrompt

    comps = fresh_text_side(components)
    out = []
    for i, f in enumerate(sorted(prompt_dir.rglob("prompt_*.safetensors"))):
        p = LearnablePrompt.load(f, comps.tokenizer, comps.text_encoder, prefix=f"rep{i}")
        words = " ".join(w[0] for w in p.decode_nearest(k=1))
        out.append((str(f.relative_to(prompt_dir)), p.template.replace("{prompt}", f"[{words}]")))
    return out


def plot_curves(prompt_dir: Path, path: Path) -> Path | None:
    """Loss curves of every prompt of one optimisation run (one panel per logged term)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    logs = sorted(prompt_dir.rglob("log.csv"))
    if not logs:
        return None
    series: dict[str, dict[str, list]] = {}
    for log in logs:
        for r in read_csv(log):
            key = f"{log.parent.relative_to(prompt_dir)}/{r['prompt']}".strip("./")
            for term, v in r.items():
                if term in ("prompt", "step", "seconds") or v in ("", None):
                    continue
                series.setdefault(term, {}).setdefault(key, []).append((int(r["step"]), float(v)))
    fig, axes = plt.subplots(1, len(series), figsize=(4 * len(series), 3), squeeze=False)
    for ax, (term, curves) in zip(axes[0], sorted(series.items())):
        for key, pts in sorted(curves.items()):
            x, y = zip(*pts)
            ax.plot(x, y, lw=1, label=key)
        ax.set_title(term)
        ax.set_xlabel("step")
    axes[0][-1].legend(fontsize=6)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_report(out: str | Path, config, components=None, oracle=None) -> Path:
    """Write ``out/report.md`` (and ``out/figures/``) from the experiment folder's contents."""
    from advprompts.data import resolve_dataset

    out = Path(out)
    rows = read_results(out)
    figs = out / "figures"
    lines = [f"# Experiment `{config.name}` on `{config.benchmark}`", "",
             f"Task model `{config.task.arch}`, fine-tuned {config.finetune.epochs} epochs on train + extra data; "
             f"evaluated on `{config.eval_split}`; seeds {config.seeds}; diffusion model `{config.model}`.", "",
             "## Results (mean ± sample std (ddof 1) over seeds, %)", "", results_table(rows), "",
             "Worst-group accuracy (mean ± sample std) / average accuracy per number of extra images:", "",
             budget_table(rows), ""]
    lines += headroom_lines(rows) + ablation_lines(config)
    adversary = adversary_tables(rows, config)
    if adversary:
        lines += ["## Model-specific data", "", *adversary]
    plot_accuracy(rows, figs / "accuracy_vs_extra.png")
    lines += ["![accuracy vs extra images](figures/accuracy_vs_extra.png)", ""]
    train_ds = resolve_dataset(config.benchmark, split=config.train_split)
    class_names = [train_ds.class_names.get(i, str(i)) for i in range(len(train_ds.class_names))]
    pools = finished_pools(out)
    if pools:
        lines += ["## Generated data", ""]
        ctx = composition_context(benchmark_root(config), config.train_split, config.eval_split) \
            if oracle is not None else None
        if ctx is not None:
            lines += composition_section(pool_compositions(pools, ctx, oracle), ctx)
        for pool in pools:
            if pool.name.endswith("-s0") or len({p.name.rsplit('-s', 1)[0] for p in pools}) == len(pools):
                grid = save_grid(pool, class_names, figs / f"grid_{pool.name}.png")
                lines += [f"**{pool.name}** (one row per class: {', '.join(class_names)})", "",
                          f"![{pool.name}](figures/{grid.name})", ""]
    prompt_dirs = sorted(p for p in (out / "prompts").glob("*") if p.is_dir()) if (out / "prompts").is_dir() else []
    if prompt_dirs:
        lines += ["## Learned prompts", "", "Each placeholder token decoded into its nearest vocabulary word.", ""]
        for d in prompt_dirs:
            if components is not None:
                for name, text in decoded_prompts(d, components):
                    lines.append(f"- `{d.name}/{name}`: {text}")
            curve = plot_curves(d, figs / f"curves_{d.name}.png")
            if curve is not None:
                lines += ["", f"![optimisation curves {d.name}](figures/{curve.name})", ""]
    path = out / "report.md"
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path

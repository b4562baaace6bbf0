"""Targets chosen by the task model (``target_mode: adversary`` of text guidance).

Guidance that every prompt shares does not say which class belongs where; the paper leaves that to the
adversarial term's gradient, which a task model fooled by any small change satisfies wherever the guidance
took the prompt. Here the model's feedback chooses the target itself: each class's descriptions are
ranked by the adversarial terms' loss on images generated from them (the same sources and noise for
every description), and the k-th prompt of a class is guided to its k-th most adversarial description.
The person configuring the run gives only the shared descriptions; GP, which has no task model, cannot
use this mode.
"""

from __future__ import annotations

from typing import Callable

import torch

from advprompts.errors import ConfigError
from advprompts.losses.registry import LossInputs, LossSet, LossTerm, WeightedTerm


def rankers(losses: LossSet) -> list[LossTerm]:
    """The text-guidance terms whose targets the task model chooses."""
    return [t.term for t in losses.terms if getattr(t.term, "target_mode", None) == "adversary"]


def check_rankable(losses: LossSet, per_class: bool) -> list[WeightedTerm]:
    """Refuse, before anything is written, a ranking that cannot be made: no adversarial term, or prompts
    shared by the classes. Returns the adversarial terms that score the descriptions."""
    from advprompts.losses.adversarial import TaskTerm

    if not rankers(losses):
        return []
    adversarial = [t for t in losses.terms if isinstance(t.term, TaskTerm)]
    if not adversarial:
        raise ConfigError("target_mode 'adversary' ranks the descriptions by the adversarial terms' loss, and this "
                          "run has none (GP): use target_mode mean or nearest, or add an adversarial term")
    if not per_class:
        raise ConfigError("target_mode 'adversary' ranks the descriptions per class: set prompt.per_class: true")
    return adversarial


def rank_descriptions(terms: list[LossTerm], losses: LossSet, class_name: str,
                      render: Callable[[str], LossInputs], known: list[dict] | None = None) -> dict[str, list[dict]]:
    """Rank the class's descriptions of every term in ``terms`` (most adversarial first) and hand each term
    its order; ``render(description)`` draws the class's batch with the description in the prompt's place.
    ``known``: a ranking recorded before (a resumed run's ``targets.json``), reused where it ranks exactly
    the term's descriptions, since rendering every description costs as much as several optimisation steps.

    Returns:
        ``{class name: [{"description", "adversarial_loss"}, ...]}`` in rank order (the last term's).
    """
    adversarial = check_rankable(losses, per_class=True)
    result = {}
    for term in terms:
        descriptions = term.descriptions_for(class_name)
        if known is not None and sorted(r["description"] for r in known) == sorted(descriptions):
            term.set_ranking(class_name, [descriptions.index(r["description"]) for r in known])
            result[class_name] = known
            continue
        scores = []
        with torch.no_grad():
            for description in descriptions:
                inputs = render(description)
                scores.append(sum(t.weight * float(t.term(inputs)) for t in adversarial))
        order = sorted(range(len(scores)), key=scores.__getitem__)  # the terms are minimised: lowest first
        term.set_ranking(class_name, order)
        result[class_name] = [{"description": descriptions[k], "adversarial_loss": round(scores[k], 6)} for k in order]
    return result

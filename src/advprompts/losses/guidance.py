"""Target-informed guidance terms (Feedback 2): text guidance here; image guidance and TI denoising,
which learn from target images, in :mod:`advprompts.losses.image_guidance`.

Text guidance compares the *diffusion model's own* text encoder output for the learned prompt
with target description embeddings. Every prompt sees the same descriptions (the paper's setting;
the task model's loss decides which class goes where), combined by ``target_mode``:

- ``mean`` (the paper): the distance to the mean of the descriptions. One prompt guided to the mean
  of "desert", "snow" and "lake" paints one blend of them.
- ``nearest``: the distance to the closest description: the target is the union of the descriptions
  and the other terms (the adversary) choose which one a prompt goes to.
- ``softmin``: ``-t * logsumexp(-d_k / t)`` over the descriptions' distances ``d_k``, a smooth
  ``nearest`` (``softmin_temperature`` t; t -> 0 is ``nearest``, large t spreads the pull).
- ``adversary``: the task model chooses: before training, each class's descriptions are ranked by the
  adversarial terms' loss on images generated from them, and the k-th prompt of a class is guided to its
  k-th most adversarial description (``losses/assignment.py``; needs an adversarial term and per-class prompts).

Class-aware targets are an ablation that knows the answer: ``per_class`` gives each class its own
descriptions (e.g. land places for waterbird prompts, the groups train lacks), and ``spread`` guides
the k-th prompt of a class to description k mod n. They hand the guidance what the model's feedback
exists to find.

Pooling (``pooling`` param): ``eos`` (default) takes the state at the first end-of-text token after
the final layer norm, CLIP's text embedding before projection; ``mean`` averages the states up to
and including that token; ``tokens`` keeps every token state (the paper's code: all 77 x width).
``reduction`` (``text_l2``): ``sum`` over dimensions, or ``mean`` (the paper's code: a mean, which
puts the term on the adversarial CE's scale).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from advprompts.errors import ConfigError
from advprompts.losses.registry import LossInputs, LossResources, LossTerm, register_loss
from advprompts.text_encoding import encode_text, pool_text

TARGET_MODES = ("mean", "nearest", "softmin", "adversary")


def check_target_mode(mode: str, temperature: float) -> None:
    if mode not in TARGET_MODES:
        raise ValueError(f"target_mode={mode!r}; expected one of {', '.join(TARGET_MODES)}")
    if temperature <= 0:
        raise ValueError(f"softmin_temperature={temperature}; expected > 0")


def combine_targets(distances: torch.Tensor, mode: str, temperature: float = 1.0) -> torch.Tensor:
    """Reduce (B, K) distances to K targets into (B,): the only target (``mean`` mode holds one row),
    the nearest one, or their soft minimum."""
    if mode == "nearest" or distances.shape[1] == 1:
        return distances.min(dim=1).values
    if mode == "softmin":
        return -temperature * torch.logsumexp(-distances / temperature, dim=1)
    raise ValueError(f"target_mode {mode!r} takes one target row, got {distances.shape[1]}")


def _class_names(inputs: LossInputs) -> list[str | None]:
    if inputs.prompt is None:
        raise ConfigError("guidance losses need the learned prompt")
    return sorted(set(inputs.class_names or [None]), key=str)


def prompt_texts(inputs: LossInputs, template: str) -> list[str]:
    """The prompt's text for each class in the batch, in the order of the guidance targets' rows."""
    return [inputs.prompt.text(class_name=n, template=template) for n in _class_names(inputs)]


class _TextGuidance(LossTerm):
    reads_images = False  # the prompt's text embedding against the targets': no image, no rollout

    def __init__(self, descriptions: list[str] | None = None, template: str = "{prompt}", pooling: str = "eos",
                 renormalize: bool = False, std_scaling: bool = False,
                 per_class: dict[str, list[str]] | None = None, spread: bool = False,
                 target_mode: str = "mean", softmin_temperature: float = 1.0):
        groups = {None: descriptions} if descriptions is not None else {}
        groups.update(per_class or {})
        if not groups:
            raise ValueError("give target descriptions (descriptions, or per_class: {class name: [...]})")
        for key, texts in groups.items():
            if not texts or not all(isinstance(d, str) and d for d in texts):
                where = "descriptions" if key is None else f"per_class[{key!r}]"
                raise ValueError(f"{where} must be a non-empty list of target descriptions")
        if pooling not in ("eos", "mean", "tokens"):
            raise ValueError(f"pooling={pooling!r}; expected 'eos', 'mean' or 'tokens'")
        check_target_mode(target_mode, softmin_temperature)
        if spread and target_mode != "mean":
            raise ValueError(f"spread assigns each prompt one description; it does not combine with "
                             f"target_mode={target_mode!r}")
        self.groups, self.template, self.pooling = {k: list(v) for k, v in groups.items()}, template, pooling
        self.renormalize, self.std_scaling, self.spread = renormalize, std_scaling, spread
        self.target_mode, self.softmin_temperature = target_mode, softmin_temperature

    def _pooled(self, texts: list[str]) -> torch.Tensor:
        hidden, ids = encode_text(self.c.tokenizer, self.c.text_encoder, texts)
        if self.pooling == "tokens":
            return hidden.float().flatten(1)
        return pool_text(hidden.float(), ids, self.c.tokenizer.eos_token_id, self.pooling)

    def setup(self, resources: LossResources) -> None:
        if resources.components is None:
            raise ConfigError(f"loss {self.name!r} needs the diffusion components")
        self.c = resources.components
        self.targets, self.scales = {}, {}
        for key, texts in self.groups.items():
            with torch.no_grad():
                emb = self._pooled(texts)
            target = emb.mean(0)
            if self.renormalize:
                # The mean of several directions is shorter than each; restore the typical norm.
                target = target / target.norm() * emb.norm(dim=-1).mean()
            # The target rows: their mean (one row) in `mean` mode, else every description.
            self.targets[key] = target[None] if self.target_mode == "mean" and not self.spread else emb
            # Per-dimension 1/std over the description embeddings (1 when there is only one).
            self.scales[key] = 1 / (emb.std(0) + 1e-3) if self.std_scaling and len(emb) > 1 else torch.ones_like(target)
        self.ranking: dict[str, list[int]] = {}

    def target_for(self, inputs: LossInputs) -> tuple[torch.Tensor, torch.Tensor]:
        """(targets (B, K, D), scales (B, D)), one row per class in the batch (as `prompt_texts` orders
        them); with ``spread``, K = 1: the prompt's own description (its slot modulo their number)."""
        rows = []
        for name in _class_names(inputs):
            key = name if name in self.targets else None
            if key not in self.targets:
                raise ConfigError(f"text guidance has no target descriptions for class {name!r}: add it under "
                                  f"per_class, or give shared descriptions")
            rows.append(key)
        if self.target_mode == "adversary":
            missing = [n for n in _class_names(inputs) if n not in self.ranking]
            if missing:
                raise ConfigError(f"target_mode 'adversary': class {missing[0]!r} has no ranking of its descriptions "
                                  "by the task model (advprompts.optimize makes it before training)")
            picked = [self.targets[k][self.ranking[n][inputs.prompt_slot % len(self.ranking[n])]][None]
                      for k, n in zip(rows, _class_names(inputs))]
        elif self.spread:
            picked = [self.targets[k][inputs.prompt_slot % len(self.targets[k])][None] for k in rows]
        else:
            picked = [self.targets[k] for k in rows]
        if len({len(p) for p in picked}) > 1:
            raise ConfigError("per_class description lists of different lengths need target_mode: mean")
        return torch.stack(picked), torch.stack([self.scales[k] for k in rows])

    def descriptions_for(self, class_name: str | None) -> list[str]:
        """The descriptions a prompt of this class is guided to (its own under ``per_class``, else the shared)."""
        return self.groups[class_name if class_name in self.groups else None]

    def set_ranking(self, class_name: str, order: list[int]) -> None:
        """``target_mode: adversary``: the class's descriptions, most adversarial first (indices)."""
        self.ranking[class_name] = list(order)

    def distances(self, inputs: LossInputs) -> torch.Tensor:
        """(B, K): the term's distance from each class's prompt embedding to each target row."""
        raise NotImplementedError

    def __call__(self, inputs: LossInputs) -> torch.Tensor:
        return combine_targets(self.distances(inputs), self.target_mode, self.softmin_temperature).mean()


@register_loss("text_l2")
class TextL2(_TextGuidance):
    """Squared L2 to the target descriptions' embeddings, summed over dimensions (``reduction: sum``,
    our default) or averaged (``mean``, the paper's code)."""

    def __init__(self, reduction: str = "sum", **kwargs):
        if reduction not in ("sum", "mean"):
            raise ValueError(f"reduction={reduction!r}; expected 'sum' or 'mean'")
        super().__init__(**kwargs)
        self.reduction = reduction

    def distances(self, inputs: LossInputs) -> torch.Tensor:
        pooled = self._pooled(prompt_texts(inputs, self.template))
        target, scale = self.target_for(inputs)
        sq = ((pooled[:, None] - target) * scale[:, None]).square()
        return sq.sum(-1) if self.reduction == "sum" else sq.mean(-1)


@register_loss("text_cosine")
class TextCosine(_TextGuidance):
    """Negative cosine similarity to the target descriptions' embeddings."""

    def distances(self, inputs: LossInputs) -> torch.Tensor:
        pooled = self._pooled(prompt_texts(inputs, self.template))
        return -F.cosine_similarity(pooled[:, None], self.target_for(inputs)[0], dim=-1)

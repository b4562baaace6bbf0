"""How the terms combine: guidance target modes, reductions, adversarial temperature and margin, and
the per-term gradient norms the optimisation logs."""

from __future__ import annotations

import copy
import csv
import json
import math

import pytest
import torch
import torch.nn.functional as F

from advprompts.errors import ConfigError
from advprompts.losses import LossInputs, LossResources, LossSet, WeightedTerm, build_loss
from advprompts.losses.guidance import combine_targets
from advprompts.prompts import LearnablePrompt

DESCRIPTIONS = ["snow", "sand", "lake"]


class _Fixed(torch.nn.Module):
    def __init__(self, logits):
        super().__init__()
        self.logits = logits

    def forward(self, images):
        return self.logits


def _text(tiny, name="text_l2", **params):
    term = build_loss(name, **params)
    term.setup(LossResources(components=tiny))
    return term


def _single_distances(tiny, prompt, name="text_l2", **params):
    inputs = LossInputs(images=torch.zeros(1, 3, 4, 4), prompt=prompt)
    return torch.tensor([_text(tiny, name, descriptions=[d], **params)(inputs).item() for d in DESCRIPTIONS])


@pytest.mark.parametrize("name", ["text_l2", "text_cosine"])
def test_nearest_and_softmin_targets_combine_the_single_description_distances(tiny, name):
    prompt = LearnablePrompt(tiny.tokenizer, tiny.text_encoder, num_tokens=3, prefix="n")
    single = _single_distances(tiny, prompt, name)
    inputs = LossInputs(images=torch.zeros(1, 3, 4, 4), prompt=prompt)
    nearest = _text(tiny, name, descriptions=DESCRIPTIONS, target_mode="nearest")(inputs).item()
    assert math.isclose(nearest, single.min().item(), rel_tol=1e-5, abs_tol=1e-6)
    t = 0.7
    soft = _text(tiny, name, descriptions=DESCRIPTIONS, target_mode="softmin", softmin_temperature=t)(inputs).item()
    assert math.isclose(soft, (-t * torch.logsumexp(-single / t, 0)).item(), rel_tol=1e-5, abs_tol=1e-6)
    assert soft <= single.min().item() + 1e-6  # a soft minimum lies below the hard one
    mean = _text(tiny, name, descriptions=DESCRIPTIONS)(inputs).item()
    assert all(not math.isclose(mean, s, rel_tol=1e-3) for s in single.tolist())  # the blend is its own target


def test_nearest_target_pulls_each_prompt_to_its_own_closest_description(tiny):
    """Prompts that start nearer different descriptions end at those descriptions, not at one blend."""
    term = _text(tiny, descriptions=["snow", "lake"], target_mode="nearest")
    singles = [_text(tiny, descriptions=[d]) for d in ("snow", "lake")]
    ends = []
    for seed in range(6):
        prompt = LearnablePrompt(tiny.tokenizer, tiny.text_encoder, num_tokens=2, prefix=f"q{seed}", seed=seed)
        inputs = LossInputs(images=torch.zeros(1, 3, 4, 4), prompt=prompt)
        start = [t(inputs).item() for t in singles]
        opt = torch.optim.Adam(prompt.parameters(), lr=0.05)
        for _ in range(40):
            opt.zero_grad()
            term(inputs).backward()
            opt.step()
        end = [t(inputs).item() for t in singles]
        assert min(end) < 0.5 * min(start)
        ends.append(end.index(min(end)))
    assert set(ends) == {0, 1}, f"every prompt went to one description: {ends}"


def test_mean_reduction_and_token_pooling(tiny):
    prompt = LearnablePrompt(tiny.tokenizer, tiny.text_encoder, num_tokens=3, prefix="m")
    inputs = LossInputs(images=torch.zeros(1, 3, 4, 4), prompt=prompt)
    width = tiny.text_encoder.config.hidden_size
    summed = _text(tiny, descriptions=DESCRIPTIONS)(inputs).item()
    meaned = _text(tiny, descriptions=DESCRIPTIONS, reduction="mean")(inputs).item()
    assert math.isclose(meaned, summed / width, rel_tol=1e-5)
    tokens = _text(tiny, descriptions=DESCRIPTIONS, pooling="tokens", reduction="mean")
    assert tokens.targets[None].shape[-1] == tiny.tokenizer.model_max_length * width
    assert tokens(inputs).item() > 0
    with pytest.raises(ConfigError, match="reduction='max'"):
        build_loss("text_l2", descriptions=DESCRIPTIONS, reduction="max")
    with pytest.raises(ConfigError, match="has no parameter 'reduction'"):
        build_loss("text_cosine", descriptions=DESCRIPTIONS, reduction="mean")
    with pytest.raises(ConfigError, match="target_mode='closest'"):
        build_loss("text_l2", descriptions=DESCRIPTIONS, target_mode="closest")
    with pytest.raises(ConfigError, match="spread assigns"):
        build_loss("text_l2", descriptions=DESCRIPTIONS, spread=True, target_mode="nearest")


def test_combine_targets():
    d = torch.tensor([[3.0, 1.0, 2.0], [0.5, 4.0, 4.0]])
    assert combine_targets(d, "nearest").tolist() == [1.0, 0.5]
    assert combine_targets(d[:, :1], "mean").tolist() == [3.0, 0.5]
    assert torch.allclose(combine_targets(d, "softmin", 1e-3), torch.tensor([1.0, 0.5]), atol=1e-3)
    with pytest.raises(ValueError):
        combine_targets(d, "mean")


def test_image_guidance_nearest_target_image(tiny):
    mean = build_loss("image_cosine", target_images="tiny-synth:target", clip="tiny", max_images=4)
    near = build_loss("image_cosine", target_images="tiny-synth:target", clip="tiny", max_images=4,
                      target_mode="nearest")
    for t in (mean, near):
        t.setup(LossResources(components=tiny))
    images = torch.rand(2, 3, 16, 16)
    emb = near.embed(images)
    targets = near.embed_images("tiny-synth:target", torch.device("cpu"))
    expected = -F.cosine_similarity(emb[:, None], targets[None], dim=-1).max(1).values.mean()
    assert near.target_rows.shape[0] == 4 and mean.target_rows.shape[0] == 1
    assert math.isclose(near(LossInputs(images=images)).item(), expected.item(), rel_tol=1e-5)


def test_temperature_divides_the_logits_but_not_the_stop_check():
    logits = torch.tensor([[3.0, -1.0], [0.5, 2.0]])
    labels = torch.tensor([0, 0])
    inputs = LossInputs(images=torch.zeros(2, 3, 4, 4), labels=labels)
    term = build_loss("opposite_ce", temperature=2.0, stop_threshold=1.0)
    term.setup(LossResources(task_model=_Fixed(logits)))
    value = term(inputs)
    assert math.isclose(value.item(), F.cross_entropy(logits / 2, 1 - labels).item(), rel_tol=1e-6)
    assert math.isclose(term.last_task_loss, F.cross_entropy(logits, labels).item(), rel_tol=1e-6)
    with pytest.raises(ConfigError, match="temperature=0"):
        build_loss("neg_ce", temperature=0)


def _logit_grad(name, logits, labels, **params):
    z = logits.clone().requires_grad_(True)
    term = build_loss(name, **params)
    term.setup(LossResources(task_model=lambda images: z))
    term(LossInputs(images=torch.zeros(len(z), 3, 4, 4), labels=labels)).backward()
    return z.grad


def test_logit_margin_keeps_its_gradient_as_the_model_is_fooled_and_stops_past_kappa():
    labels = torch.tensor([0])
    grads = {}
    for gap in (0.0, -3.0, -8.0):  # true logit minus the other: 0 = at the boundary, -3 = fooled
        logits = torch.tensor([[gap, 0.0]])
        grads[gap] = (_logit_grad("logit_margin", logits, labels, kappa=5.0).norm().item(),
                      _logit_grad("opposite_ce", logits, labels).norm().item())
    assert math.isclose(grads[0.0][0], math.sqrt(2), rel_tol=1e-6) and math.isclose(grads[-3.0][0], math.sqrt(2), rel_tol=1e-6)
    assert grads[-8.0][0] == 0.0  # fooled by more than kappa: no more push
    assert grads[-3.0][1] < 0.1 * grads[0.0][1]  # opposite_ce's gradient has faded by then
    term = build_loss("logit_margin", kappa=2.0)
    term.setup(LossResources(task_model=_Fixed(torch.tensor([[1.0, 0.0, 4.0], [0.0, 9.0, 1.0]]))))
    value = term(LossInputs(images=torch.zeros(2, 3, 4, 4), labels=torch.tensor([0, 1])))
    assert math.isclose(value.item(), (-2.0 + 8.0) / 2, rel_tol=1e-6)  # margins -3 (floored at -2) and 8


def test_per_term_gradients_add_up_to_the_joint_gradient(tiny):
    from advprompts.optim.batch import backward_terms

    prompt = LearnablePrompt(tiny.tokenizer, tiny.text_encoder, num_tokens=2, prefix="g")
    losses = LossSet([WeightedTerm(_text(tiny, descriptions=["snow"]), 3.0),
                      WeightedTerm(_text(tiny, "text_cosine", descriptions=["lake"]), 5.0)])
    inputs = LossInputs(images=torch.zeros(1, 3, 4, 4), prompt=prompt)
    total, _, weighted = losses.evaluate(inputs)
    total.backward()
    joint = prompt.embeddings.grad.clone()
    prompt.embeddings.grad = None
    _, _, weighted = losses.evaluate(inputs)
    (norms,) = backward_terms([weighted], [prompt.embeddings], grad_accum=1)
    assert torch.allclose(prompt.embeddings.grad, joint, atol=1e-6)
    for label, term in (("text_l2", weighted["text_l2"]), ("text_cosine", weighted["text_cosine"])):
        (g,) = torch.autograd.grad(losses.evaluate(inputs)[2][label], prompt.embeddings)
        assert math.isclose(norms[f"grad_{label}"], g.norm().item(), rel_tol=1e-5)


class _RedIsWater(torch.nn.Module):
    """Binary classifier on the mean red value: red scenes read as class 1 (so class 0 is fooled by red)."""

    def forward(self, images):
        red = images[:, 0].mean(dim=(1, 2)) - 0.5
        return torch.stack([-20 * red, 20 * red], dim=1)


def test_adversary_target_mode_guides_each_prompt_to_the_descriptions_the_model_gets_wrong(tiny):
    from advprompts.losses.assignment import rank_descriptions, rankers

    descriptions = ["snow", "sand", "lake"]
    guidance = build_loss("text_l2", descriptions=descriptions, target_mode="adversary")
    adversary = build_loss("opposite_ce")
    losses = LossSet([WeightedTerm(adversary), WeightedTerm(guidance)])
    losses.setup(LossResources(components=tiny, task_model=_RedIsWater()))
    assert rankers(losses) == [guidance]
    redness = {"snow": 0.1, "sand": 0.9, "lake": 0.6}  # the rendering of each description, as the model sees it

    def render(description):
        images = torch.zeros(2, 3, 4, 4)
        images[:, 0] = redness[description]
        return LossInputs(images=images, labels=torch.tensor([0, 0]), class_names=["sparrow", "sparrow"])

    ranked = rank_descriptions(rankers(losses), losses, "sparrow", render)
    assert [r["description"] for r in ranked["sparrow"]] == ["sand", "lake", "snow"]  # most red first: fools class 0

    def no_render(description):
        raise AssertionError("rendered although the ranking was recorded")

    assert rank_descriptions(rankers(losses), losses, "sparrow", no_render, known=ranked["sparrow"]) == ranked
    # a recording of other descriptions is not reused
    assert rank_descriptions(rankers(losses), losses, "sparrow", render, known=ranked["sparrow"][:2]) == ranked
    prompt = LearnablePrompt(tiny.tokenizer, tiny.text_encoder, num_tokens=2, prefix="adv")
    for slot, expected in enumerate(["sand", "lake", "snow", "sand"]):
        inputs = LossInputs(images=torch.zeros(1, 3, 4, 4), prompt=prompt, class_names=["sparrow"], prompt_slot=slot)
        single = _text(tiny, descriptions=[expected])(inputs).item()
        assert math.isclose(guidance(inputs).item(), single, rel_tol=1e-5)
    with pytest.raises(ConfigError, match="class 'duck' has no ranking"):
        guidance(LossInputs(images=torch.zeros(1, 3, 4, 4), prompt=prompt, class_names=["duck"]))
    gp = LossSet([WeightedTerm(build_loss("text_l2", descriptions=descriptions, target_mode="adversary"))])
    with pytest.raises(ConfigError, match="has none \\(GP\\)"):
        rank_descriptions(rankers(gp), gp, "sparrow", render)
    with pytest.raises(ConfigError, match="image guidance takes mean"):
        build_loss("image_cosine", target_images="x", target_mode="adversary")


def test_optimize_ranks_the_targets_before_training_and_records_them(tiny, tmp_path):
    from advprompts.config.presets import load_config
    from advprompts.optim.loop import optimize

    config = load_config("tiny-gap", ["optim.steps=1", "log.tensorboard=false", "prompt.seeds=[0, 1]",
                                      "losses=[{name: opposite_ce}, {name: text_l2, params: {descriptions: [snow, sand, "
                                      "lake], target_mode: adversary}}]"])
    result = optimize(config, tmp_path / "run", components=copy.deepcopy(tiny), task_model=_RedIsWater())
    ranking = json.loads((tmp_path / "run" / "targets.json").read_text())
    assert len(ranking) == 2 and all(sorted(r["description"] for r in v) == ["lake", "sand", "snow"]
                                     for v in ranking.values())
    assert all(r["adversarial_loss"] >= 0 for v in ranking.values() for r in v)
    assert len(result.prompts) == 4
    gp = load_config("tiny-gap", ["optim.steps=1", "log.tensorboard=false", "prompt.seeds=[0]",
                                  "losses=[{name: text_l2, params: {descriptions: [snow, sand], target_mode: adversary}}]"])
    with pytest.raises(ConfigError, match="has none \\(GP\\)"):
        optimize(gp, tmp_path / "gp", components=copy.deepcopy(tiny))
    assert not (tmp_path / "gp").exists()  # refused before anything is written

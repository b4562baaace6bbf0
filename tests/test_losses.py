"""Loss terms: registry, values on known inputs, warm-up, early stop, guidance targets."""

from __future__ import annotations

import math

import pytest
import torch

from advprompts.errors import ConfigError
from advprompts.losses import LossInputs, LossResources, LossSet, WeightedTerm, build_loss, list_losses, register_loss
from advprompts.losses.adversarial import ssi_loss
from advprompts.prompts import LearnablePrompt
from advprompts.tasks.models import list_task_models, load_task_model


class _Fixed(torch.nn.Module):
    """Returns fixed logits (or a dense map derived from the image) to test the terms exactly."""

    def __init__(self, logits=None):
        super().__init__()
        self.logits = logits

    def forward(self, images):
        return self.logits if self.logits is not None else images[:, :1] * 2 + 1


def _term(name, model=None, **params):
    term = build_loss(name, **params)
    term.setup(LossResources(task_model=model))
    return term


def test_registry():
    assert {"opposite_ce", "neg_ce", "uniform_ce", "neg_l1", "neg_ssi", "text_l2", "text_cosine",
            "image_cosine", "image_l2", "ti_denoise"} <= set(list_losses())
    with pytest.raises(ValueError, match="already registered"):
        register_loss("neg_ce")(type("Dup", (), {}))
    with pytest.raises(ConfigError, match="has no parameter 'bogus'"):
        build_loss("neg_ce", bogus=1)


def test_classification_terms_on_known_logits():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    labels = torch.tensor([0, 1])
    inputs = LossInputs(images=torch.zeros(2, 3, 4, 4), labels=labels)
    logp = torch.log_softmax(logits, -1)
    opp = _term("opposite_ce", _Fixed(logits))(inputs)
    assert math.isclose(opp.item(), -(logp[0, 1] + logp[1, 0]).item() / 2, rel_tol=1e-6)
    tgt = _term("opposite_ce", _Fixed(logits), target_class=1)(inputs)
    assert math.isclose(tgt.item(), -(logp[0, 1] + logp[1, 1]).item() / 2, rel_tol=1e-6)
    neg = _term("neg_ce", _Fixed(logits))(inputs)
    assert math.isclose(neg.item(), (logp[0, 0] + logp[1, 1]).item() / 2, rel_tol=1e-6)
    uni = _term("uniform_ce", _Fixed(logits))(inputs)
    assert math.isclose(uni.item(), -logp.mean().item(), rel_tol=1e-6)
    with pytest.raises(ConfigError, match="binary"):
        _term("opposite_ce", _Fixed(torch.zeros(2, 3)))(inputs)
    with pytest.raises(ConfigError, match="needs a task model"):
        _term("neg_ce")


def test_opposite_ce_margin_stops_pushing_fooled_images():
    # Sample 0 already fools the model (opposite CE 0.018), sample 1 does not (CE 2.13).
    logits = torch.tensor([[-2.0, 2.0], [-2.0, 0.0]], requires_grad=True)
    inputs = LossInputs(images=torch.zeros(2, 3, 4, 4), labels=torch.tensor([0, 1]))
    plain = _term("opposite_ce", _Fixed(logits))(inputs)
    value = _term("opposite_ce", _Fixed(logits), margin=0.1)(inputs)
    assert math.isclose(value.item(), plain.item(), rel_tol=1e-6)  # the logged value is the plain CE
    (grad,) = torch.autograd.grad(value, logits)
    (plain_grad,) = torch.autograd.grad(plain, logits)
    assert torch.equal(grad[0], torch.zeros(2)) and plain_grad[0].abs().sum() > 0.01
    assert torch.allclose(grad[1], plain_grad[1])
    with pytest.raises(ConfigError, match="margin=0"):
        build_loss("opposite_ce", margin=0)


def test_classification_terms_stop_once_the_model_is_fooled():
    # True-label CE: 2.13 (fooled, p(true) = 0.12) and 0.018 for the batch below; mean 1.07.
    logits = torch.tensor([[-2.0, 0.0], [0.0, -4.0]])
    inputs = LossInputs(images=torch.zeros(2, 3, 4, 4), labels=torch.tensor([0, 0]))
    for name in ("opposite_ce", "neg_ce", "uniform_ce"):
        assert not _term(name, _Fixed(logits)).should_stop()  # no threshold: never stops
        term = _term(name, _Fixed(logits), stop_threshold=1.0)
        assert not term.should_stop()                          # nothing seen yet
        term(inputs)
        assert math.isclose(term.last_task_loss, 1.0725, abs_tol=1e-3) and term.should_stop()
        strict = _term(name, _Fixed(logits), stop_threshold=2.0)
        strict(inputs)
        assert not strict.should_stop()


def test_dense_terms_and_early_stop():
    images = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    dense = images[:, :1] * 2 + 1  # the _Fixed model predicts exactly this
    term = _term("neg_l1", _Fixed(), stop_threshold=0.5)
    assert term(LossInputs(images=images, dense=dense)).item() == 0.0 and not term.should_stop()
    value = term(LossInputs(images=images, dense=dense + 0.75))
    assert math.isclose(value.item(), -0.75, rel_tol=1e-6) and term.should_stop()
    # SSI ignores scale and shift but not shape.
    assert ssi_loss(dense * 3 - 2, dense).item() < 1e-5
    assert ssi_loss(torch.rand(2, 1, 8, 8), dense).item() > 0.05


def test_warmup_and_weights_are_logged_separately():
    logits = torch.tensor([[2.0, 0.0]])
    model = _Fixed(logits)
    a, b = build_loss("neg_ce"), build_loss("uniform_ce")
    losses = LossSet([WeightedTerm(a, 2.0, 0), WeightedTerm(b, 1.0, warmup=3)])
    losses.setup(LossResources(task_model=model))
    inputs = LossInputs(images=torch.zeros(1, 3, 2, 2), labels=torch.tensor([0]), step=1)
    total, logs = losses(inputs)
    assert logs["uniform_ce"] == 0.0 and math.isclose(total.item(), 2 * logs["neg_ce"], rel_tol=1e-6)
    inputs.step = 3
    total, logs = losses(inputs)
    assert math.isclose(total.item(), 2 * logs["neg_ce"] + logs["uniform_ce"], rel_tol=1e-6)


def test_text_guidance_pulls_towards_the_descriptions(tiny):
    prompt = LearnablePrompt(tiny.tokenizer, tiny.text_encoder, num_tokens=3, prefix="t")
    term = build_loss("text_l2", descriptions=["snow", "sand"], renormalize=True)
    term.setup(LossResources(components=tiny))
    cos = build_loss("text_cosine", descriptions=["snow", "sand"])
    cos.setup(LossResources(components=tiny))
    opt = torch.optim.Adam(prompt.parameters(), lr=0.05)
    inputs = LossInputs(images=torch.zeros(1, 3, 4, 4), prompt=prompt)
    first = term(inputs).item()
    first_cos = cos(inputs).item()
    for _ in range(30):
        opt.zero_grad()
        term(inputs).backward()
        opt.step()
    assert term(inputs).item() < 0.5 * first and cos(inputs).item() < first_cos
    assert -1.0 <= first_cos <= 1.0


def test_text_guidance_per_class_targets(tiny):
    prompt = LearnablePrompt(tiny.tokenizer, tiny.text_encoder, num_tokens=3, prefix="k")
    per_class = build_loss("text_l2", per_class={"waterbird": ["snow"], "landbird": ["sand", "lake"]})
    per_class.setup(LossResources(components=tiny))
    for name, texts in (("waterbird", ["snow"]), ("landbird", ["sand", "lake"])):
        alone = build_loss("text_l2", descriptions=texts)
        alone.setup(LossResources(components=tiny))
        inputs = LossInputs(images=torch.zeros(1, 3, 4, 4), prompt=prompt, class_names=[name])
        assert math.isclose(per_class(inputs).item(), alone(inputs).item(), rel_tol=1e-5)
    assert per_class(LossInputs(images=torch.zeros(1, 3, 4, 4), prompt=prompt, class_names=["waterbird"])).item() \
        != per_class(LossInputs(images=torch.zeros(1, 3, 4, 4), prompt=prompt, class_names=["landbird"])).item()
    with pytest.raises(ConfigError, match="no target descriptions for class 'duck'"):
        per_class(LossInputs(images=torch.zeros(1, 3, 4, 4), prompt=prompt, class_names=["duck"]))
    with pytest.raises(ConfigError, match="per_class\\['landbird'\\] must be a non-empty list"):
        build_loss("text_l2", per_class={"landbird": []})


def test_text_guidance_spread_gives_each_prompt_its_own_description(tiny):
    prompt = LearnablePrompt(tiny.tokenizer, tiny.text_encoder, num_tokens=3, prefix="p")
    spread = build_loss("text_l2", per_class={"waterbird": ["snow", "sand", "lake"]}, spread=True)
    spread.setup(LossResources(components=tiny))
    for slot, text in enumerate(["snow", "sand", "lake", "snow"]):  # slot k -> description k mod 3
        alone = build_loss("text_l2", descriptions=[text])
        alone.setup(LossResources(components=tiny))
        inputs = LossInputs(images=torch.zeros(1, 3, 4, 4), prompt=prompt, class_names=["waterbird"], prompt_slot=slot)
        assert math.isclose(spread(inputs).item(), alone(inputs).item(), rel_tol=1e-5)
    mean = build_loss("text_l2", descriptions=["snow", "sand", "lake"])
    mean.setup(LossResources(components=tiny))
    inputs = LossInputs(images=torch.zeros(1, 3, 4, 4), prompt=prompt, class_names=["waterbird"], prompt_slot=1)
    assert not math.isclose(spread(inputs).item(), mean(inputs).item(), rel_tol=1e-3)


def test_optimize_passes_each_prompt_its_slot(tmp_path, tiny):
    """Prompt seeds [5, 9] are slots 0 and 1: with `spread` they are guided to different descriptions."""
    from advprompts.config.presets import read_yaml
    from advprompts.config.schema import parse_config
    from advprompts.optim.job import jobs_of as _jobs

    data = read_yaml("tiny-gap")
    data["prompt"]["seeds"] = [5, 9]
    config = parse_config(data)

    class Two:
        def __len__(self):
            return 4

        def __getitem__(self, i):
            return {"label": i % 2}

    jobs = _jobs(config, Two())
    assert [(j.label, j.seed, j.slot) for j in jobs] == [(0, 5, 0), (0, 9, 1), (1, 5, 0), (1, 9, 1)]


def test_image_guidance_and_ti_denoise(tiny):
    prompt = LearnablePrompt(tiny.tokenizer, tiny.text_encoder, num_tokens=2, prefix="i")
    img = build_loss("image_cosine", target_images="tiny-synth:target", clip="tiny", max_images=4)
    img.setup(LossResources(components=tiny))
    images = torch.rand(2, 3, 16, 16, requires_grad=True)
    value = img(LossInputs(images=images))
    value.backward()
    assert -1 <= value.item() <= 1 and images.grad.abs().sum() > 0
    ti = build_loss("ti_denoise", target_images="tiny-synth:target", batch_size=2, max_images=4)
    ti.setup(LossResources(components=tiny))
    loss = ti(LossInputs(images=images, prompt=prompt, generator=torch.Generator().manual_seed(0)))
    loss.backward()
    assert loss.item() > 0 and prompt.embeddings.grad.abs().sum() > 0


def test_image_direction_is_the_cosine_of_each_shift_to_the_domain_shift():
    term = build_loss("image_direction", target_images="tiny-synth:target", source_images="tiny-synth:train",
                      clip="tiny", max_images=4)
    term.setup(LossResources())
    unit = lambda x: torch.nn.functional.normalize(term.clip(x).float(), dim=-1)  # noqa: E731
    from advprompts.data.folder import load_images

    with torch.no_grad():
        domain = unit(load_images("tiny-synth:target", max_images=4)).mean(0) - \
            unit(load_images("tiny-synth:train", max_images=4)).mean(0)
    torch.manual_seed(0)
    sources, images = torch.rand(2, 3, 16, 16), torch.rand(2, 3, 16, 16, requires_grad=True)
    value = term(LossInputs(images=images, sources=sources))
    value.backward()
    with torch.no_grad():
        expected = -torch.nn.functional.cosine_similarity(unit(images) - unit(sources), domain[None]).mean()
    assert value.item() == pytest.approx(expected.item(), rel=1e-4) and images.grad.abs().sum() > 0
    # A generation identical to its source has not moved: no shift, score 0.
    assert term(LossInputs(images=sources, sources=sources)).item() == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ConfigError, match="needs the source images"):
        term(LossInputs(images=images))


@pytest.mark.parametrize("arch", ["small_cnn", "resnet18"])
def test_task_models_map_images_to_logits_and_load_weights(arch, tmp_path):
    torch.manual_seed(0)
    model = load_task_model(arch, 3)
    x = torch.rand(2, 3, 32, 32)
    assert model(x).shape == (2, 3)
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in model.net.state_dict().items()}, str(tmp_path / "w.safetensors"))
    torch.manual_seed(1)
    again = load_task_model(arch, 3, weights=tmp_path / "w.safetensors")
    assert torch.equal(model(x), again(x))
    assert set(list_task_models()) >= {"small_cnn", "resnet18", "resnet50", "vit_b_16"}


def test_label_clip_is_clips_zero_shot_cross_entropy():
    term = build_loss("label_clip", classes=["empty", "cat", "dog"], template="a photo of a {class}",
                      texts={"empty": "an empty photo"}, clip="tiny")
    term.setup(LossResources())
    assert term.texts == ["an empty photo", "a photo of a cat", "a photo of a dog"]
    torch.manual_seed(0)
    images = torch.rand(3, 3, 16, 16, requires_grad=True)
    labels = torch.tensor([0, 2, 1])
    value = term(LossInputs(images=images, labels=labels))
    value.backward()
    clip = term.clip
    with torch.no_grad():
        img = torch.nn.functional.normalize(clip(images), dim=-1)
        txt = torch.nn.functional.normalize(clip.embed_text(term.texts), dim=-1)
        logits = clip.clip.logit_scale.exp() * img @ txt.T
        expected = -torch.log_softmax(logits, -1)[torch.arange(3), labels].mean()
    assert value.item() == pytest.approx(expected.item(), rel=1e-5) and images.grad.abs().sum() > 0
    guidance = build_loss("image_cosine", target_images="tiny-synth:target", clip="tiny", max_images=2)
    guidance.setup(LossResources())
    assert guidance.clip is clip  # one frozen CLIP shared by both terms, not loaded twice
    with pytest.raises(ConfigError, match="needs labelled source samples"):
        term(LossInputs(images=images))
    with pytest.raises(ConfigError, match="has 3 classes but a sample is labelled 3"):
        term(LossInputs(images=images, labels=torch.tensor([0, 1, 3])))
    with pytest.raises(ConfigError, match="'bird', which is not among classes"):
        build_loss("label_clip", classes=["cat", "dog"], texts={"bird": "a bird"}, clip="tiny")

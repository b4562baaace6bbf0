"""The optimisation loop: AP lowers its loss, resume == uninterrupted, NaN stops, run folders."""

from __future__ import annotations

import copy
import csv

import pytest
import torch
from safetensors.torch import load_file

from advprompts.config.presets import load_config
from advprompts.data import collate, resolve_dataset
from advprompts.errors import NaNLossError, OutputExistsError
from advprompts.losses import LossInputs, LossTerm, register_loss
from advprompts.optimize import _sampler_kwargs, optimize
from advprompts.prompts import LearnablePrompt
from advprompts.sampler import Sampler
from advprompts.tasks.models import load_task_model


@register_loss("test_nan_after")
class _NaNAfter(LossTerm):
    """Finite until ``step``, then NaN (to exercise the NaN guard)."""

    def __init__(self, step: int = 2):
        self.at = step

    def __call__(self, inputs: LossInputs) -> torch.Tensor:
        value = inputs.images.mean()
        return value * float("nan") if inputs.step >= self.at else value


def _task():
    torch.manual_seed(0)
    return load_task_model("small_cnn", 2)


class _MeanColour(torch.nn.Module):
    """A linear classifier on the mean colour: sensitive to what a prompt can change in tiny images."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.lin = torch.nn.Linear(3, 2)
        with torch.no_grad():
            self.lin.weight.mul_(30)

    def forward(self, x):
        return self.lin(x.mean((2, 3)) - 0.5)


def _prompt_sensitive(comps):
    """Random tiny UNets barely listen to the text; amplify cross-attention so prompts matter."""
    with torch.no_grad():
        for name, module in comps.unet.named_modules():
            if name.endswith("attn2.to_out.0"):
                module.weight.mul_(30)
    return comps


def _eval_loss(config, comps, task, embeddings):
    """Opposite-class CE of a fixed batch of generations (fixed noise) for given embeddings."""
    comps = copy.deepcopy(comps)
    prompt = LearnablePrompt(comps.tokenizer, comps.text_encoder, num_tokens=embeddings.shape[0], prefix="ev",
                             template=config.prompt.template, embeddings=embeddings)
    ds = resolve_dataset("tiny-synth:train", image_size=16)
    batch = collate([ds[i] for i in range(8)])
    names = [ds.class_names[y] for y in batch["label"].tolist()]
    out = Sampler(comps)([prompt.text(n) for n in names], generator=torch.Generator().manual_seed(123), grad=False,
                         **_sampler_kwargs(config, batch, torch.device("cpu")))
    return torch.nn.functional.cross_entropy(task(out.images), 1 - batch["label"]).item()


def test_ap_lowers_its_adversarial_loss(_tiny_session, tmp_path):
    config = load_config("tiny-ap", ["optim.steps=12", "optim.lr=0.1", "optim.batch_size=4",
                                     "sampler.guidance_scale=7", "prompt.template='{prompt}'",
                                     "log.sample_every=6", "log.checkpoint_every=6"])
    base = _prompt_sensitive(copy.deepcopy(_tiny_session["txt2img"]).freeze())
    task = _MeanColour()
    result = optimize(config, tmp_path / "run", components=copy.deepcopy(base), task_model=task)
    learned = LearnablePrompt.load(result.prompt_files[0], copy.deepcopy(base.tokenizer),
                                   copy.deepcopy(base.text_encoder), prefix="x").embeddings.detach()
    init = LearnablePrompt(copy.deepcopy(base.tokenizer), copy.deepcopy(base.text_encoder),
                           num_tokens=2, init="vocab-gaussian", seed=0).embeddings.detach()
    before = _eval_loss(config, base, task, init)
    after = _eval_loss(config, base, task, learned)
    print(f"AP opposite_ce on a fixed batch: {before:.4f} -> {after:.4f}")
    assert after < before - 0.05
    rows = list(csv.DictReader(open(tmp_path / "run" / "log.csv")))
    assert [int(r["step"]) for r in rows] == list(range(12))
    assert set(rows[0]) == {"prompt", "step", "opposite_ce", "grad_opposite_ce", "total", "seconds"}
    assert all(float(r["grad_opposite_ce"]) > 0 for r in rows)
    assert (tmp_path / "run" / "samples" / "s0" / "step_000012.png").is_file()
    assert (tmp_path / "run" / "config.yaml").is_file() and list((tmp_path / "run" / "tensorboard").iterdir())


def test_resume_equals_uninterrupted(_tiny_session, tmp_path):
    config = load_config("tiny-ap", ["optim.steps=5", "log.checkpoint_every=2", "log.tensorboard=false",
                                     "optim.optimizer=adamw", "optim.weight_decay=0.01", "prompt.seeds=[0,1]"])
    comps = lambda: copy.deepcopy(_tiny_session["txt2img"]).freeze()  # noqa: E731
    full = optimize(config, tmp_path / "full", components=comps(), task_model=_task())

    def crash(key, step, values):
        if key == "s1" and step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        optimize(config, tmp_path / "resumed", components=comps(), task_model=_task(), on_step=crash)
    with pytest.raises(OutputExistsError, match="--resume"):
        optimize(config, tmp_path / "resumed", components=comps(), task_model=_task())
    resumed = optimize(config, tmp_path / "resumed", resume=True, components=comps(), task_model=_task())
    for a, b in zip(full.prompt_files, resumed.prompt_files):
        ea, eb = (load_file(str(f)) for f in (a, b))
        ea, eb = ea[f"<ap-{a.stem[7:]}>"], eb[f"<ap-{b.stem[7:]}>"]
        assert torch.equal(ea, eb), f"{a.name}: max diff {(ea - eb).abs().max()}"
    rows = list(csv.DictReader(open(tmp_path / "resumed" / "log.csv")))
    assert [(r["prompt"], int(r["step"])) for r in rows] == [(p, s) for p in ("s0", "s1") for s in range(5)]
    other = load_config("tiny-ap", ["optim.steps=6"])
    with pytest.raises(OutputExistsError, match="different run"):
        optimize(other, tmp_path / "resumed", resume=True, components=comps(), task_model=_task())


def test_nan_loss_stops_and_keeps_last_checkpoint(_tiny_session, tmp_path):
    config = load_config("tiny-ap", ["optim.steps=6", "log.checkpoint_every=2", "log.tensorboard=false",
                                     "losses=[{name: test_nan_after, params: {step: 3}}]"])
    with pytest.raises(NaNLossError, match="step 3"):
        optimize(config, tmp_path / "run", components=copy.deepcopy(_tiny_session["txt2img"]).freeze())
    state = torch.load(tmp_path / "run" / "checkpoints" / "s0.pt", weights_only=False)
    assert state["step"] == 2 and torch.isfinite(state["embeddings"]).all()
    assert not (tmp_path / "run" / "prompt_s0.safetensors").exists()


def test_optimize_hands_the_source_images_to_directional_guidance(_tiny_session, tmp_path):
    config = load_config("tiny-gap", ["optim.steps=2", "log.tensorboard=false", "losses=[{name: image_direction, "
                                      "params: {target_images: 'tiny-synth:target', source_images: 'tiny-synth:train', "
                                      "clip: tiny, max_images: 4}}]"])
    optimize(config, tmp_path / "dir", components=copy.deepcopy(_tiny_session["txt2img"]).freeze())
    rows = list(csv.DictReader(open(tmp_path / "dir" / "log.csv")))
    assert len(rows) == 4 and all(-1 <= float(r["image_direction"]) <= 1 and float(r["image_direction"]) != 0
                                  for r in rows)


def test_gap_preset_runs_guidance_with_warmup(_tiny_session, tmp_path):
    config = load_config("tiny-gap", ["optim.steps=2"])
    result = optimize(config, tmp_path / "gap", components=copy.deepcopy(_tiny_session["txt2img"]).freeze())
    assert [p.key for p in result.prompts] == ["c0-s0", "c1-s0"]
    rows = list(csv.DictReader(open(tmp_path / "gap" / "log.csv")))
    assert float(rows[0]["opposite_ce"]) == 0.0 and float(rows[1]["opposite_ce"]) > 0  # warm-up of 1 step
    assert all(float(r["text_l2"]) > 0 and float(r["image_cosine"]) < 0 for r in rows)
    # The two classes' prompts of one seed start from different inits (with a negligible learning rate
    # prompts from one init stay within 1e-5 of each other).
    still = optimize(load_config("tiny-gap", ["optim.steps=1", "optim.lr=1e-6", "log.tensorboard=false"]),
                     tmp_path / "still", components=copy.deepcopy(_tiny_session["txt2img"]).freeze())
    a, b = (next(iter(load_file(f).values())) for f in still.prompt_files)
    assert (a - b).abs().max() > 1e-3


def test_gradient_accumulation_runs_every_micro_batch(_tiny_session, tmp_path):
    calls = []
    base = ["optim.steps=2", "log.tensorboard=false", "log.sample_every=0"]
    one = optimize(load_config("tiny-ap", base), tmp_path / "a",
                   components=copy.deepcopy(_tiny_session["txt2img"]).freeze(), task_model=_task())
    two = optimize(load_config("tiny-ap", base + ["optim.grad_accum=2"]), tmp_path / "b",
                   components=copy.deepcopy(_tiny_session["txt2img"]).freeze(), task_model=_task(),
                   on_step=lambda key, step, values: calls.append(step))
    assert len(calls) == 2  # one optimiser step per accumulated step
    from safetensors.torch import load_file

    a, b = (next(iter(load_file(r.prompt_files[0]).values())) for r in (one, two))
    assert torch.isfinite(b).all() and not torch.equal(a, b)  # the second micro-batch changed the update


def test_class_words_fill_the_template_while_optimising(_tiny_session, tmp_path, monkeypatch):
    from advprompts.sampler import Sampler

    seen, call = [], Sampler.__call__

    def spy(self, prompt, **kw):
        seen.extend(prompt)
        return call(self, prompt, **kw)

    monkeypatch.setattr(Sampler, "__call__", spy)
    config = load_config("tiny-ap", ["optim.steps=2", "log.tensorboard=false", "prompt.per_class=true",
                                     "prompt.template='a {class} {prompt}'", "prompt.class_words={disc: circle}"])
    optimize(config, tmp_path / "words", components=copy.deepcopy(_tiny_session["txt2img"]).freeze())
    words = {p.split(" <")[0] for p in seen}
    assert words == {"a square", "a circle"}, words

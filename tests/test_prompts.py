"""Learnable prompts: only placeholder rows learn, inits, TI round trip through diffusers."""

from __future__ import annotations

import copy

import pytest
import torch
from diffusers import StableDiffusionPipeline

from advprompts.errors import ConfigError, DataError
from advprompts.prompts import LearnablePrompt
from advprompts.sampler import Sampler
from advprompts.text_encoding import encode_text, pool_text
from conftest import source_batch


def _snapshot(comps):
    return {name: {k: v.clone() for k, v in net.state_dict().items()}
            for name, net in (("text_encoder", comps.text_encoder), ("unet", comps.unet), ("vae", comps.vae))}


def test_only_placeholder_rows_learn_and_all_else_is_bit_identical(tiny):
    prompt = LearnablePrompt(tiny.tokenizer, tiny.text_encoder, num_tokens=3, prefix="ap", seed=1)
    before = _snapshot(tiny)
    start = prompt.embeddings.detach().clone()
    opt = torch.optim.AdamW(prompt.parameters(), lr=1e-2, weight_decay=0.1)
    images, masks = source_batch()
    for step in range(2):
        out = Sampler(tiny)([prompt.text(template="a photo of {prompt}")] * 2, source=images, object_mask=masks,
                            paste=True, num_steps=2, strength=0.8, generator=torch.Generator().manual_seed(step))
        loss = out.images.square().mean()
        opt.zero_grad()
        loss.backward()
        grads = [(n, p) for net in (tiny.text_encoder, tiny.unet, tiny.vae)
                 for n, p in net.named_parameters() if p.grad is not None]
        assert grads == [], f"frozen weights received gradients: {[n for n, _ in grads][:3]}"
        assert prompt.embeddings.grad.abs().sum() > 0
        opt.step()
    assert not torch.equal(prompt.embeddings.detach(), start)
    after = _snapshot(tiny)
    for net, state in before.items():
        for key, value in state.items():
            assert torch.equal(value, after[net][key]), f"{net}.{key} changed"


def test_inits_are_seeded_and_distinct(tiny):
    tok, enc = tiny.tokenizer, tiny.text_encoder
    a = LearnablePrompt(tok, enc, num_tokens=4, prefix="a", init="vocab-gaussian", seed=0)
    b = LearnablePrompt(tok, enc, num_tokens=4, prefix="b", init="vocab-gaussian", seed=0)
    c = LearnablePrompt(tok, enc, num_tokens=4, prefix="c", init="vocab-gaussian", seed=1)
    assert torch.equal(a.embeddings, b.embeddings) and not torch.equal(a.embeddings, c.embeddings)
    vocab = enc.get_input_embeddings().weight[: tok.vocab_size]
    cov = LearnablePrompt(tok, enc, num_tokens=64, prefix="cov", init="vocab-gaussian-cov", seed=0)
    # 64 draws of a Gaussian fitted to the vocabulary: their mean lies near the vocabulary mean.
    assert (cov.embeddings.mean(0) - vocab.mean(0)).abs().max() < 4 * vocab.std(0).max() / 8
    rnd = LearnablePrompt(tok, enc, num_tokens=3, prefix="r", init="random", seed=2)
    assert all(any(torch.equal(row, v) for v in vocab) for row in rnd.embeddings.detach())
    word = LearnablePrompt(tok, enc, num_tokens=2, prefix="w", init="word:k", seed=0)
    k_row = vocab[tok("k", add_special_tokens=False).input_ids[0]]
    assert torch.equal(word.embeddings.detach(), k_row.expand(2, -1))
    with pytest.raises(ConfigError, match="init"):
        LearnablePrompt(tok, enc, prefix="bad", init="gaussian")
    again = LearnablePrompt(tok, enc, num_tokens=4, prefix="a", seed=3)  # same prefix: reuses the rows
    assert again.token_ids == a.token_ids and len(tok) == enc.get_input_embeddings().weight.shape[0]
    with pytest.raises(ConfigError, match="already exists"):
        LearnablePrompt(tok, enc, num_tokens=2, prefix="a")



def test_decode_nearest_returns_source_tokens(tiny):
    tok, enc = tiny.tokenizer, tiny.text_encoder
    prompt = LearnablePrompt(tok, enc, num_tokens=2, prefix="d")
    ids = tok.convert_tokens_to_ids(["q", "z</w>"])
    with torch.no_grad():
        prompt.embeddings.copy_(enc.get_input_embeddings().weight[ids])
    assert [row[0] for row in prompt.decode_nearest(k=1)] == ["q", "z</w>"]
    # Far from every vocabulary row, a synced row is nearest to its own placeholder unless excluded.
    with torch.no_grad():
        prompt.embeddings.copy_(torch.randn(2, prompt.embeddings.shape[1], generator=torch.Generator().manual_seed(0)))
    prompt.sync_rows()
    assert [row[0] for row in prompt.decode_nearest(k=1, exclude_placeholders=False)] == ["<d-0>", "<d-1>"]
    assert not any(t.startswith("<d-") for row in prompt.decode_nearest(k=3) for t in row)


def test_text_and_pooling(tiny):
    prompt = LearnablePrompt(tiny.tokenizer, tiny.text_encoder, num_tokens=2, template="a photo of a {class} {prompt}")
    assert prompt.text("bird") == "a photo of a bird <ap-0> <ap-1>"
    assert prompt.diffusers_text("bird") == "a photo of a bird <ap>"
    hidden, ids = encode_text(tiny.tokenizer, tiny.text_encoder, [prompt.text("bird"), "a"])
    eos = pool_text(hidden, ids, tiny.tokenizer.eos_token_id, "eos")
    # "a" -> [bos, a</w>, eos]: the eos state sits at position 2.
    assert torch.equal(eos[1], hidden[1, 2])
    mean = pool_text(hidden, ids, tiny.tokenizer.eos_token_id, "mean")
    torch.testing.assert_close(mean[1], hidden[1, :3].mean(0))


def test_textual_inversion_round_trip_through_diffusers(_tiny_session, tmp_path):
    ours = copy.deepcopy(_tiny_session["txt2img"]).freeze()
    prompt = LearnablePrompt(ours.tokenizer, ours.text_encoder, num_tokens=3, prefix="ap", seed=5,
                             template="a photo of a {class} {prompt}", class_name="bird")
    with torch.no_grad():  # pretend it was learned: move far from the init
        prompt.embeddings.mul_(3.0).add_(0.5)
    path = prompt.save(tmp_path / "prompt.safetensors")

    theirs = copy.deepcopy(_tiny_session["txt2img"])
    pipe = StableDiffusionPipeline(vae=theirs.vae, text_encoder=theirs.text_encoder, tokenizer=theirs.tokenizer,
                                   unet=theirs.unet, scheduler=theirs.scheduler, safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    pipe.load_textual_inversion(str(path), token=prompt.name)
    ref = pipe(prompt.diffusers_text(), num_inference_steps=3, guidance_scale=6.0, height=16, width=16,
               generator=torch.Generator().manual_seed(11), output_type="pt").images
    out = Sampler(ours)([prompt.text()], num_steps=3, guidance_scale=6.0, height=16, width=16,
                        generator=torch.Generator().manual_seed(11), grad=False)
    assert (out.images - ref).abs().max() < 1e-5
    # Without the learned rows the image differs, so the equality above is about the prompt.
    plain = pipe("a photo of a bird", num_inference_steps=3, guidance_scale=6.0, height=16, width=16,
                 generator=torch.Generator().manual_seed(11), output_type="pt").images
    assert (plain - ref).abs().max() > 1e-3

    again = copy.deepcopy(_tiny_session["txt2img"])
    loaded = LearnablePrompt.load(path, again.tokenizer, again.text_encoder)
    assert torch.equal(loaded.embeddings, prompt.embeddings)
    assert loaded.template == prompt.template and loaded.class_name == "bird"


def test_load_rejects_bad_files(tiny, tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        LearnablePrompt.load(tmp_path / "nope.safetensors", tiny.tokenizer, tiny.text_encoder)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(DataError, match="not a readable"):
        LearnablePrompt.load(bad, tiny.tokenizer, tiny.text_encoder)

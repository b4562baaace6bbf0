"""Differential tests: under no_grad in float32 the sampler reproduces diffusers' pipelines."""

from __future__ import annotations

import copy
import logging

import pytest
import torch
from diffusers import (
    StableDiffusionControlNetPipeline,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionInpaintPipeline,
    StableDiffusionPipeline,
)

from advprompts.errors import ConfigError
from advprompts.sampler import Sampler, start_step
from conftest import source_batch

log = logging.getLogger(__name__)
TOL = 1e-4
PROMPTS = ["a photo of a bird", "a red cat on grass"]


def _pipe(cls, comps, **extra):
    kwargs = dict(vae=comps.vae, text_encoder=comps.text_encoder, tokenizer=comps.tokenizer, unet=comps.unet,
                  scheduler=copy.deepcopy(comps.scheduler), safety_checker=None, feature_extractor=None,
                  requires_safety_checker=False, **extra)
    pipe = cls(**kwargs)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _compare(name, ours, theirs):
    diff = (ours - theirs).abs().max().item()
    log.warning("max abs diff vs diffusers [%s]: %.3g", name, diff)
    print(f"DIFF {name}: {diff:.3g}")
    assert theirs.std() > 1e-3, "degenerate reference output would make the comparison vacuous"
    assert diff < TOL, f"{name}: max abs diff {diff}"
    return diff


@pytest.mark.parametrize("eta,guidance", [(0.0, 6.0), (0.7, 6.0), (0.0, 1.0)])
def test_txt2img_matches_pipeline(tiny, eta, guidance):
    pipe = _pipe(StableDiffusionPipeline, tiny)
    ref = pipe(PROMPTS, num_inference_steps=3, guidance_scale=guidance, eta=eta, height=16, width=16,
               generator=torch.Generator().manual_seed(7), output_type="pt").images
    out = Sampler(tiny)(PROMPTS, num_steps=3, guidance_scale=guidance, eta=eta, height=16, width=16,
                        generator=torch.Generator().manual_seed(7), grad=False)
    assert out.mode == "txt2img" and len(out.timesteps) == 3
    _compare(f"txt2img eta={eta} cfg={guidance}", out.images, ref)


@pytest.mark.parametrize("strength,eta", [(0.6, 0.5), (1.0, 0.0)])
def test_img2img_matches_pipeline(tiny, strength, eta):
    images, _ = source_batch()
    pipe = _pipe(StableDiffusionImg2ImgPipeline, tiny)
    ref = pipe(PROMPTS, image=images, strength=strength, num_inference_steps=5, guidance_scale=5.0, eta=eta,
               generator=torch.Generator().manual_seed(3), output_type="pt").images
    out = Sampler(tiny)(PROMPTS, source=images, strength=strength, num_steps=5, guidance_scale=5.0, eta=eta,
                        generator=torch.Generator().manual_seed(3), grad=False)
    assert len(out.timesteps) == 5 - start_step(5, strength)
    _compare(f"img2img strength={strength} eta={eta}", out.images, ref)


@pytest.mark.parametrize("strength,eta", [(1.0, 0.0), (0.7, 0.5)])
def test_inpaint_4ch_matches_pipeline(tiny, strength, eta):
    images, object_mask = source_batch()
    pipe = _pipe(StableDiffusionInpaintPipeline, tiny)
    ref = pipe(PROMPTS, image=images, mask_image=1 - object_mask, strength=strength, num_inference_steps=4,
               guidance_scale=5.0, eta=eta, height=16, width=16, generator=torch.Generator().manual_seed(1),
               output_type="pt").images
    out = Sampler(tiny)(PROMPTS, source=images, object_mask=object_mask, strength=strength, num_steps=4,
                        guidance_scale=5.0, eta=eta, generator=torch.Generator().manual_seed(1), grad=False)
    assert out.mode == "inpaint"
    _compare(f"inpaint-4ch strength={strength} eta={eta}", out.images, ref)


@pytest.mark.parametrize("strength,eta", [(1.0, 0.5), (0.7, 0.0)])
def test_inpaint_9ch_matches_pipeline(tiny_inpaint9, strength, eta):
    images, object_mask = source_batch()
    pipe = _pipe(StableDiffusionInpaintPipeline, tiny_inpaint9)
    ref = pipe(PROMPTS, image=images, mask_image=1 - object_mask, strength=strength, num_inference_steps=4,
               guidance_scale=5.0, eta=eta, height=16, width=16, generator=torch.Generator().manual_seed(2),
               output_type="pt").images
    out = Sampler(tiny_inpaint9)(PROMPTS, source=images, object_mask=object_mask, strength=strength, num_steps=4,
                                 guidance_scale=5.0, eta=eta, generator=torch.Generator().manual_seed(2), grad=False)
    assert out.mode == "inpaint9"
    _compare(f"inpaint-9ch strength={strength} eta={eta}", out.images, ref)


def test_controlnet_matches_pipeline(tiny_controlnet):
    cond, _ = source_batch(seed=5)
    comps = tiny_controlnet
    pipe = _pipe(StableDiffusionControlNetPipeline, comps, controlnet=comps.controlnet)
    ref = pipe(PROMPTS, image=cond, num_inference_steps=3, guidance_scale=5.0, controlnet_conditioning_scale=0.8,
               height=16, width=16, generator=torch.Generator().manual_seed(4), output_type="pt").images
    sampler = Sampler(comps)
    out = sampler(PROMPTS, conditioning=cond, conditioning_scale=0.8, num_steps=3, guidance_scale=5.0,
                  generator=torch.Generator().manual_seed(4), grad=False)
    _compare("controlnet scale=0.8", out.images, ref)
    # The ControlNet must matter, or the comparison above would not test it.
    off = sampler(PROMPTS, conditioning=cond, conditioning_scale=0.0, num_steps=3, guidance_scale=5.0,
                  generator=torch.Generator().manual_seed(4), grad=False)
    assert (off.images - out.images).abs().max() > 1e-3


def test_paste_keeps_object_pixels(tiny):
    images, object_mask = source_batch()
    out = Sampler(tiny)(PROMPTS, source=images, object_mask=object_mask, paste=True, num_steps=2,
                        generator=torch.Generator().manual_seed(0), grad=False)
    inside = object_mask.bool().expand_as(images)
    assert torch.equal(out.images[inside], images[inside])
    assert torch.equal(out.images[~inside], out.decoded[~inside])


@pytest.mark.parametrize("latent_mask", ["nearest", "cover"])
def test_latent_mask_cover_keeps_every_latent_cell_the_object_touches(tiny, latent_mask):
    """A one-pixel object off the nearest-sampling grid: "nearest" repaints its latent cell (as
    diffusers does), "cover" keeps it; the kept cells end equal to the source latents whatever the prompt."""
    images, _ = source_batch()
    f = tiny.vae_scale_factor
    mask = torch.zeros(2, 1, 16, 16)
    mask[:, :, 2 * f + 1, 3 * f + 1] = 1.0  # inside latent cell (2, 3), not its top-left pixel
    outs = [Sampler(tiny)([p] * 2, source=images, object_mask=mask, latent_mask=latent_mask, num_steps=2,
                          guidance_scale=1.0, generator=torch.Generator().manual_seed(0), grad=False).latents
            for p in ("a red square", "a green circle")]
    same = (outs[0] - outs[1]).abs().amax(dim=(0, 1)) < 1e-6  # [h, w]: cells the prompt did not change
    assert bool(same[2, 3]) == (latent_mask == "cover")
    assert int(same.sum()) == (1 if latent_mask == "cover" else 0)


def test_rollout_is_differentiable_wrt_prompt_embeddings(tiny):
    from advprompts.prompts import LearnablePrompt

    prompt = LearnablePrompt(tiny.tokenizer, tiny.text_encoder, num_tokens=2, seed=0)
    images, object_mask = source_batch()
    for ckpt in (True, False):
        prompt.embeddings.grad = None
        out = Sampler(tiny, gradient_checkpointing=ckpt)(
            [prompt.text()] * 2, source=images, object_mask=object_mask, paste=True, num_steps=2, strength=0.9,
            generator=torch.Generator().manual_seed(0))
        out.images.mean().backward()
        grads = prompt.embeddings.grad.clone()
        assert grads.abs().sum() > 0 and torch.isfinite(grads).all()
        if ckpt:
            with_ckpt = grads
    torch.testing.assert_close(with_ckpt, grads, rtol=1e-5, atol=1e-8)


def test_check_inputs_rejects_bad_arguments(tiny, tiny_inpaint9):
    images, object_mask = source_batch()
    sampler = Sampler(tiny)
    with pytest.raises(ConfigError, match="strength"):
        sampler(PROMPTS, source=images, strength=0.0, grad=False)
    with pytest.raises(ConfigError, match="object_mask"):
        sampler(PROMPTS, object_mask=object_mask, grad=False)
    with pytest.raises(ConfigError, match="source has shape"):
        sampler(PROMPTS, source=images[:1], grad=False)
    with pytest.raises(ConfigError, match="inpainting UNet"):
        Sampler(tiny_inpaint9)(PROMPTS, grad=False)
    with pytest.raises(ConfigError, match="latent_mask='dilate'"):
        sampler(PROMPTS, source=images, object_mask=object_mask, latent_mask="dilate", grad=False)


def test_bf16_autocast_stays_close_to_float32_and_keeps_gradients(tiny):
    from advprompts.prompts import LearnablePrompt

    prompt = LearnablePrompt(tiny.tokenizer, tiny.text_encoder, num_tokens=2, seed=0)
    kw = dict(num_steps=2, guidance_scale=5.0, height=16, width=16)
    ref = Sampler(tiny)([prompt.text()], generator=torch.Generator().manual_seed(0), grad=False, **kw).images
    out = Sampler(tiny, autocast_dtype=torch.bfloat16)([prompt.text()], generator=torch.Generator().manual_seed(0),
                                                        grad=True, **kw).images
    assert out.dtype == torch.float32 or out.dtype == torch.bfloat16
    assert 0 < (out.float() - ref).abs().max() < 0.1  # bf16 rounding, not a different image
    out.float().mean().backward()
    assert prompt.embeddings.grad is not None and torch.isfinite(prompt.embeddings.grad).all()
    assert prompt.embeddings.grad.abs().sum() > 0

"""The shipped models as a user of diffusers / transformers loads them: plain ``from_pretrained``
(no dtype), a few steps at the native 64 px, the same images as advprompts with the same seed."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from advprompts.zoo.paths import clip_path, inpaint_unet_subfolder, sd_path, zoo_dir

shipped = pytest.mark.skipif(not (zoo_dir() / "manifest.json").exists(), reason="no embedded weights in this tree")
PROMPT = "a photo of a duck in the desert"


@shipped
def test_stable_diffusion_pipeline_loads_without_dtype_and_equals_advprompts(tmp_path):
    from diffusers import StableDiffusionPipeline

    from advprompts.config.schema import ModelConfig, SamplerConfig
    from advprompts.generate import generate_text2img

    pipe = StableDiffusionPipeline.from_pretrained(sd_path())  # fp16 weights, float32 on load
    assert {m.dtype for m in (pipe.text_encoder, pipe.unet, pipe.vae)} == {torch.float32}
    pipe.set_progress_bar_config(disable=True)
    ref = pipe(PROMPT, num_images_per_prompt=2, num_inference_steps=3, guidance_scale=6.0,
               generator=torch.Generator().manual_seed(0)).images
    assert [im.size for im in ref] == [(64, 64)] * 2
    generate_text2img(ModelConfig(diffusion="embedded", device="cpu"), PROMPT, tmp_path / "t2i", num_images=2,
                      sampler=SamplerConfig(num_steps=3, guidance_scale=6.0, conditioning="none"), progress=False)
    for k, image in enumerate(ref):
        ours = np.asarray(Image.open(tmp_path / "t2i" / f"images/{k:05d}.png")).astype(int)
        assert np.abs(ours - np.asarray(image).astype(int)).max() == 0, f"image {k} differs"


@shipped
@pytest.mark.skipif(not (sd_path() / inpaint_unet_subfolder()).is_dir(), reason="zoo built without unet_inpaint")
def test_inpaint_pipeline_with_the_inpainting_unet_equals_the_sampler():
    from diffusers import StableDiffusionInpaintPipeline, UNet2DConditionModel

    from advprompts.models.loading import load_components
    from advprompts.sampler import Sampler

    # sd/ is one pipeline folder: the inpainting pipeline swaps in its 9-channel UNet.
    unet = UNet2DConditionModel.from_pretrained(sd_path(), subfolder=inpaint_unet_subfolder())
    pipe = StableDiffusionInpaintPipeline.from_pretrained(sd_path(), unet=unet)
    pipe.set_progress_bar_config(disable=True)
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    keep = np.zeros((64, 64), dtype=np.uint8)
    keep[20:44, 20:44] = 255  # the kept object; diffusers' mask marks what to repaint
    ref = pipe(PROMPT, image=Image.fromarray(pixels), mask_image=Image.fromarray(255 - keep), num_inference_steps=3,
               guidance_scale=6.0, generator=torch.Generator().manual_seed(1), output_type="pt").images
    assert ref.shape == (1, 3, 64, 64) and ref.std() > 1e-3
    source = torch.from_numpy(pixels).permute(2, 0, 1)[None].float() / 255
    object_mask = torch.from_numpy(keep)[None, None].float() / 255
    out = Sampler(load_components("embedded-inpaint", scheduler="native"))(
        [PROMPT], source=source, object_mask=object_mask, num_steps=3, guidance_scale=6.0,
        generator=torch.Generator().manual_seed(1), grad=False)
    assert out.mode == "inpaint9"
    assert (out.images - ref).abs().max() < 1e-4


@shipped
def test_clip_model_loads_without_dtype_and_matches_the_guidance_clip():
    from transformers import CLIPModel, CLIPProcessor, CLIPTextModel

    from advprompts.models.loading import load_clip

    model = CLIPModel.from_pretrained(clip_path()).eval()
    assert model.dtype == torch.float32
    processor = CLIPProcessor.from_pretrained(clip_path())
    texts = ["a photo of a duck", "a photo of a car"]
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    inputs = processor(text=texts, images=image, return_tensors="pt", padding="max_length")
    with torch.no_grad():
        out = model(**inputs)
    assert out.logits_per_image.shape == (1, 2) and torch.isfinite(out.logits_per_image).all()
    image_emb, text_emb = out.image_embeds, out.text_embeds  # projected (normalised) embeddings
    # advprompts' guidance CLIP (run in the stored float16) embeds alike.
    ours = load_clip("embedded-clip")
    pix = torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].float() / 255
    cos = torch.nn.functional.cosine_similarity
    assert cos(ours(pix).float(), image_emb).item() > 0.995
    assert (cos(ours.embed_text(texts).float(), text_emb) > 0.995).all()
    # Its text tower is the pipeline's text encoder (same weights, same hidden states).
    text_encoder = CLIPTextModel.from_pretrained(sd_path(), subfolder="text_encoder").eval()
    with torch.no_grad():
        a = text_encoder(input_ids=inputs.input_ids).last_hidden_state
        b = model.text_model(input_ids=inputs.input_ids).last_hidden_state
    assert torch.equal(a, b)

"""Plain text-to-image generation, identical to diffusers' ``StableDiffusionPipeline``."""

from __future__ import annotations

from pathlib import Path

import torch

from advprompts.config.schema import ModelConfig, SamplerConfig
from advprompts.fsio import atomic_write_text
from advprompts.generate.output import GenerateResult, Rows, Writer, to_uint8
from advprompts.rundir import prepare_run_dir
from advprompts.runlock import releases_run_dir
from advprompts.shards import launch_device, launch_state, open_run, resolve_shard


TEXT2IMG_SAMPLER = SamplerConfig(num_steps=15, guidance_scale=7.0, conditioning="none", paste=False)


@releases_run_dir("out")
def generate_text2img(model: ModelConfig | str, prompt: str, out: str | Path, *, num_images: int = 1,
                      sampler: SamplerConfig = TEXT2IMG_SAMPLER, seed: int = 0, batch_size: int = 4,
                      shard: str | tuple[int, int] | None = None, overwrite: bool = False, components=None,
                      progress: bool = True) -> GenerateResult:
    """Plain text-to-image, identical to ``StableDiffusionPipeline.from_pretrained(model.diffusion)(prompt,
    num_images_per_prompt=num_images, num_inference_steps=sampler.num_steps,
    guidance_scale=sampler.guidance_scale, negative_prompt=sampler.negative_prompt,
    generator=torch.Generator().manual_seed(seed))``, saved in order as ``images/00000.png ...``.

    ``model``: a :class:`ModelConfig` or its ``diffusion`` spec alone (embedded | tiny | folder | hub id);
    ``model.device``: ``auto`` (CUDA when visible; under a launcher this process's GPU), ``cpu`` or
    ``cuda[:N]``. The initial latents are drawn on the CPU whatever the device, so a GPU differs only in
    float rounding. ``sampler``: steps, CFG scale, negative prompt and ``image_size`` (square; default the
    UNet's sample size); the source-only fields (SDEdit strength, conditioning, DDIM eta) must keep the
    values that starting from noise means.

    The pipeline draws all initial latents at once from one generator; they are drawn the same way
    here and sliced per batch / shard / process (its scheduler draws nothing more at eta = 0).
    """
    from tqdm.auto import tqdm

    from advprompts.errors import ConfigError
    from advprompts.models.loading import load_components
    from advprompts.sampler import Sampler

    model = ModelConfig(diffusion=model) if isinstance(model, str) else model
    if num_images < 1:
        raise ConfigError(f"num_images={num_images} invalid; it must be >= 1")
    if sampler.strength != 1.0 or sampler.eta != 0.0 or sampler.conditioning not in ("none", "inpaint"):
        raise ConfigError("text-to-image starts from noise with DDIM eta 0: leave sampler.strength at 1, eta at 0 "
                          "and conditioning unset (SDEdit and ControlNet need --source)")
    if model.autocast != "none" or model.controlnet is not None:
        raise ConfigError("model.autocast / model.controlnet apply to --source generation; text-to-image stays "
                          "identical to diffusers")
    steps, guidance_scale, negative_prompt = sampler.num_steps, sampler.guidance_scale, sampler.negative_prompt
    height = width = sampler.image_size
    state = launch_state()
    shard = resolve_shard(shard, state)
    out = Path(out)
    fingerprint = {"model": model.diffusion, "prompt": prompt, "num_images": num_images, "steps": steps,
                   "guidance_scale": guidance_scale, "seed": seed, "height": height, "width": width,
                   "negative_prompt": negative_prompt}  # the keys of every earlier version: old runs continue
    import yaml

    prepare_run_dir(out, fingerprint, "text2img.yaml", resume=False, overwrite=overwrite, auto_resume=True,
                    create=False, shard=shard)
    comps = components or load_components(model.diffusion, device=launch_device(model.device, state),
                                          scheduler="native")
    open_run(out, fingerprint, "text2img.yaml", overwrite, state,
             lambda: atomic_write_text(out / "text2img.yaml", yaml.safe_dump(fingerprint, sort_keys=False)), shard)
    (out / "images").mkdir(exist_ok=True)
    f = comps.vae_scale_factor
    height, width = height or comps.unet.config.sample_size * f, width or comps.unet.config.sample_size * f
    shape = (num_images, comps.unet.config.in_channels, height // f, width // f)
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float32)
    rows = Rows(out, shard)
    done = rows.done()
    mine = [k for k in range(num_images) if k % shard[1] == shard[0]]
    todo = [k for k in mine if k not in done]
    sampler = Sampler(comps, gradient_checkpointing=False)
    writer = Writer(rows)
    try:
        for start in tqdm(range(0, len(todo), batch_size), desc="text-to-image", disable=not progress or not todo):
            ks = todo[start:start + batch_size]
            images = sampler([prompt] * len(ks), num_steps=steps, guidance_scale=guidance_scale, height=height,
                             width=width, noise=noise[ks].to(comps.device), grad=False,
                             negative_prompt=[negative_prompt] * len(ks) if negative_prompt else None).images
            new_rows = [{"file_name": f"images/{k:05d}.png", "label": 0, "prompt": prompt, "seed": seed, "index": k}
                        for k in ks]
            writer.submit([out / r["file_name"] for r in new_rows], to_uint8(images), new_rows)
    finally:
        writer.flush()
        writer.pool.shutdown()
    rows.merge(state, card={"run_file": "text2img.yaml", "class_label": False})
    return GenerateResult(out_dir=out, written=len(todo), skipped=len(mine) - len(todo), total=num_images)

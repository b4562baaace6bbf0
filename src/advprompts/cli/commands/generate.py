"""Generate a training set: from sources with learned/text prompts, or plain text-to-image.

Under ``accelerate launch -m advprompts generate ...`` every process makes its share of the images
(combined with ``--shard``) into the same ``--out``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Optional

import typer

Opt = typer.Option


def main(
    out: Annotated[Path, Opt("--out", "-o", help="Output folder (images/ + metadata.csv).")],
    prompt_file: Annotated[Optional[list[Path]], Opt("--prompt-file", help="Learned prompt (.safetensors).")] = None,
    prompt: Annotated[Optional[list[str]], Opt("--prompt", help="Text prompt ({class} allowed).")] = None,
    source: Annotated[Optional[str], Opt("--source", help="Source dataset (folder or name[:split]).")] = None,
    model: Annotated[str, Opt("--model", help="Diffusion model: embedded, tiny, folder or hub id.")] = "embedded",
    device: Annotated[str, Opt("--device", help="auto (CUDA when visible), cpu or cuda[:N].")] = "auto",
    num_images: Annotated[int, Opt("--num-images", help="Text-to-image: number of images.")] = 1,
    images_per_source: Annotated[int, Opt("--images-per-source", help="Per source and prompt.")] = 1,
    class_prompts: Annotated[str, Opt("--class-prompts", help="own: a per-class prompt only on its class's "
                                      "sources; all: every prompt on every source.")] = "own",
    image_size: Annotated[Optional[int], Opt("--image-size", help="Source size (default: the model's).")] = None,
    steps: Annotated[int, Opt("--steps", help="Denoising steps.")] = 15,
    guidance_scale: Annotated[float, Opt("--guidance-scale", help="CFG scale.")] = 7.0,
    negative_prompt: Annotated[Optional[str], Opt("--negative-prompt", help="Text of CFG's unconditional "
                                                  "branch, e.g. what to keep out of the images.")] = None,
    strength: Annotated[float, Opt("--strength", help="SDEdit strength (sources).")] = 1.0,
    conditioning: Annotated[str, Opt("--conditioning", help="inpaint | none | controlnet (sources).")] = "inpaint",
    template: Annotated[Optional[str], Opt("--template", help="Template for learned prompts.")] = None,
    class_word: Annotated[Optional[list[str]], Opt("--class-word", help="NAME=WORD: fill {class} with WORD for "
                                                   "class NAME (a word the generator knows).")] = None,
    seed: Annotated[int, Opt("--seed", help="Run seed.")] = 0,
    batch_size: Annotated[int, Opt("--batch-size", help="Images per batch.")] = 4,
    shard: Annotated[Optional[str], Opt("--shard", help="i/n: make every n-th image starting at i.")] = None,
    overwrite: Annotated[bool, Opt("--overwrite", help="Replace a different run in --out.")] = False,
    autocast: Annotated[str, Opt("--autocast", help="none | bf16 | fp16 (opt-in, not bit-identical).")] = "none",
    channels_last: Annotated[bool, Opt("--channels-last", help="Channels-last convolutions (opt-in).")] = False,
    compile_: Annotated[bool, Opt("--compile", help="torch.compile UNet and VAE (opt-in).")] = False,
) -> None:
    from advprompts.errors import ConfigError
    from advprompts.generate import generate_dataset, generate_text2img
    from advprompts.shards import parse_shard

    parse_shard(shard)  # reject a bad --shard / --device before loading anything
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", device):
        raise ConfigError(f"--device takes auto, cpu or cuda[:N] (e.g. cuda:1); got {device!r}")
    words = dict(w.split("=", 1) for w in class_word or [] if "=" in w)
    if len(words) != len(class_word or []) or not all(k and v for k, v in words.items()):
        raise ConfigError(f"--class-word takes NAME=WORD (e.g. waterbird=duck); got {class_word}")
    if source is None:
        if not prompt or len(prompt) != 1 or prompt_file:
            raise ConfigError("plain text-to-image takes exactly one --prompt (and --model); add --source for learned prompts")
        if autocast != "none" or channels_last or compile_ or words:
            raise ConfigError("--autocast / --channels-last / --compile / --class-word apply to --source generation; "
                              "text-to-image stays identical to diffusers")
        from advprompts.config.schema import ModelConfig, SamplerConfig, parse_config

        sampler = parse_config({"num_steps": steps, "guidance_scale": guidance_scale, "conditioning": "none",
                                "paste": False, "negative_prompt": negative_prompt}, SamplerConfig, what="generate")
        res = generate_text2img(ModelConfig(diffusion=model, device=device), prompt[0], out, num_images=num_images,
                                sampler=sampler, seed=seed, batch_size=batch_size, shard=shard, overwrite=overwrite)
    else:
        from advprompts.config.schema import GenerateConfig, parse_config

        cfg = parse_config(dict(
            model={"diffusion": model, "autocast": autocast, "device": device}, source=source,
            prompt_files=[str(p) for p in prompt_file or []],
            prompts=prompt or [], template=template, images_per_source=images_per_source, batch_size=batch_size,
            class_prompts=class_prompts, seed=seed, class_words=words,
            sampler={"num_steps": steps, "guidance_scale": guidance_scale, "strength": strength,
                     "conditioning": conditioning, "image_size": image_size, "negative_prompt": negative_prompt}), GenerateConfig, what="generate")
        res = generate_dataset(cfg, out, shard=shard, overwrite=overwrite, channels_last=channels_last,
                               compile=compile_)
    typer.echo(f"{res.out_dir}: {res.written} images written, {res.skipped} already done, {res.total} in the run")

"""Benchmark suites: what is measured, on which model, at which sizes.

``quick`` runs the whole benchmark on tiny random models in seconds (tests, smoke runs);
``full`` is the real measurement: the embedded model for time and generation, the Stable
Diffusion 1.5 architecture (random weights) for memory, sized to finish in under 10 minutes on
2 CPU cores.
"""

from __future__ import annotations

from dataclasses import dataclass

from advprompts.errors import ConfigError


@dataclass(frozen=True)
class Suite:
    name: str
    model: str                            # "embedded" (else its architecture, random weights) or "tiny"
    image_size: int                       # optimisation and generation resolution (pixels)
    batch_size: int = 2                   # optimisation batch
    num_steps: int = 5                    # K: DDIM steps of the optimisation rollout
    guidance_scale: float = 7.0
    num_tokens: int = 5
    warmup_steps: int = 2                 # optimisation steps run before timing
    timed_steps: int = 8
    repeats: int = 5                      # isolated component timings (median)
    scaling_steps: tuple[int, ...] = (1, 2, 5, 10)
    scaling_timed: int = 3
    sweep_batch: tuple[int, ...] = (1, 4)          # step time vs batch (at K = num_steps)
    sweep_size: tuple[int, ...] = (32, 128)        # step time vs resolution
    gen_steps: int = 15                   # generation: DDIM steps, batch, images, text prompts
    gen_batch: int = 4
    gen_images: int = 16
    gen_prompts: int = 2
    gen_repeats: int = 2                  # best of
    gen_variants: tuple[str, ...] = ("channels_last", "bf16", "bf16+channels_last", "compile")
    memory_model: str = "sd15"            # "sd15" (SD 1.5 architecture, random weights) or "tiny"
    memory_size: int = 256
    memory_steps: int = 5
    memory_subprocess: bool = True        # one fresh process per memory measurement
    gpu_size: int = 512                   # SD 1.5 AP step time and peak memory when a GPU is present,
    gpu_batches: tuple[int, ...] = (1, 4)  # at these batch sizes
    batch_prompts: int = 8                # prompt_batch_speedup: prompts optimised together vs one at a time,
    batch_prompt_size: int = 4            # each on a batch of this many images,
    batch_steps: int = 3                  # for this many steps
    train_images: int = 1024              # finetune_fast_speedup: small-CNN fine-tuning on this many images,
    train_epochs: int = 2                 # for this many epochs, fp32 against bf16 + channels-last


SUITES: dict[str, Suite] = {
    "quick": Suite(name="quick", model="tiny", image_size=16, num_steps=2, num_tokens=2, warmup_steps=1,
                   timed_steps=2, repeats=2, scaling_timed=1, sweep_batch=(1,), sweep_size=(32,), gen_steps=2,
                   gen_batch=2, gen_images=8, gen_repeats=1, gen_variants=("channels_last", "bf16"),
                   memory_model="tiny", memory_size=128, memory_subprocess=False, batch_prompts=4,
                   batch_prompt_size=2, batch_steps=2, train_images=128, train_epochs=1),
    "full": Suite(name="full", model="embedded", image_size=64),
}


def get_suite(name: str) -> Suite:
    """The suite called ``name`` (ConfigError naming the known ones otherwise)."""
    if name not in SUITES:
        raise ConfigError(f"benchmark suite {name!r} is unknown; choose one of {', '.join(SUITES)}")
    return SUITES[name]

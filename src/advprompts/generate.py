"""Generate training sets: source-conditioned (learned or text prompts) and plain text-to-image.

Both write ``images/NNNNN.png`` and ``metadata.csv`` (readable by ``datasets.load_dataset(
"imagefolder", data_dir=out)``, by torchvision and by :class:`~advprompts.data.folder.FolderDataset`).
Image k is deterministic given the run seed and k, whatever the batch size or shard. With
``shard=(i, n)`` a process makes the images with ``k % n == i``; a restarted run skips finished
images. Images are written atomically; each shard's rows live in ``.parts/`` (rewritten atomically
after every batch) and are merged into ``metadata.csv`` when a shard finishes.
"""

from __future__ import annotations

import csv
import io
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from advprompts.config.schema import GenerateConfig
from advprompts.errors import ShardError
from advprompts.rundir import atomic_write_text, prepare_run_dir

logger = logging.getLogger(__name__)

COLUMNS = ["file_name", "label", "label_name", "source_file", "prompt", "prompt_file", "seed", "index", "group"]


@dataclass
class GenerateResult:
    """Outcome of a generation run: folder, images written now, images skipped as already done."""

    out_dir: Path
    written: int
    skipped: int
    total: int


def parse_shard(spec: str | tuple[int, int] | None) -> tuple[int, int]:
    """``"i/n"`` (0-based i) or ``(i, n)`` -> ``(i, n)``; ShardError when invalid."""
    if spec is None:
        return 0, 1
    if isinstance(spec, str):
        head, sep, tail = spec.partition("/")
        if not sep or not head.strip().isdigit() or not tail.strip().isdigit():
            raise ShardError(f"--shard {spec!r} is invalid; use i/n with 0 <= i < n, e.g. 0/4")
        spec = (int(head), int(tail))
    i, n = spec
    if n < 1 or not 0 <= i < n:
        raise ShardError(f"--shard {i}/{n} is invalid; use i/n with 0 <= i < n, e.g. 0/4")
    return i, n


def image_seed(run_seed: int, index: int) -> int:
    """The seed of image ``index`` (stable across batch sizes, shards and restarts)."""
    return int(np.random.SeedSequence([run_seed, index]).generate_state(1)[0])


def to_pil(image: torch.Tensor) -> Image.Image:
    """(3, H, W) in [0, 1] -> PIL, rounding as diffusers' ``numpy_to_pil``."""
    arr = (image.detach().float().cpu().permute(1, 2, 0).numpy() * 255).round().astype("uint8")
    return Image.fromarray(arr)


def _save_png(path: Path, image: torch.Tensor) -> None:
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.png")
    to_pil(image).save(tmp)
    tmp.replace(path)


class _Rows:
    """This shard's metadata rows in ``.parts/``; merged into metadata.csv on :meth:`merge`."""

    def __init__(self, out: Path, shard: tuple[int, int]):
        self.out = out
        self.parts = out / ".parts"
        self.parts.mkdir(exist_ok=True)
        self.path = self.parts / f"shard-{shard[0]}-of-{shard[1]}.csv"
        self.rows = list(csv.DictReader(open(self.path))) if self.path.is_file() else []

    def done(self) -> set[int]:
        return {int(r["index"]) for r in self.rows if (self.out / r["file_name"]).is_file()}

    def add(self, rows: list[dict]) -> None:
        self.rows.extend(rows)
        atomic_write_text(self.path, _csv(self.rows))

    def merge(self) -> None:
        rows = {}
        for part in sorted(self.parts.glob("shard-*.csv")):
            for r in csv.DictReader(open(part)):
                rows[int(r["index"])] = r
        atomic_write_text(self.out / "metadata.csv", _csv([rows[k] for k in sorted(rows)]))


def _csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def _prompts(config: GenerateConfig, comps) -> list[tuple[str, str, object]]:
    """(label for metadata, prompt file or "", LearnablePrompt or text template) per prompt."""
    from advprompts.prompts import LearnablePrompt

    out: list[tuple[str, str, object]] = []
    for k, path in enumerate(config.prompt_files):
        prompt = LearnablePrompt.load(path, comps.tokenizer, comps.text_encoder, prefix=f"gen{k}",
                                      template=config.template)
        out.append((prompt.diffusers_text(), str(path), prompt))
    out += [(text, "", text) for text in config.prompts]
    return out


def generate_dataset(config: GenerateConfig, out: str | Path, *, shard: str | tuple[int, int] | None = None,
                     overwrite: bool = False, components=None, dataset=None) -> GenerateResult:
    """Source-conditioned generation: every source sample x every prompt x ``images_per_source``.

    Learned prompts use their saved template (or ``config.template``); text prompts may contain
    ``{class}``. Inpainting / pasting / SDEdit follow ``config.sampler``.

    Raises:
        ShardError, OutputExistsError, ConfigError, DataError, ModelLoadError.
    """
    from advprompts.data import collate, resolve_dataset
    from advprompts.models.loading import load_components
    from advprompts.optimize import AUTOCAST, _sampler_kwargs, resolve_device
    from advprompts.sampler import Sampler

    # 1. Inputs and folder (shards of one run share it; the same run continues).
    shard = parse_shard(shard)
    out = Path(out)
    fingerprint = config.model_dump(mode="json")
    prepare_run_dir(out, fingerprint, "generate.yaml", resume=False, overwrite=overwrite, auto_resume=True,
                    create=False)
    device = resolve_device(config.model.device)
    comps = components or load_components(config.model.diffusion, device=device, controlnet=config.model.controlnet)
    size = config.sampler.image_size or comps.unet.config.sample_size * comps.vae_scale_factor
    dataset = dataset or resolve_dataset(config.source, split=config.split, image_size=size)
    prompts = _prompts(config, comps)
    sampler = Sampler(comps, gradient_checkpointing=False, autocast_dtype=AUTOCAST[config.model.autocast])
    if not prepare_run_dir(out, fingerprint, "generate.yaml", resume=False, overwrite=overwrite, auto_resume=True):
        from advprompts.config.presets import dump_config

        dump_config(config, out / "generate.yaml")
    (out / "images").mkdir(exist_ok=True)

    # 2. The work list: image k = (source, prompt, repeat) in a fixed order; keep this shard's.
    jobs = [(s, p, r) for s in range(len(dataset)) for p in range(len(prompts)) for r in range(config.images_per_source)]
    rows = _Rows(out, shard)
    done = rows.done()
    todo = [k for k in range(len(jobs)) if k % shard[1] == shard[0] and k not in done]
    skipped = sum(1 for k in range(len(jobs)) if k % shard[1] == shard[0]) - len(todo)
    class_names = getattr(dataset, "class_names", {})
    from tqdm.auto import tqdm

    # 3. Batches under no_grad; one generator per image.
    for start in tqdm(range(0, len(todo), config.batch_size), desc="generate", disable=len(todo) == 0):
        ks = todo[start:start + config.batch_size]
        items = [dataset[jobs[k][0]] for k in ks]
        batch = collate(items)
        texts, shown = [], []
        for k, item in zip(ks, items):
            prompt = prompts[jobs[k][1]][2]
            name = item.get("label_name") or class_names.get(item["label"], str(item["label"]))
            if isinstance(prompt, str):
                texts.append(prompt.format(**{"class": name}))
                shown.append(texts[-1])
            else:
                texts.append(prompt.text(name))
                shown.append(prompt.diffusers_text(name))
        seeds = [image_seed(config.seed, k) for k in ks]
        gens = [torch.Generator(device=device).manual_seed(s) for s in seeds]
        kwargs = _sampler_kwargs(config, batch, device)
        images = sampler(texts, generator=gens, grad=False, **kwargs).images
        new_rows = []
        for k, item, image, seed, text in zip(ks, items, images, seeds, shown):
            name = f"images/{k:05d}.png"
            _save_png(out / name, image)
            new_rows.append({"file_name": name, "label": item["label"], "label_name": item.get("label_name", ""),
                             "source_file": item["file_name"], "prompt": text,
                             "prompt_file": prompts[jobs[k][1]][1], "seed": seed, "index": k,
                             "group": item.get("group", "")})
        rows.add(new_rows)
    rows.merge()
    logger.info("generated %d images into %s (%d already done)", len(todo), out, skipped)
    return GenerateResult(out_dir=out, written=len(todo), skipped=skipped, total=len(jobs))


def generate_text2img(model: str, prompt: str, num_images: int, steps: int, guidance_scale: float, seed: int,
                      out: str | Path, *, shard: str | tuple[int, int] | None = None, batch_size: int = 4,
                      height: int | None = None, width: int | None = None, overwrite: bool = False,
                      components=None) -> GenerateResult:
    """Plain text-to-image, identical to ``StableDiffusionPipeline.from_pretrained(model)(prompt,
    num_images_per_prompt=num_images, num_inference_steps=steps, guidance_scale=guidance_scale,
    generator=torch.Generator().manual_seed(seed))``, saved in order as ``images/00000.png ...``.

    The pipeline draws all initial latents at once from one generator; they are drawn the same way
    here and sliced per batch / shard (its scheduler draws nothing more at eta = 0).
    """
    from advprompts.models.loading import load_components
    from advprompts.sampler import Sampler

    if num_images < 1 or steps < 1:
        from advprompts.errors import ConfigError

        raise ConfigError(f"num_images={num_images} / steps={steps} invalid; both must be >= 1")
    shard = parse_shard(shard)
    out = Path(out)
    fingerprint = {"model": model, "prompt": prompt, "num_images": num_images, "steps": steps,
                   "guidance_scale": guidance_scale, "seed": seed, "height": height, "width": width}
    import yaml

    prepare_run_dir(out, fingerprint, "text2img.yaml", resume=False, overwrite=overwrite, auto_resume=True,
                    create=False)
    comps = components or load_components(model, scheduler="native")
    if not prepare_run_dir(out, fingerprint, "text2img.yaml", resume=False, overwrite=overwrite, auto_resume=True):
        atomic_write_text(out / "text2img.yaml", yaml.safe_dump(fingerprint, sort_keys=False))
    (out / "images").mkdir(exist_ok=True)
    f = comps.vae_scale_factor
    height, width = height or comps.unet.config.sample_size * f, width or comps.unet.config.sample_size * f
    shape = (num_images, comps.unet.config.in_channels, height // f, width // f)
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float32)
    rows = _Rows(out, shard)
    done = rows.done()
    todo = [k for k in range(num_images) if k % shard[1] == shard[0] and k not in done]
    sampler = Sampler(comps, gradient_checkpointing=False)
    for start in range(0, len(todo), batch_size):
        ks = todo[start:start + batch_size]
        images = sampler([prompt] * len(ks), num_steps=steps, guidance_scale=guidance_scale, height=height,
                         width=width, noise=noise[ks].to(comps.device), grad=False).images
        for k, image in zip(ks, images):
            _save_png(out / f"images/{k:05d}.png", image)
        rows.add([{"file_name": f"images/{k:05d}.png", "label": 0, "prompt": prompt, "seed": seed, "index": k}
                  for k in ks])
    rows.merge()
    mine = sum(1 for k in range(num_images) if k % shard[1] == shard[0])
    return GenerateResult(out_dir=out, written=len(todo), skipped=mine - len(todo), total=num_images)

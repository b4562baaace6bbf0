"""Generate training sets: source-conditioned (learned or text prompts) and plain text-to-image.

Both write ``images/NNNNN.png``, ``metadata.csv`` (readable by ``datasets.load_dataset(
"imagefolder", data_dir=out)``, by torchvision and by :class:`~advprompts.data.folder.FolderDataset`)
and ``README.md``, a dataset card with which ``datasets.load_dataset(out)`` types the columns
(``label`` a ClassLabel with the class names; :mod:`advprompts.data.card`).
Image k is deterministic given the run seed and k, whatever the batch size, shard or process count.
With ``shard=(i, n)`` a process makes the images with ``k % n == i``; under a multi-process launcher
(``accelerate launch``, ``torchrun``) each process takes its share of that (:func:`resolve_shard`).
A restarted run skips finished images. PNGs are written atomically by a background thread; a
shard appends its rows to ``.parts/`` once their images exist; the rows are merged into
``metadata.csv`` when the shard (under a launcher: every process) finishes.
"""

from __future__ import annotations

import csv
import io
import logging
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from advprompts.config.schema import GenerateConfig
from advprompts.rundir import atomic_write_bytes, atomic_write_text, prepare_run_dir, releases_run_dir
from advprompts.shards import launch_device, launch_state, open_run, resolve_shard

logger = logging.getLogger(__name__)

COLUMNS = ["file_name", "label", "label_name", "source_file", "prompt", "prompt_file", "seed", "index", "group"]


@dataclass
class GenerateResult:
    """Outcome of a generation run: folder, images written now, images skipped as already done."""

    out_dir: Path
    written: int
    skipped: int
    total: int


def image_seed(run_seed: int, index: int) -> int:
    """The seed of image ``index`` (stable across batch sizes, shards and restarts)."""
    return int(np.random.SeedSequence([run_seed, index]).generate_state(1)[0])


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) in [0, 1] -> (B, H, W, 3) uint8, rounding as diffusers' ``numpy_to_pil``
    (one device-to-host copy per batch instead of one per image)."""
    return (images.detach().float().cpu().permute(0, 2, 3, 1).numpy() * 255).round().astype("uint8")


def _save_png(path: Path, array: np.ndarray) -> None:
    buf = io.BytesIO()  # encoded in memory, so a failed write (disk full) leaves no temp file behind
    Image.fromarray(array).save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())


def _read_part(path: Path, repair: bool = False) -> list[dict]:
    """Rows of a ``.parts`` file, without a partial last line (a crash mid-append); ``repair``
    also cuts it from the file so that the next append starts on a fresh line."""
    if not path.is_file():
        return []
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        data = data[: data.rfind(b"\n") + 1]
        if repair:
            atomic_write_bytes(path, data)
    return list(csv.DictReader(io.StringIO(data.decode())))


class _Rows:
    """This shard's metadata rows, appended to ``.parts/`` (O(batch) per batch, not O(run));
    merged into metadata.csv on :meth:`merge`."""

    def __init__(self, out: Path, shard: tuple[int, int]):
        self.out = out
        self.parts = out / ".parts"
        self.parts.mkdir(exist_ok=True)
        self.path = self.parts / f"shard-{shard[0]}-of-{shard[1]}.csv"
        self.rows = _read_part(self.path, repair=True)

    def done(self) -> set[int]:
        return {int(r["index"]) for r in self.rows if (self.out / r["file_name"]).is_file()}

    def add(self, rows: list[dict]) -> None:
        header = not self.path.is_file() or self.path.stat().st_size == 0
        with open(self.path, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
            if header:
                writer.writeheader()
            writer.writerows(rows)
        self.rows.extend(rows)

    def merge(self, state=None, card: dict | None = None) -> None:
        """Write metadata.csv from every shard's rows; under a launcher once all processes are done.
        ``card``: arguments of :func:`~advprompts.data.card.write_dataset_card` (README.md beside it)."""
        if state is not None:
            state.wait_for_everyone()
            if not state.is_main_process:
                return
        rows = {int(r["index"]): r for part in sorted(self.parts.glob("shard-*.csv")) for r in _read_part(part)}
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows[k] for k in sorted(rows))
        atomic_write_text(self.out / "metadata.csv", buf.getvalue())
        if card is not None:  # types the columns for `datasets.load_dataset(out)` (label: ClassLabel)
            from advprompts.data.card import write_dataset_card

            write_dataset_card(self.out, COLUMNS, list(rows.values()), **card)


class _Writer:
    """Saves a batch's PNGs on a background thread while the next batch is denoised (PNG encoding
    releases the GIL); a batch's rows are appended only once its images exist."""

    def __init__(self, rows: _Rows):
        self.rows, self.pool, self.pending = rows, ThreadPoolExecutor(1), None

    def submit(self, paths: list[Path], arrays: np.ndarray, new_rows: list[dict]) -> None:
        futures = [self.pool.submit(_save_png, p, a) for p, a in zip(paths, arrays)]
        self.flush()
        self.pending = (futures, new_rows)

    def flush(self) -> None:
        pending, self.pending = self.pending, None
        if pending is not None:
            for future in pending[0]:
                future.result()  # re-raises a failed save
            self.rows.add(pending[1])


class _Sources:
    """Dataset items by index, keeping the last few: a source's jobs (one per prompt and repeat)
    are consecutive, so each source is read and decoded once, not once per generated image."""

    def __init__(self, dataset, keep: int):
        self.dataset, self.keep, self.cache = dataset, keep, OrderedDict()

    def __getitem__(self, index: int) -> dict:
        if index in self.cache:
            self.cache.move_to_end(index)
        else:
            self.cache[index] = self.dataset[index]
            if len(self.cache) > self.keep:
                self.cache.popitem(last=False)
        return self.cache[index]


def apply_fast_path(comps, channels_last: bool = False, compile: bool = False):
    """Opt-in speed-ups that change outputs in the last bits (not bit-identical to the default):
    channels-last convolutions and ``torch.compile`` of the UNet and VAE. Applied in place."""
    nets = [n for n in (comps.unet, comps.vae, comps.controlnet) if n is not None]
    if channels_last:
        for net in nets:
            net.to(memory_format=torch.channels_last)
    if compile:
        # The sampler calls vae.encode / vae.decode, so compile the VAE's sub-networks.
        for net in (comps.unet, comps.controlnet, comps.vae.encoder, comps.vae.decoder):
            if net is not None:
                net.compile()
    return comps


def _source_class_names(dataset) -> list[str]:
    """Each source's class name, from the metadata rows when there are (no image decoding)."""
    names = getattr(dataset, "class_names", {})
    rows = getattr(dataset, "rows", None)
    if rows is None and hasattr(dataset, "indices") and hasattr(getattr(dataset, "dataset", None), "rows"):
        rows = [dataset.dataset.rows[i] for i in dataset.indices]  # a Subset of a folder dataset
    if rows is not None:
        return [r.get("label_name") or names.get(r["label"], str(r["label"])) for r in rows]
    return [dataset[i].get("label_name") or names.get(dataset[i]["label"], "") for i in range(len(dataset))]


def _class_names(dataset) -> dict:
    """label -> class name of a dataset or of the dataset under a Subset (a pool's unit of sources)."""
    names = getattr(dataset, "class_names", None)
    return dict(names if names is not None else getattr(getattr(dataset, "dataset", None), "class_names", {}))


def _applies(prompt, class_name: str) -> bool:
    owner = getattr(prompt, "class_name", None)
    return owner is None or owner == class_name


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


@releases_run_dir("out")  # the folder's lock (taken by prepare_run_dir) ends with the call
def generate_dataset(config: GenerateConfig, out: str | Path, *, shard: str | tuple[int, int] | None = None,
                     overwrite: bool = False, components=None, dataset=None, channels_last: bool = False,
                     compile: bool = False, progress: bool = True) -> GenerateResult:
    """Source-conditioned generation: every source sample x every prompt x ``images_per_source``.

    Learned prompts use their saved template (or ``config.template``); text prompts may contain
    ``{class}``. Inpainting / pasting / SDEdit follow ``config.sampler``. Batches mix sources and
    prompts freely (image k depends only on the run seed and k).

    Args:
        shard: ``"i/n"``: only the images with ``k % n == i`` (split again over launched processes).
        components, dataset: already-loaded objects (else loaded from ``config``).
        channels_last, compile: opt-in fast paths (:func:`apply_fast_path`), as is
            ``config.model.autocast: bf16``; none is bit-identical to the default.
        progress: show a progress bar.

    Raises:
        ShardError, OutputExistsError, ConfigError, DataError, ModelLoadError.
    """
    from advprompts.data import collate, resolve_dataset
    from advprompts.models.loading import load_components
    from advprompts.sampler import Sampler
    from advprompts.sampler_inputs import AUTOCAST, sampler_kwargs

    # 1. Inputs and folder (shards and processes of one run share it; the same run continues).
    state = launch_state()
    shard = resolve_shard(shard, state)
    out = Path(out)
    fingerprint = config.model_dump(mode="json")
    if channels_last or compile:  # outputs differ in the last bits: another run
        fingerprint["fast_path"] = {"channels_last": channels_last, "compile": compile}
    prepare_run_dir(out, fingerprint, "generate.yaml", resume=False, overwrite=overwrite, auto_resume=True,
                    create=False, shard=shard)
    device = launch_device(config.model.device, state)
    comps = components or load_components(config.model.diffusion, device=device, controlnet=config.model.controlnet)
    apply_fast_path(comps, channels_last, compile)
    size = config.sampler.image_size or comps.unet.config.sample_size * comps.vae_scale_factor
    dataset = dataset or resolve_dataset(config.source, split=config.split, image_size=size)
    prompts = _prompts(config, comps)
    sampler = Sampler(comps, gradient_checkpointing=False, autocast_dtype=AUTOCAST[config.model.autocast])

    def write_config():
        import yaml

        from advprompts.config.presets import dump_config

        if "fast_path" in fingerprint:  # the stored fingerprint must equal the next run's
            atomic_write_text(out / "generate.yaml", yaml.safe_dump(fingerprint, sort_keys=False))
        else:
            dump_config(config, out / "generate.yaml")

    open_run(out, fingerprint, "generate.yaml", overwrite, state, write_config, shard)
    (out / "images").mkdir(exist_ok=True)

    # 2. The work list: image k = (source, prompt, repeat) in a fixed order; keep this shard's.
    names = _source_class_names(dataset)
    jobs = [(s, p, r) for s in range(len(dataset)) for p in range(len(prompts))
            if config.class_prompts == "all" or _applies(prompts[p][2], names[s])
            for r in range(config.images_per_source)]
    if not jobs:
        from advprompts.errors import DataError

        raise DataError("no source matches the classes of the given learned prompts; pass class_prompts=all "
                        "(--class-prompts all) to apply every prompt to every source")
    rows = _Rows(out, shard)
    done = rows.done()
    mine = [k for k in range(len(jobs)) if k % shard[1] == shard[0]]
    todo = [k for k in mine if k not in done]
    class_names = getattr(dataset, "class_names", {})
    sources = _Sources(dataset, keep=max(8, 2 * config.batch_size))
    writer = _Writer(rows)
    from tqdm.auto import tqdm

    # 3. Batches under no_grad; one generator per image; PNGs saved while the next batch runs.
    try:
        for start in tqdm(range(0, len(todo), config.batch_size), desc="generate", disable=not progress or not todo):
            ks = todo[start:start + config.batch_size]
            items = [sources[jobs[k][0]] for k in ks]
            batch = collate(items)
            texts, shown = [], []
            for k, item in zip(ks, items):
                prompt = prompts[jobs[k][1]][2]
                name = item.get("label_name") or class_names.get(item["label"], str(item["label"]))
                name = config.class_words.get(name, name)
                if isinstance(prompt, str):
                    texts.append(prompt.format(**{"class": name}))
                    shown.append(texts[-1])
                else:
                    texts.append(prompt.text(name))
                    shown.append(prompt.diffusers_text(name))
            seeds = [image_seed(config.seed, k) for k in ks]
            gens = [torch.Generator(device=device).manual_seed(s) for s in seeds]
            kwargs = sampler_kwargs(config, batch, device)
            images = sampler(texts, generator=gens, grad=False, **kwargs).images
            new_rows = [{"file_name": f"images/{k:05d}.png", "label": item["label"],
                         "label_name": item.get("label_name", ""), "source_file": item["file_name"], "prompt": text,
                         "prompt_file": prompts[jobs[k][1]][1], "seed": seed, "index": k,
                         "group": item.get("group", "")} for k, item, seed, text in zip(ks, items, seeds, shown)]
            writer.submit([out / r["file_name"] for r in new_rows], to_uint8(images), new_rows)
    finally:
        writer.flush()
        writer.pool.shutdown()
    rows.merge(state, card={"class_names": _class_names(dataset), "run_file": "generate.yaml"})
    logger.info("generated %d images into %s (%d already done)", len(todo), out, len(mine) - len(todo))
    return GenerateResult(out_dir=out, written=len(todo), skipped=len(mine) - len(todo), total=len(jobs))


@releases_run_dir("out")
def generate_text2img(model: str, prompt: str, num_images: int, steps: int, guidance_scale: float, seed: int,
                      out: str | Path, *, shard: str | tuple[int, int] | None = None, batch_size: int = 4,
                      height: int | None = None, width: int | None = None, overwrite: bool = False,
                      components=None, negative_prompt: str | None = None, device: str = "auto",
                      progress: bool = True) -> GenerateResult:
    """Plain text-to-image, identical to ``StableDiffusionPipeline.from_pretrained(model)(prompt,
    num_images_per_prompt=num_images, num_inference_steps=steps, guidance_scale=guidance_scale,
    negative_prompt=negative_prompt, generator=torch.Generator().manual_seed(seed))``, saved in order as
    ``images/00000.png ...``.

    The pipeline draws all initial latents at once from one generator; they are drawn the same way
    here and sliced per batch / shard / process (its scheduler draws nothing more at eta = 0).
    ``device``: ``auto`` (CUDA when visible; under a launcher this process's GPU), ``cpu`` or ``cuda[:N]``;
    the initial latents are drawn on the CPU whatever the device, so a GPU differs only in float rounding.
    """
    from tqdm.auto import tqdm

    from advprompts.models.loading import load_components
    from advprompts.sampler import Sampler

    if num_images < 1 or steps < 1:
        from advprompts.errors import ConfigError

        raise ConfigError(f"num_images={num_images} / steps={steps} invalid; both must be >= 1")
    state = launch_state()
    shard = resolve_shard(shard, state)
    out = Path(out)
    fingerprint = {"model": model, "prompt": prompt, "num_images": num_images, "steps": steps,
                   "guidance_scale": guidance_scale, "seed": seed, "height": height, "width": width,
                   "negative_prompt": negative_prompt}
    import yaml

    prepare_run_dir(out, fingerprint, "text2img.yaml", resume=False, overwrite=overwrite, auto_resume=True,
                    create=False, shard=shard)
    comps = components or load_components(model, device=launch_device(device, state), scheduler="native")
    open_run(out, fingerprint, "text2img.yaml", overwrite, state,
             lambda: atomic_write_text(out / "text2img.yaml", yaml.safe_dump(fingerprint, sort_keys=False)), shard)
    (out / "images").mkdir(exist_ok=True)
    f = comps.vae_scale_factor
    height, width = height or comps.unet.config.sample_size * f, width or comps.unet.config.sample_size * f
    shape = (num_images, comps.unet.config.in_channels, height // f, width // f)
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float32)
    rows = _Rows(out, shard)
    done = rows.done()
    mine = [k for k in range(num_images) if k % shard[1] == shard[0]]
    todo = [k for k in mine if k not in done]
    sampler = Sampler(comps, gradient_checkpointing=False)
    writer = _Writer(rows)
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

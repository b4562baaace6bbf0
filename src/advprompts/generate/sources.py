"""Source-conditioned generation: every source sample x every prompt (learned or text) x
``images_per_source``, each image conditioned on its source (inpainting, SDEdit or ControlNet)."""

from __future__ import annotations

import logging
from collections import OrderedDict
from pathlib import Path

import torch

from advprompts.config.schema import GenerateConfig
from advprompts.fsio import atomic_write_text
from advprompts.generate.output import GenerateResult, Rows, Writer, image_seed, to_uint8
from advprompts.rundir import prepare_run_dir
from advprompts.runlock import releases_run_dir
from advprompts.shards import launch_device, launch_state, open_run, resolve_shard

logger = logging.getLogger(__name__)


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
    rows = Rows(out, shard)
    done = rows.done()
    mine = [k for k in range(len(jobs)) if k % shard[1] == shard[0]]
    todo = [k for k in mine if k not in done]
    class_names = getattr(dataset, "class_names", {})
    sources = _Sources(dataset, keep=max(8, 2 * config.batch_size))
    writer = Writer(rows)
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

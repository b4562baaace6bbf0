"""`zoo build`: retrain the embedded models from scratch, deterministically and resumably.

Stages (each resumes from its own checkpoint in the work folder):
1. tokenizer files (CLIP BPE), 2. render the web corpus, 3. CLIP, 4. VAE, 5. latents,
6. UNet, (6b. optional 9-channel inpainting UNet), 7. oracle, 8. pretrained task backbone
(small_cnn); then the models are written as a diffusers pipeline folder (sd/, with sd/unet_inpaint), a
transformers CLIP folder (clip/) and the oracle (oracle/), with a manifest.
"""

from __future__ import annotations

import json
import logging
import platform
import shutil
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, fields, replace
from pathlib import Path

import torch

from advprompts.checkpoints import load_torch, save_torch, save_weights
from advprompts.errors import ConfigError
from advprompts.fsio import read_json, remove_stale_temp_files, sha256
from advprompts.hardware import cpu_name
from advprompts.models.loading import CLIP_MEAN, CLIP_STD
from advprompts.fsio import atomic_write_text
from advprompts.zoo.architectures import sample_scheduler
from advprompts.zoo.corpus import render_corpus
from advprompts.zoo.tokenizer import write_tokenizer_files
from advprompts.zoo.recipe import Tokenize, ZooRecipe, use_bf16
from advprompts.zoo.trainers import encode_latents, train_clip, train_oracle, train_task_backbone, train_vae
from advprompts.zoo.unet_trainers import train_inpaint_unet, train_unet

logger = logging.getLogger(__name__)

#: CLIP BPE tokenizer files (what open_clip's bpe_simple_vocab_16e6.txt.gz builds), for offline rebuilds.
COMMITTED_TOKENIZER = Path(__file__).parent / "clip_tokenizer"


def write_manifest(out: Path, recipe: ZooRecipe, extra: dict, keep_gates: bool = True) -> Path:
    files = sorted(p for p in out.rglob("*") if p.is_file() and p.name != "manifest.json")
    manifest = {
        "recipe": asdict(recipe),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "files": {str(p.relative_to(out)): {"sha256": sha256(p), "bytes": p.stat().st_size} for p in files},
        "total_mb": round(sum(p.stat().st_size for p in files) / 2**20, 2),
        **extra,
    }
    path = out / "manifest.json"
    old = read_json(path) or {}  # one torn by a killed build is rewritten, not a crash
    if keep_gates and "gates" in old and "gates" not in manifest:
        manifest["gates"] = old["gates"]
    atomic_write_text(path, json.dumps(manifest, indent=2))
    return path


def load_as_float32(config_file: Path) -> None:
    """Record float32 as a transformers model's load dtype, whatever its weights' dtype.

    transformers 5 loads a model in its config's ``dtype``; diffusers loads the UNet and VAE in
    float32. A float16 text encoder beside them makes a plain ``StableDiffusionPipeline
    .from_pretrained(sd)`` fail on CPU ("mat1 and mat2 must have the same dtype"); float32 here
    upcasts the float16 weights on load instead.
    """
    def fix(node):
        if isinstance(node, dict):
            return {k: ("float32" if k in ("dtype", "torch_dtype") and v else fix(v)) for k, v in node.items()}
        return node

    config = json.loads(config_file.read_text())
    config_file.write_text(json.dumps(fix(config), indent=2, sort_keys=True) + "\n")


def save_models(out: Path, clip, tokenizer, vae, unet, oracle, dtype: torch.dtype) -> None:
    from diffusers import StableDiffusionPipeline
    from transformers import CLIPImageProcessor, CLIPTextModel

    # tokenizer.json records the truncation and padding of the tokenizer's last call, training's; a build
    # resumed after training made none, so make that call here: resumed or not, the same file is written.
    Tokenize(tokenizer)([""])
    text_encoder = CLIPTextModel(clip.config.text_config)
    text_encoder.load_state_dict(clip.text_model.state_dict())
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder.eval(), tokenizer=tokenizer, unet=unet,
                                   scheduler=sample_scheduler(), safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.to(dtype=dtype).save_pretrained(out / "sd", safe_serialization=True)
    clip.to(dtype=dtype).save_pretrained(out / "clip", safe_serialization=True)
    for folder in (out / "sd" / "text_encoder", out / "clip"):
        load_as_float32(folder / "config.json")
    tokenizer.save_pretrained(out / "clip")
    CLIPImageProcessor(size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64},
                       # float32-rounded, as the shipped preprocessor_config.json holds them
                       image_mean=torch.tensor(CLIP_MEAN).tolist(), image_std=torch.tensor(CLIP_STD).tolist()
                       ).save_pretrained(out / "clip")
    oracle.save(out / "oracle")
    clip.float()


class StageTimes:
    """Seconds spent per stage, kept in the work folder: a resumed build reports its real total.

    A running stage rewrites its figure every `flush_every` seconds, so a build killed outright
    (SIGKILL, a closed session) loses at most that much of its time.
    """

    def __init__(self, path: Path, flush_every: float = 30.0):
        self.path, self.flush_every = path, flush_every
        self.times: dict[str, float] = json.loads(path.read_text()) if path.exists() else {}

    @contextmanager
    def stage(self, name: str):
        t, before = time.time(), self.times.get(name, 0.0)

        def flush():
            self.times[name] = round(before + time.time() - t, 1)
            atomic_write_text(self.path, json.dumps(self.times, indent=2))

        def heartbeat():
            while not stop.wait(self.flush_every):
                flush()

        stop = threading.Event()
        beat = threading.Thread(target=heartbeat, daemon=True)
        beat.start()
        try:
            yield
        finally:  # an interrupted stage still counts the time it ran
            stop.set()
            beat.join()
            flush()

    def summary(self) -> dict[str, float]:
        return {**self.times, "total_s": round(sum(self.times.values()), 1)}


def _cached_latents(vae, corpus, recipe: ZooRecipe, work: Path) -> torch.Tensor:
    """The corpus' VAE latents (unscaled), encoded once per work folder."""
    lat_file = work / "latents.pt"
    if lat_file.exists():
        return load_torch(lat_file)
    latents = encode_latents(vae, corpus, bf16=use_bf16(recipe))
    save_torch(lat_file, latents)  # atomic: a torn latents.pt would fail every rerun
    return latents


def build(out: Path, work: Path, recipe: ZooRecipe = ZooRecipe(), bpe: Path | None = None,
          dtype: torch.dtype = torch.float16) -> Path:
    """Train every embedded model and write them to `out` (resumable via `work`)."""
    from transformers import CLIPTokenizer

    from advprompts.device import resolve_device

    # "auto" becomes the device it picks (recorded in the manifest); a missing GPU fails here, before
    # anything is written.
    recipe = replace(recipe, device=str(resolve_device(recipe.device)))
    work.mkdir(parents=True, exist_ok=True)
    log_file = work / "train_log.csv"
    timer = StageTimes(work / "stage_times.json")
    with timer.stage("corpus_s"):
        tok_dir = write_tokenizer_files(work / "tokenizer", bpe_gz=bpe, fallback=COMMITTED_TOKENIZER)
        tokenizer = CLIPTokenizer.from_pretrained(tok_dir)
        corpus = render_corpus(recipe.corpus_size, recipe.seed, cache=work / f"corpus_{recipe.corpus_size}.npz")
    with timer.stage("clip_s"):
        clip = train_clip(corpus, tokenizer, recipe, work, log_file)
    with timer.stage("vae_s"):
        vae = train_vae(corpus, recipe, work, log_file)
    with timer.stage("latents_s"):  # scaled to unit variance as SD's scaling_factor does
        latents = _cached_latents(vae, corpus, recipe, work)
        scaling = float(1.0 / latents.std())
        vae.register_to_config(scaling_factor=scaling)
    with timer.stage("unet_s"):  # on the frozen CLIP text tower
        unet = train_unet(corpus, latents * scaling, clip.text_model, tokenizer, recipe, work, log_file)
    inpaint_unet = None
    if recipe.inpaint_steps:
        with timer.stage("inpaint_s"):
            inpaint_unet = train_inpaint_unet(corpus, latents * scaling, vae, unet, clip.text_model, tokenizer, recipe,
                                              work, log_file)
    with timer.stage("oracle_s"):
        oracle = train_oracle(corpus, recipe, work, log_file)
    with timer.stage("backbone_s"):  # the analogue of ImageNet weights for the task models
        backbone = train_task_backbone(corpus, recipe, work)
    with timer.stage("save_s"):
        clip, vae, unet, oracle = (m.cpu() for m in (clip, vae, unet, oracle))
        save_models(out, clip, tokenizer, vae, unet, oracle, dtype)
        if inpaint_unet is not None:  # sd/unet_inpaint: swap it into StableDiffusionInpaintPipeline
            inpaint_unet.to("cpu", dtype=dtype).save_pretrained(out / "sd" / "unet_inpaint", safe_serialization=True)
        save_weights(out / "task" / "small_cnn.safetensors", backbone)
    times = timer.summary()
    remove_stale_temp_files(out)  # a killed build's, which the manifest would list
    write_manifest(out, recipe, {"build_times_s": times, "bf16_autocast": use_bf16(recipe),
                                 "device": recipe.device, "cpu": cpu_name(), "threads": torch.get_num_threads(),
                                 "dtype": str(dtype).replace("torch.", "")})
    logger.info("zoo built in %.1f min -> %s", times["total_s"] / 60, out)
    return out


def copy_zoo(base: Path, out: Path) -> Path:
    """Copy the zoo `base` to the new folder `out` (kept if it already exists: a rerun resumes)."""
    if not (base / "sd" / "unet").is_dir():
        raise ConfigError(f"--base {base} is not a zoo (no sd/unet/); give a `zoo build` output folder")
    if out.resolve() == base.resolve():
        raise ConfigError(f"--out {out} is --base; give a new folder, the base zoo is left as it is")
    if not out.exists():  # copied whole first, so a half-copied folder never looks like a zoo
        tmp = out.with_name(out.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(base, tmp)
        tmp.rename(out)
    return out


def retrain_inpaint(zoo: Path, work: Path, recipe: ZooRecipe = ZooRecipe(), dtype: torch.dtype = torch.float16) -> Path:
    """Retrain only `zoo`'s 9-channel inpainting UNet (stage 6b) from the zoo's own VAE, UNet and text
    tower, and replace `zoo/sd/unet_inpaint`: a change to that stage's recipe without the 80-minute build.

    The result differs slightly from a full build's (it starts from the saved float16 UNet, not the
    float32 one); the manifest records that it was retrained this way.
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    from advprompts.device import resolve_device

    recipe = replace(recipe, device=str(resolve_device(recipe.device)))
    if not recipe.inpaint_steps:
        raise ValueError("recipe.inpaint_steps is 0: there is no inpainting stage to retrain")
    sd = zoo / "sd"
    work.mkdir(parents=True, exist_ok=True)
    timer = StageTimes(work / "stage_times.json")
    with timer.stage("corpus_s"):
        tokenizer = CLIPTokenizer.from_pretrained(sd / "tokenizer")
        corpus = render_corpus(recipe.corpus_size, recipe.seed, cache=work / f"corpus_{recipe.corpus_size}.npz")
    dev = recipe.device
    vae = AutoencoderKL.from_pretrained(sd / "vae", torch_dtype=torch.float32).to(dev).eval()
    unet = UNet2DConditionModel.from_pretrained(sd / "unet", torch_dtype=torch.float32)
    text = CLIPTextModel.from_pretrained(sd / "text_encoder", torch_dtype=torch.float32).to(dev).eval()
    with timer.stage("latents_s"):
        latents = _cached_latents(vae, corpus, recipe, work)
    with timer.stage("inpaint_s"):  # the zoo's VAE already carries its scaling factor
        inpaint = train_inpaint_unet(corpus, latents * vae.config.scaling_factor, vae, unet, text, tokenizer, recipe,
                                     work, work / "train_log.csv")
    inpaint.to("cpu", dtype=dtype).save_pretrained(sd / "unet_inpaint", safe_serialization=True)
    old = json.loads((zoo / "manifest.json").read_text()) if (zoo / "manifest.json").exists() else {}
    # The zoo's recipe with this stage's fields replaced (keys of older recipes that no longer exist dropped).
    known = {f.name for f in fields(ZooRecipe)}
    merged = {k: v for k, v in old.get("recipe", {}).items() if k in known}
    merged.update({k: v for k, v in asdict(recipe).items() if k.startswith("inpaint")})
    kept = {k: v for k, v in old.items() if k not in ("recipe", "torch", "python", "files", "total_mb", "gates")}
    write_manifest(zoo, ZooRecipe(**merged),
                   kept | {"inpaint_retrained": {"recipe": asdict(recipe), "times_s": timer.summary(),
                                            "cpu": cpu_name(), "threads": torch.get_num_threads()}},
                   keep_gates=False)  # the inpainting gates no longer hold: `zoo check` writes them anew
    return zoo


if __name__ == "__main__":  # python -m advprompts.zoo.build OUT WORK [BPE]
    import sys

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    build(Path(sys.argv[1]), Path(sys.argv[2]), bpe=Path(sys.argv[3]) if len(sys.argv) > 3 else None)

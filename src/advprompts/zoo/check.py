"""`zoo check`: quality gates of the embedded models, judged by the oracle (never by the CLIP under test).

Gates: text-to-image follows object and place (15 and 5 DDIM steps), inpainting keeps the
object and follows the prompted place, CLIP zero-shot on object and place, and diversity
across seeds. The shipped folders are run through diffusers' own pipelines, unchanged.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from advprompts.world.captions import canonical_prompt, object_prompt, place_prompt
from advprompts.world.render import random_scene, render
from advprompts.world.objects import OBJECTS
from advprompts.world.places import PLACES
from advprompts.zoo.corpus import OBJECT_NAMES, PLACE_NAMES
from advprompts.zoo.oracle import Oracle

logger = logging.getLogger(__name__)


@dataclass
class Gate:
    name: str
    value: float
    threshold: float | None  # None: a measurement reported beside the gates, not gated

    @property
    def passed(self) -> bool:
        return self.threshold is None or self.value >= self.threshold


def _renders(rng: np.random.Generator, pairs: list[tuple[str | None, str]]):
    imgs, masks = zip(*(render(random_scene(rng, o, p)) for o, p in pairs))
    x = torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).float() / 255
    m = torch.from_numpy(np.stack(masks)).float()[:, None] / 255
    return x, m


def _pipe_images(pipe, prompts: list[str], steps: int, cfg: float, seed: int, batch: int = 144, **kw):
    out = []
    for i in range(0, len(prompts), batch):
        g = torch.Generator().manual_seed(seed + i)
        extra = {k: v[i:i + batch] if torch.is_tensor(v) else v for k, v in kw.items()}
        r = pipe(prompts[i:i + batch], num_inference_steps=steps, guidance_scale=cfg, generator=g,
                 output_type="pt", **extra)
        out.append(r.images.float().clamp(0, 1))
    return torch.cat(out)


@dataclass
class ObjectFigures:
    """How often generations of one prompted object show it, and what they show instead."""
    right: float
    most_confused_with: str | None  # the commonest wrong oracle answer ("empty" for no object)


def object_figures(truth: np.ndarray, pred: np.ndarray) -> dict[str, ObjectFigures]:
    names = [*OBJECT_NAMES, "empty"]
    out = {}
    for i, name in enumerate(OBJECT_NAMES):
        got = pred[truth == i]
        wrong = got[got != i]
        out[name] = ObjectFigures(float((got == i).mean()) if len(got) else float("nan"),
                                  names[int(np.bincount(wrong).argmax())] if len(wrong) else None)
    return out


def text_to_image_gate(pipe, oracle: Oracle, steps: int, cfg: float, per_pair: int, seed: int):
    """Right object, right place, per-object figures and the first objects x places images."""
    pairs = [(o, p) for o in OBJECT_NAMES for p in PLACE_NAMES] * per_pair
    images = _pipe_images(pipe, [canonical_prompt(o, p) for o, p in pairs], steps, cfg, seed)
    pred = oracle.predict(images)
    truth = np.array([OBJECT_NAMES.index(o) for o, _ in pairs])
    place_ok = pred["place"] == np.array([PLACE_NAMES.index(p) for _, p in pairs])
    return (float((pred["object"] == truth).mean()), float(place_ok.mean()),
            object_figures(truth, pred["object"]), images[: len(OBJECT_NAMES) * len(PLACE_NAMES)])


def inpaint_gate(inpaint_pipe, oracle: Oracle, steps: int, cfg: float, n: int, seed: int,
                 objects: list[str] = OBJECT_NAMES, prompt=canonical_prompt):
    """Keep the object (mask), repaint the rest towards another place; paste the object pixels back.

    With a prompt that names only the kind ("a bird ..."), a generator that paints a second object
    beside the kept one shows up as a lower "keeps the object" figure."""
    rng = np.random.default_rng(seed)
    objs = [objects[i % len(objects)] for i in range(n)]
    src_places = [str(rng.choice(PLACE_NAMES)) for _ in range(n)]
    tgt_places = [str(rng.choice([p for p in PLACE_NAMES if p != s])) for s in src_places]
    x, m = _renders(rng, list(zip(objs, src_places)))
    images = _pipe_images(inpaint_pipe, [prompt(o, p) for o, p in zip(objs, tgt_places)], steps, cfg,
                          seed, image=x, mask_image=1 - m, strength=1.0, height=x.shape[-2], width=x.shape[-1])
    images = m * x + (1 - m) * images
    pred = oracle.predict(images)
    kept = pred["object"] == np.array([OBJECT_NAMES.index(o) for o in objs])
    place = pred["place"] == np.array([PLACE_NAMES.index(p) for p in tgt_places])
    return float(kept.mean()), float(place.mean())


@torch.no_grad()
def clip_zero_shot(clip_dir: Path, n: int, seed: int) -> tuple[float, float]:
    from transformers import CLIPImageProcessor, CLIPModel, CLIPTokenizer

    model = CLIPModel.from_pretrained(clip_dir, torch_dtype=torch.float32).eval()
    tok = CLIPTokenizer.from_pretrained(clip_dir)
    proc = CLIPImageProcessor.from_pretrained(clip_dir)
    mean = torch.tensor(proc.image_mean).view(1, 3, 1, 1)
    std = torch.tensor(proc.image_std).view(1, 3, 1, 1)
    rng = np.random.default_rng(seed)
    objs = [OBJECT_NAMES[i % len(OBJECT_NAMES)] for i in range(n)]
    places = [PLACE_NAMES[(i * 5 + 3) % len(PLACE_NAMES)] for i in range(n)]
    x, _ = _renders(rng, list(zip(objs, places)))
    img = model.visual_projection(model.vision_model(pixel_values=(x - mean) / std).pooler_output)
    img = img / img.norm(dim=-1, keepdim=True)

    def acc(texts: list[str], names: list[str], truth: list[str]) -> float:
        t = model.text_projection(model.text_model(**tok(texts, padding=True, return_tensors="pt")).pooler_output)
        t = t / t.norm(dim=-1, keepdim=True)
        pred = (img @ t.T).argmax(1).numpy()
        return float((pred == np.array([names.index(v) for v in truth])).mean())

    return (acc([object_prompt(o) for o in OBJECT_NAMES], OBJECT_NAMES, objs),
            acc([place_prompt(p) for p in PLACE_NAMES], PLACE_NAMES, places))


def diversity(pipe, steps: int, cfg: float, seed: int) -> float:
    """Mean pairwise pixel distance across seeds for one prompt, relative to real renders' spread."""
    prompts = [canonical_prompt(OBJECT_NAMES[i % 12], PLACE_NAMES[(i * 7) % 12]) for i in range(12)]
    gen = _pipe_images(pipe, [p for p in prompts for _ in range(4)], steps, cfg, seed).reshape(12, 4, -1)
    rng = np.random.default_rng(seed)
    real, _ = _renders(rng, [(OBJECT_NAMES[i % 12], PLACE_NAMES[(i * 7) % 12]) for i in range(12) for _ in range(4)])
    real = real.reshape(12, 4, -1)

    def spread(t):
        d = torch.cdist(t, t)  # [12, 4, 4]
        return float(d.sum() / (12 * 4 * 3))

    return spread(gen) / spread(real)


@dataclass
class CheckResult:
    gates: list[Gate]
    per_object: dict[str, ObjectFigures]  # text-to-image at 15 steps: which objects fail, and as what

    @property
    def passed(self) -> bool:
        return all(g.passed for g in self.gates)


def check(zoo: Path, per_pair: int = 2, seed: int = 1234, grid_out: Path | None = None) -> CheckResult:
    """Run every gate on the zoo at `zoo` and record the figures in its manifest.

    Raises:
        ModelLoadError: `zoo` lacks one of the folders a `zoo build` writes (sd/, clip/, oracle/).
    """
    from advprompts.errors import ModelLoadError

    missing = [name for name in ("sd", "clip", "oracle") if not (Path(zoo) / name).is_dir()]
    if missing:
        raise ModelLoadError(f"{str(zoo)!r} is not a zoo (no {missing[0]}/); give a `zoo build` output folder")
    from diffusers import StableDiffusionInpaintPipeline, StableDiffusionPipeline
    from torchvision.utils import save_image

    oracle = Oracle.load(zoo / "oracle")
    pipe = StableDiffusionPipeline.from_pretrained(zoo / "sd", torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    inpaint = StableDiffusionInpaintPipeline(**pipe.components)
    inpaint.set_progress_bar_config(disable=True)
    gates = []
    rng = np.random.default_rng(seed + 1)
    pairs = [(o, p) for o in OBJECT_NAMES for p in PLACE_NAMES]
    x, _ = _renders(rng, pairs)
    pred = oracle.predict(x)
    oracle_acc = float(((pred["object"] == np.array([OBJECT_NAMES.index(o) for o, _ in pairs])) &
                        (pred["place"] == np.array([PLACE_NAMES.index(p) for _, p in pairs]))).mean())
    gates.append(Gate("oracle accuracy on renders (object and place)", oracle_acc, 0.97))
    per_object: dict[str, ObjectFigures] = {}
    for steps in (15, 5):
        obj, place, figures, grid = text_to_image_gate(pipe, oracle, steps, 6.0, per_pair, seed)
        gates += [Gate(f"text-to-image right object, {steps} steps", obj, 0.9),
                  Gate(f"text-to-image right place, {steps} steps", place, 0.9)]
        if steps == 15:
            per_object = figures
            if grid_out is not None:
                grid_out.parent.mkdir(parents=True, exist_ok=True)
                save_image(grid, grid_out, nrow=len(PLACE_NAMES), padding=1)
    unet9 = zoo / "sd" / "unet_inpaint"
    variants = [("", inpaint)]
    if unet9.is_dir():
        from diffusers import UNet2DConditionModel

        inpaint9 = StableDiffusionInpaintPipeline(**{**pipe.components, "unet": UNet2DConditionModel.from_pretrained(
            unet9, torch_dtype=torch.float32)})
        inpaint9.set_progress_bar_config(disable=True)
        variants.append((" (9-channel UNet)", inpaint9))
    birds = [o for o in OBJECT_NAMES if OBJECTS[o].kind == "bird"]
    for name, p in variants:
        kept, place = inpaint_gate(p, oracle, 15, 6.0, 144, seed)
        gates += [Gate(f"inpainting{name} keeps the object", kept, 0.95),
                  Gate(f"inpainting{name} follows the place", place, 0.9)]
        kept, _ = inpaint_gate(p, oracle, 15, 6.0, 48, seed, birds, lambda o, pl: f"a photo of a bird {PLACES[pl].phrase}")
        gates.append(Gate(f"inpainting{name} keeps the bird, prompt 'a photo of a bird ...' (no second bird)", kept,
                          None))
    zs_obj, zs_place = clip_zero_shot(zoo / "clip", 288, seed)
    gates += [Gate("CLIP zero-shot object", zs_obj, 0.9), Gate("CLIP zero-shot place", zs_place, 0.9)]
    gates.append(Gate("diversity across seeds (vs renders)", diversity(pipe, 15, 6.0, seed), 0.3))
    manifest = zoo / "manifest.json"
    if manifest.exists():
        data = json.loads(manifest.read_text())
        data["gates"] = {g.name: {"value": round(g.value, 4), "threshold": g.threshold, "passed": g.passed}
                         for g in gates}
        data["per_object_15_steps"] = {o: asdict(f) for o, f in per_object.items()}
        manifest.write_text(json.dumps(data, indent=2))
    return CheckResult(gates, per_object)


def format_gates(gates: list[Gate]) -> str:
    rows = [f"| {g.name} | {g.value:.3f} | " + ("- | measured |" if g.threshold is None else
                                                f">= {g.threshold} | {'pass' if g.passed else 'FAIL'} |")
            for g in gates]
    return "\n".join(["| gate | value | threshold | |", "|---|---|---|---|", *rows])


def format_per_object(per_object: dict[str, ObjectFigures]) -> str:
    rows = [f"| {o} | {f.right:.2f} | {f.most_confused_with or '-'} |" for o, f in per_object.items()]
    return "\n".join(["| prompted object (15 steps) | right | most often drawn instead |", "|---|---|---|", *rows])

"""Trainers of the embedded models: CLIP (contrastive), VAE, UNet (noise prediction), oracle.

Every batch is drawn from the step number alone (seeded), so runs are deterministic and a
resumed run equals an uninterrupted one.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from advprompts.zoo.architectures import make_clip, make_unet, make_vae, train_scheduler
from advprompts.world.captions import Caption
from advprompts.zoo.corpus import Corpus
from advprompts.zoo.oracle import Oracle
from advprompts.zoo.train_common import EMA, train_loop

logger = logging.getLogger(__name__)

CLIP_MEAN = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
CLIP_STD = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)


@dataclass(frozen=True)
class ZooRecipe:
    """Steps and batch sizes of `zoo build` (defaults: the committed models)."""

    seed: int = 0
    corpus_size: int = 60_000
    # Build 5 took 94.4 min on the 2-core reference machine, 4.3 min above build 4 with the same steps, and
    # during build 6 CLIP steps ran another 14% slower (host noise): fewer CLIP, VAE-crop, UNet and oracle
    # steps keep the build within 90 min on a slow day (build 6: 80.5 min with 3400 UNet steps).
    clip_steps: int = 820
    clip_batch: int = 192
    # VAE: 1500 steps on object-centred 32 px crops (the VAE is fully convolutional), then 500 on full
    # images; object pixels weighted 5x, plus an image-gradient term. Measured: the oracle recognises
    # the object in 92% of reconstructions (zebra stripes kept), against 56% for the plain 1000-step
    # L1+MSE VAE of the first build.
    vae_steps: int = 2000
    vae_batch: int = 32
    vae_crop_steps: int = 1500
    vae_crop_batch: int = 64
    vae_object_weight: float = 4.0  # extra reconstruction weight on (dilated) object pixels
    unet_steps: int = 3600
    unet_batch: int = 64
    unet_lr: float = 6e-4
    unet_object_weight: float = 4.0  # extra loss weight on latent pixels covered by the object mask
    caption_dropout: float = 0.1
    # 9-channel inpainting UNet (latents + repaint mask + masked-image latents), fine-tuned from the
    # text-to-image UNet as SD's inpainting model was; 0 = none (inpainting by latent blending). On build 7's
    # checkpoints 600 steps at batch 32 (271 s) keep the object 0.986 and the bird under "a photo of a bird"
    # 0.917, where latent blending keeps 0.986 / 0.688 (batch 64, 543 s: 1.000 / 0.917).
    inpaint_steps: int = 600
    inpaint_batch: int = 32
    inpaint_lr: float = 3e-4
    # Extra loss weight on the repainted latent cells within `inpaint_ring` cells of the kept object, where a
    # generator that extends the object paints its second one (a small share of the plain loss).
    inpaint_ring_weight: float = 0.0
    inpaint_ring: int = 2
    oracle_steps: int = 500  # 650 gave 1.000 on fresh renders in builds 6 and 7; the time goes to the inpainting UNet
    oracle_batch: int = 128
    # The task models' "ImageNet": small_cnn pretrained to name the object on web-corpus images. From
    # scratch on a spurious train split a CNN learns no object features at all (measured: 128 real OOD
    # images then lift waterbirds-synth worst-group accuracy to 0-33%; from this backbone to 63%).
    backbone_images: int = 20_000
    backbone_epochs: int = 3
    # bf16 autocast for the convolutional models (VAE, UNet, oracle) where the CPU has native bf16
    # ("auto"). Measured on 2 AVX512-BF16 cores, seconds per step: VAE 0.45 -> 0.27, UNet 0.84 -> 0.66,
    # oracle 1.51 -> 0.47 (with channels_last); CLIP 0.74 -> 0.74, so it stays in float32. Without
    # native bf16 the emulation is many times slower: "auto" then means float32.
    bf16: str = "auto"  # "auto", "on" or "off"
    # Where to train. The committed models and their timings are from "cpu"; on "cuda" the same recipe
    # (same batches, seeds on the CPU) gives different weights: float rounding differs between devices.
    device: str = "cpu"


def use_bf16(recipe: ZooRecipe) -> bool:
    if recipe.bf16 == "auto":
        if recipe.device.startswith("cuda"):
            return torch.cuda.is_bf16_supported()
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return recipe.bf16 == "on"


def clip_pixels(images_pm1: torch.Tensor) -> torch.Tensor:
    return ((images_pm1 + 1) / 2 - CLIP_MEAN) / CLIP_STD


class Tokenize:
    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self._one = lru_cache(maxsize=200_000)(self._ids)

    def _ids(self, text: str) -> tuple[int, ...]:
        return tuple(self.tokenizer(text, padding="max_length", max_length=self.tokenizer.model_max_length,
                                    truncation=True).input_ids)

    def __call__(self, texts: list[str]) -> torch.Tensor:
        return torch.tensor([self._one(t) for t in texts])


def _batch_rng(seed: int, stage: int, step: int) -> np.random.Generator:
    return np.random.default_rng([seed, stage, step])


def caption_match(caps: list[Caption], corpus: Corpus, idx: np.ndarray) -> torch.Tensor:
    """[text, image] 1 where caption i is true of image j: it agrees on all the caption says."""
    obj, kind, place, night = (torch.from_numpy(a[idx]) for a in (corpus.obj, corpus.kind, corpus.place,
                                                                    corpus.night))
    says_obj, says_kind, says_place = (torch.tensor([getattr(c, f) for c in caps])[:, None]
                                       for f in ("says_object", "says_kind", "says_place"))
    return ((~says_obj | (obj[:, None] == obj[None])) & (~says_kind | (kind[:, None] == kind[None]))
            & (~says_place | (place[:, None] == place[None])) & (night[:, None] == night[None])).float()


def train_clip(corpus: Corpus, tokenizer, recipe: ZooRecipe, work: Path, log_file: Path):
    """Contrastive CLIP; a caption matches every image agreeing with what the caption says."""
    dev = recipe.device
    model = make_clip(recipe.seed).to(dev)
    tok = Tokenize(tokenizer)

    def step_fn(step):
        rng = _batch_rng(recipe.seed, 1, step)
        idx = rng.integers(0, len(corpus), recipe.clip_batch)
        caps = corpus.captions(idx, rng)
        ids = tok([c.text for c in caps])
        # The text tower is causal and pools at the first EOS, so the padding after the batch's longest
        # caption changes nothing: cut it (about 10% of a step).
        ids = ids[:, : int((ids == tokenizer.eos_token_id).int().argmax(1).max()) + 1]
        out = model(input_ids=ids.to(dev), pixel_values=clip_pixels(corpus.image_batch(idx)).to(dev))
        match = caption_match(caps, corpus, idx).to(dev)
        lt = -(F.log_softmax(out.logits_per_text, 1) * match / match.sum(1, keepdim=True)).sum(1).mean()
        mi = match.t()
        li = -(F.log_softmax(out.logits_per_image, 1) * mi / mi.sum(1, keepdim=True)).sum(1).mean()
        return {"loss": (lt + li) / 2}

    # No weight decay: untouched vocabulary rows keep their initial distribution.
    train_loop("clip", model, model.parameters(), step_fn, recipe.clip_steps, lr=1e-3,
               ckpt=work / "clip.pt", warmup=200, log_file=log_file)
    return model.eval()


def _object_centres(masks: np.ndarray) -> np.ndarray:
    """(row, col) centre of each mask's object; image centre for empty scenes."""
    m = masks > 127
    count = m.sum((1, 2))
    rows = (m.sum(2) * np.arange(masks.shape[1])).sum(1) / np.maximum(count, 1)
    cols = (m.sum(1) * np.arange(masks.shape[2])).sum(1) / np.maximum(count, 1)
    centre = np.stack([rows, cols], 1)
    centre[count == 0] = masks.shape[1] / 2
    return centre.round().astype(int)


def _reconstruction_loss(rec: torch.Tensor, x: torch.Tensor, weight: torch.Tensor) -> dict:
    """Weighted L1 + MSE plus L1 on image gradients (keeps stripes and spots, which plain L1 blurs)."""
    def grads(t):
        return t[..., 1:, :] - t[..., :-1, :], t[..., :, 1:] - t[..., :, :-1]

    l1 = ((rec - x).abs() * weight).mean()
    mse = ((rec - x).pow(2) * weight).mean()
    (rdy, rdx), (xdy, xdx) = grads(rec), grads(x)
    wy = torch.maximum(weight[..., 1:, :], weight[..., :-1, :])
    wx = torch.maximum(weight[..., :, 1:], weight[..., :, :-1])
    edge = ((rdy - xdy).abs() * wy).mean() + ((rdx - xdx).abs() * wx).mean()
    return {"l1": l1, "mse": mse, "edge": edge}


def train_vae(corpus: Corpus, recipe: ZooRecipe, work: Path, log_file: Path):
    vae = make_vae(recipe.seed).to(recipe.device)
    centres = _object_centres(corpus.masks)
    masks = torch.from_numpy(corpus.masks)

    def step_fn(step):
        rng = _batch_rng(recipe.seed, 2, step)
        crop = step < recipe.vae_crop_steps
        idx = rng.integers(0, len(corpus), recipe.vae_crop_batch if crop else recipe.vae_batch)
        x = corpus.image_batch(idx)
        m = masks[idx].float()[:, None] / 255
        if crop:  # 32 px crops, most of them around the object
            jitter = rng.integers(-8, 9, (len(idx), 2))
            random_corner = rng.integers(0, 33, (len(idx), 2))
            corner = np.where(rng.random((len(idx), 1)) < 0.75, np.clip(centres[idx] - 16 + jitter, 0, 32),
                              random_corner)
            x = torch.stack([x[i, :, r:r + 32, c:c + 32] for i, (r, c) in enumerate(corner)])
            m = torch.stack([m[i, :, r:r + 32, c:c + 32] for i, (r, c) in enumerate(corner)])
        x, m = x.to(recipe.device), m.to(recipe.device)
        weight = 1 + recipe.vae_object_weight * F.max_pool2d(m, 3, 1, 1)
        post = vae.encode(x).latent_dist
        rec = vae.decode(post.sample(generator=torch.Generator().manual_seed(step))).sample.float()
        terms = _reconstruction_loss(rec, x, weight)
        kl = post.kl().float().mean()
        return {"loss": terms["l1"] + terms["mse"] + terms["edge"] + 1e-6 * kl, **terms}

    train_loop("vae", vae, vae.parameters(), step_fn, recipe.vae_steps, lr=1e-3, ckpt=work / "vae.pt",
               warmup=100, log_file=log_file, bf16=use_bf16(recipe))
    return vae.eval()


@torch.no_grad()
def encode_latents(vae, corpus: Corpus, batch: int = 500, bf16: bool = False) -> torch.Tensor:
    """Posterior means of the whole corpus (the KL weight is tiny, so the posterior std is too), under
    the autocast the VAE was trained with."""
    dev = next(vae.parameters()).device
    with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
        out = [vae.encode(corpus.image_batch(np.arange(i, min(i + batch, len(corpus)))).to(dev)).latent_dist.mean
               .float().cpu() for i in range(0, len(corpus), batch)]
    return torch.cat(out)


class _NoisePrediction:
    """The diffusers noise-prediction objective with caption dropout (for CFG) and min-SNR-5
    weighting, shared by the text-to-image and the inpainting UNet."""

    def __init__(self, corpus: Corpus, text_encoder, tokenizer, recipe: ZooRecipe):
        self.corpus, self.text_encoder, self.recipe = corpus, text_encoder, recipe
        self.sched = train_scheduler()
        self.snr = self.sched.alphas_cumprod / (1 - self.sched.alphas_cumprod)
        self.tok = Tokenize(tokenizer)
        text_encoder.requires_grad_(False)

    def text(self, idx: np.ndarray, rng: np.random.Generator) -> torch.Tensor:
        c = self.corpus.captions(idx, rng)
        texts = [x.text if rng.random() >= self.recipe.caption_dropout else "" for x in c]
        with torch.no_grad():
            return self.text_encoder(self.tok(texts).to(self.recipe.device))[0]

    def loss(self, model, z0: torch.Tensor, cond: torch.Tensor, rng: np.random.Generator,
             extra: torch.Tensor | None = None, pixel_w: torch.Tensor | float = 1.0) -> torch.Tensor:
        g = torch.Generator().manual_seed(int(rng.integers(1 << 62)))  # noise drawn on the CPU: any device
        dev = self.recipe.device
        noise = torch.randn(z0.shape, generator=g).to(dev)
        t = torch.randint(0, self.sched.config.num_train_timesteps, (len(z0),), generator=g)
        w = (torch.clamp(self.snr[t], max=5.0) / self.snr[t]).to(dev)
        t, z0 = t.to(dev), z0.to(dev)
        x = self.sched.add_noise(z0, noise, t)
        pred = model(x if extra is None else torch.cat([x, extra], 1), t, cond).sample.float()
        return (w * ((pred - noise).pow(2) * pixel_w).mean((1, 2, 3))).mean()


def train_unet(corpus: Corpus, latents: torch.Tensor, text_encoder, tokenizer, recipe: ZooRecipe, work: Path,
               log_file: Path):
    """The text-to-image UNet, with object pixels weighted up."""
    unet = make_unet(recipe.seed).to(recipe.device)
    ema = EMA(unet, 0.999)
    objective = _NoisePrediction(corpus, text_encoder, tokenizer, recipe)
    # Objects cover a few percent of the image, so the plain loss is dominated by backgrounds.
    obj_cover = F.avg_pool2d(torch.from_numpy(corpus.masks).float()[:, None] / 255, 4)

    def step_fn(step):
        rng = _batch_rng(recipe.seed, 3, step)
        idx = rng.integers(0, len(corpus), recipe.unet_batch)
        cond = objective.text(idx, rng)
        pixel_w = (1 + recipe.unet_object_weight * obj_cover[idx]).to(recipe.device)
        return {"loss": objective.loss(unet, latents[idx], cond, rng, pixel_w=pixel_w)}

    train_loop("unet", unet, unet.parameters(), step_fn, recipe.unet_steps, lr=recipe.unet_lr, ckpt=work / "unet.pt",
               warmup=200, ema=ema, log_file=log_file, ckpt_every=100, bf16=use_bf16(recipe))
    unet.load_state_dict(ema.state_dict())
    return unet.eval()


def _repaint_masks(object_masks: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """Repaint masks (1 = repaint) for inpainting training: mostly "keep the object, repaint the rest"
    (how advprompts inpaints), some random boxes and some whole images, as SD's inpainting training."""
    keep = (object_masks > 0.5).float()
    n, _, h, w = keep.shape
    boxes = torch.zeros_like(keep)
    for i in range(n):
        bh, bw = rng.integers(h // 4, h, 2)
        r, c = rng.integers(0, h - bh + 1), rng.integers(0, w - bw + 1)
        boxes[i, :, r:r + bh, c:c + bw] = 1
    kind = torch.from_numpy(rng.choice(3, n, p=[0.75, 0.15, 0.1])).view(n, 1, 1, 1)
    return torch.where(kind == 0, 1 - keep, torch.where(kind == 1, boxes, torch.ones_like(keep)))


def ring_weights(repaint: torch.Tensor, ring: int, weight: float) -> torch.Tensor:
    """Loss weights (1 + `weight`) on repainted cells within `ring` cells (Chebyshev) of a kept one, else 1."""
    near_kept = F.max_pool2d(1 - repaint, 2 * ring + 1, 1, ring)
    return 1 + weight * near_kept * repaint


def train_inpaint_unet(corpus: Corpus, latents: torch.Tensor, vae, unet, text_encoder, tokenizer, recipe: ZooRecipe,
                       work: Path, log_file: Path):
    """The 9-channel inpainting UNet, from the text-to-image UNet with zero-initialised extra input
    channels: unlike latent blending it sees what is kept (meant against a second object painted
    beside the kept one; measured with 600 steps: no clear gain, see docs/zoo-builds.md)."""
    inpaint = make_unet(recipe.seed, in_channels=9)
    state = {k: v.clone() for k, v in unet.state_dict().items()}
    w = state["conv_in.weight"]
    state["conv_in.weight"] = torch.cat([w, torch.zeros(w.shape[0], 5, *w.shape[2:])], 1)
    inpaint.load_state_dict(state)
    inpaint.to(recipe.device)
    ema = EMA(inpaint, 0.999)
    objective = _NoisePrediction(corpus, text_encoder, tokenizer, recipe)
    vae.requires_grad_(False)
    masks = torch.from_numpy(corpus.masks)
    scaling = vae.config.scaling_factor

    def step_fn(step):
        rng = _batch_rng(recipe.seed, 6, step)
        idx = rng.integers(0, len(corpus), recipe.inpaint_batch)
        cond = objective.text(idx, rng)
        repaint = _repaint_masks(masks[idx].float()[:, None] / 255, rng).to(recipe.device)
        with torch.no_grad():  # as diffusers' StableDiffusionInpaintPipeline prepares its inputs
            masked = vae.encode(corpus.image_batch(idx).to(recipe.device) * (repaint < 0.5)).latent_dist.mean.float()
            masked = masked * scaling
        mask_latent = F.interpolate(repaint, size=masked.shape[-2:])
        extra = torch.cat([mask_latent, masked], 1)
        pixel_w = ring_weights(mask_latent, recipe.inpaint_ring, recipe.inpaint_ring_weight)
        return {"loss": objective.loss(inpaint, latents[idx], cond, rng, extra=extra, pixel_w=pixel_w)}

    train_loop("inpaint", inpaint, inpaint.parameters(), step_fn, recipe.inpaint_steps, lr=recipe.inpaint_lr,
               ckpt=work / "inpaint_unet.pt", warmup=100, ema=ema, log_file=log_file, ckpt_every=100,
               bf16=use_bf16(recipe))
    inpaint.load_state_dict(ema.state_dict())
    return inpaint.eval()


def train_task_backbone(corpus: Corpus, recipe: ZooRecipe, work: Path) -> dict:
    """small_cnn trained to name the object (13 ways) on web-corpus images; returns the network's
    state dict without its classifier head."""
    from safetensors.torch import load_file, save_file

    from advprompts.tasks.models import load_task_model
    from advprompts.tasks.train import Tensors, TrainRecipe, train_classifier

    path = work / "backbone_small_cnn.safetensors"
    if not path.is_file():
        idx = np.random.default_rng([recipe.seed, 5]).permutation(len(corpus))[: recipe.backbone_images]
        data = Tensors(torch.from_numpy(corpus.images[idx]).permute(0, 3, 1, 2).float() / 255,
                       torch.from_numpy(corpus.obj[idx]).long())
        torch.manual_seed(recipe.seed)
        model = train_classifier(load_task_model("small_cnn", int(corpus.obj.max()) + 1).to(recipe.device), data,
                                 TrainRecipe(epochs=recipe.backbone_epochs, lr=3e-3, batch_size=128), seed=recipe.seed,
                                 progress=True, desc="task backbone")
        head = f"{len(model.net) - 1}."  # the final Linear: the benchmark's task gets a new one
        state = {k: v.cpu().contiguous() for k, v in model.net.state_dict().items() if not k.startswith(head)}
        tmp = path.with_suffix(".tmp")  # renamed into place: a torn file would fail every rerun
        save_file(state, str(tmp))
        tmp.replace(path)
    return load_file(str(path))


def train_oracle(corpus: Corpus, recipe: ZooRecipe, work: Path, log_file: Path) -> Oracle:
    """Oracle on renders, with blur and noise so that it judges soft generations fairly."""
    bf16 = use_bf16(recipe)
    oracle = (Oracle().to(memory_format=torch.channels_last) if bf16 else Oracle()).to(recipe.device)

    def step_fn(step):
        rng = _batch_rng(recipe.seed, 4, step)
        idx = rng.integers(0, len(corpus), recipe.oracle_batch)
        x = corpus.image_batch(idx)
        g = torch.Generator().manual_seed(step)
        if rng.random() < 0.5:
            x = F.avg_pool2d(F.interpolate(x, scale_factor=2, mode="bilinear"), 2, 2) if rng.random() < 0.5 else \
                F.interpolate(F.avg_pool2d(x, 2), scale_factor=2, mode="bilinear")
        x = x + torch.randn(x.shape, generator=g) * float(rng.uniform(0, 0.08))
        obj, place, night = (torch.from_numpy(a[idx]).long().to(recipe.device)
                             for a in (corpus.obj, corpus.place, corpus.night))
        x = x.to(recipe.device)
        if bf16:
            x = x.contiguous(memory_format=torch.channels_last)
        return {"loss": oracle.loss(x, obj, place, night)}

    train_loop("oracle", oracle, oracle.parameters(), step_fn, recipe.oracle_steps, lr=2e-3,
               ckpt=work / "oracle.pt", warmup=100, weight_decay=1e-4, log_file=log_file, bf16=bf16)
    return oracle.to(memory_format=torch.contiguous_format).eval()

"""Trainers of the embedded UNets: text-to-image (noise prediction) and the 9-channel inpainting UNet
fine-tuned from it. Every batch is drawn from the step number alone (seeded)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from advprompts.zoo.architectures import make_unet, train_scheduler
from advprompts.zoo.corpus import Corpus
from advprompts.zoo.recipe import Tokenize, ZooRecipe, batch_rng, use_bf16
from advprompts.zoo.train_common import EMA, train_loop


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
        rng = batch_rng(recipe.seed, 3, step)
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
        rng = batch_rng(recipe.seed, 6, step)
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

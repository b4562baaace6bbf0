"""Trainers of the embedded models: CLIP (contrastive), VAE, task backbone, oracle; the UNets are in
:mod:`advprompts.zoo.unet_trainers`, the recipe in :mod:`advprompts.zoo.recipe`.

Every batch is drawn from the step number alone (seeded), so runs are deterministic and a
resumed run equals an uninterrupted one.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from advprompts.checkpoints import save_weights
from advprompts.models.loading import CLIP_MEAN, CLIP_STD
from advprompts.zoo.architectures import make_clip, make_vae
from advprompts.world.captions import Caption
from advprompts.zoo.corpus import Corpus
from advprompts.zoo.oracle import Oracle
from advprompts.zoo.recipe import Tokenize, ZooRecipe, batch_rng, use_bf16
from advprompts.zoo.train_common import train_loop

logger = logging.getLogger(__name__)

_MEAN, _STD = (torch.tensor(v).view(1, 3, 1, 1) for v in (CLIP_MEAN, CLIP_STD))


def clip_pixels(images_pm1: torch.Tensor) -> torch.Tensor:
    return ((images_pm1 + 1) / 2 - _MEAN) / _STD


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
        rng = batch_rng(recipe.seed, 1, step)
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
        rng = batch_rng(recipe.seed, 2, step)
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


def train_task_backbone(corpus: Corpus, recipe: ZooRecipe, work: Path) -> dict:
    """small_cnn trained to name the object (13 ways) on web-corpus images; returns the network's
    state dict without its classifier head."""
    from safetensors.torch import load_file

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
        # Atomic: a torn file would fail every rerun.
        save_weights(path, {k: v.cpu() for k, v in model.net.state_dict().items() if not k.startswith(head)})
    return load_file(str(path))


def train_oracle(corpus: Corpus, recipe: ZooRecipe, work: Path, log_file: Path) -> Oracle:
    """Oracle on renders, with blur and noise so that it judges soft generations fairly."""
    bf16 = use_bf16(recipe)
    oracle = (Oracle().to(memory_format=torch.channels_last) if bf16 else Oracle()).to(recipe.device)

    def step_fn(step):
        rng = batch_rng(recipe.seed, 4, step)
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

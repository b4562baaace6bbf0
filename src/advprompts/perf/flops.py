"""Floating-point operations of one optimisation step, counted on meta tensors (no compute).

The machine-independent side of "where time goes": per network of a step (text encoder, the K UNet
calls under CFG, VAE, task model), forward and backward GFLOPs from ``torch.utils.flop_counter``
(convolutions, matmuls, attention). Weights are frozen, so backward computes input gradients only
and costs about one forward; gradient checkpointing adds one more UNet forward per call.
``python -m advprompts.perf.flops`` prints the table quoted in docs/performance.md.
"""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode


def _meta(net: torch.nn.Module) -> torch.nn.Module:
    """A weightless copy of a diffusers / transformers network on the meta device."""
    with torch.device("meta"):
        copy = type(net).from_config(net.config) if hasattr(type(net), "from_config") else type(net)(net.config)
    return copy.requires_grad_(False).eval()


def _count(fn, backward: bool = True) -> tuple[float, float]:
    with FlopCounterMode(display=False) as counter:
        out = fn()
        fwd = counter.get_total_flops()
        if backward:
            out.backward(torch.ones_like(out))
    return fwd / 1e9, (counter.get_total_flops() - fwd) / 1e9


def step_flops(comps, image_size: int, batch_size: int, num_steps: int, guidance_scale: float = 7.0) -> dict:
    """GFLOPs of one AP step (inpainting, CFG) per network: ``{name: {forward, backward, calls}}``."""
    from advprompts.tasks.models import load_task_model

    unet, vae, text = _meta(comps.unet), _meta(comps.vae), _meta(comps.text_encoder)
    rows = 2 * batch_size if guidance_scale > 1 else batch_size
    h, length = image_size // comps.vae_scale_factor, comps.tokenizer.model_max_length
    m = dict(device="meta")
    ids = torch.zeros(batch_size, length, dtype=torch.long, **m)
    emb = torch.randn(rows, length, text.config.hidden_size, requires_grad=True, **m)
    lat = torch.randn(rows, unet.config.in_channels, h, h, requires_grad=True, **m)
    z = torch.randn(batch_size, vae.config.latent_channels, h, h, requires_grad=True, **m)
    x = torch.randn(batch_size, 3, image_size, image_size, requires_grad=True, **m)
    with torch.device("meta"):
        task = load_task_model("small_cnn", 2).requires_grad_(False).eval()
    # Prompt and empty CFG prompt forwards; the prompt's backward costs about one forward.
    text_f = _count(lambda: text(ids)[0], backward=False)[0]
    out = {"text_encoder": {"forward": 2 * text_f, "backward": text_f, "calls": 2}}
    f, b = _count(lambda: unet(lat, torch.tensor(500, **m), encoder_hidden_states=emb).sample)
    out["unet"] = {"forward": f * num_steps, "backward": b * num_steps, "calls": num_steps,
                   "checkpoint_recompute": f * num_steps}
    f, b = _count(lambda: vae.decode(z).sample)
    out["vae_decode"] = {"forward": f, "backward": b, "calls": 1}
    out["vae_encode"] = {"forward": _count(lambda: vae.encode(x).latent_dist.mean, backward=False)[0],
                         "backward": 0.0, "calls": 1}
    f, b = _count(lambda: task(x))
    out["task_model"] = {"forward": f, "backward": b, "calls": 1}
    # Generating one image with 15 steps: forwards only (UNet under CFG, VAE encode + decode).
    out["generate_15_steps_per_image"] = (15 * out["unet"]["forward"] / num_steps + out["vae_decode"]["forward"]
                                          + out["vae_encode"]["forward"]) / batch_size
    return out


def _table() -> str:
    from advprompts.perf import models

    arch, _ = models.embedded_architecture()
    lines = ["model | px | batch | K | text | UNet fwd | UNet bwd | ckpt recompute | VAE dec f+b | VAE enc | task |"
             " step (with ckpt) | generate, 15 steps, per image", "---|" * 12 + "---"]
    for name, comps, sizes in (("embedded", arch, ((64, 2), (64, 8), (128, 2))),
                               ("SD 1.5", _meta_components(models), ((256, 1), (384, 1), (384, 8), (512, 1)))):
        for px, b in sizes:
            f = step_flops(comps, px, b, 5)
            t, u, v = f["text_encoder"], f["unet"], f["vae_decode"]
            e, tk = f["vae_encode"]["forward"], f["task_model"]["forward"] + f["task_model"]["backward"]
            step = t["forward"] + t["backward"] + u["forward"] + u["backward"] + v["forward"] + v["backward"] + e + tk
            lines.append(f"{name} | {px} | {b} | 5 | {t['forward'] + t['backward']:.1f} | {u['forward']:.0f} | "
                         f"{u['backward']:.0f} | {u['checkpoint_recompute']:.0f} | {v['forward'] + v['backward']:.0f} | "
                         f"{e:.0f} | {tk:.1f} | {step:.0f} ({step + u['checkpoint_recompute']:.0f}) | "
                         f"{f['generate_15_steps_per_image']:.0f}")
    return "GFLOPs per optimisation step (K = 5 DDIM steps, CFG, inpainting)\n" + "\n".join(lines)


def _meta_components(models):
    """SD 1.5's architecture without allocating its 4 GB of weights."""
    real_to = models.Components.to
    models.Components.to = lambda self, device, dtype=None: self
    try:
        with torch.device("meta"):
            return models.sd15_components("meta")
    finally:
        models.Components.to = real_to


if __name__ == "__main__":
    print(_table())

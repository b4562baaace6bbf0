"""Diagnostic: do the VAE's artefacts alone stop generated data from transferring to renders?

Replaces a generated pool of a finished experiment (e.g. OUT/pools/agnostic-s0 of `advprompts demo
--quick`) by 128 real OOD images passed through the embedded VAE (encode, decode) with the bird's
pixels pasted back, as generation does; delete that method's cells and rerun the same experiment
command on OUT: only those cells are recomputed.

    python docs/experiments/vae_roundtrip_ood_pool.py BENCH_DIR OUT/pools/agnostic-s0 ZOO_DIR
    rm OUT/cells/agnostic-*; advprompts experiment --config demo-quick --out OUT

BENCH_DIR: the exported benchmark (`advprompts data export waterbirds-synth --out BENCH_DIR`).
"""
from __future__ import annotations

import csv
import shutil
import sys
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKL
from PIL import Image

FIELDS = ["file_name", "label", "label_name", "source_file", "prompt", "prompt_file", "seed", "index", "group"]


def _load(path: Path) -> torch.Tensor:
    return torch.from_numpy(np.array(Image.open(path))).float() / 255


def main(bench: Path, pool: Path, zoo: Path, n: int = 128) -> None:
    vae = AutoencoderKL.from_pretrained(zoo / "sd" / "vae", torch_dtype=torch.float32).eval()
    rows = [r for r in csv.DictReader(open(bench / "metadata.csv")) if r["split"] == "ood_pool"]
    rows = [rows[i] for i in np.random.default_rng(0).permutation(len(rows))[:n]]
    x = torch.stack([_load(bench / r["file_name"]).permute(2, 0, 1) for r in rows])
    m = torch.stack([_load(bench / r["mask_file"])[None] for r in rows])
    with torch.no_grad():
        rec = ((vae.decode(vae.encode(x * 2 - 1).latent_dist.mean).sample + 1) / 2).clamp(0, 1)
    out = m * x + (1 - m) * rec  # the bird's own pixels, as generation pastes them back
    shutil.rmtree(pool / "u0" / "images", ignore_errors=True)
    (pool / "u0" / "images").mkdir(parents=True)
    inner, top = [], []
    for i, (r, img) in enumerate(zip(rows, out)):
        name = f"images/{i:05d}.png"
        Image.fromarray((img.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(pool / "u0" / name)
        meta = dict(label=r["label"], label_name=r["label_name"], source_file=r["file_name"], prompt="vae-roundtrip",
                    prompt_file="", seed=0, index=i, group=r["group"])
        inner.append({"file_name": name, **meta})
        top.append({"file_name": f"u0/{name}", **meta})
    for path, data in ((pool / "u0" / "metadata.csv", inner), (pool / "metadata.csv", top)):
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, FIELDS)
            w.writeheader()
            w.writerows(data)
    print(f"wrote {len(rows)} images; mean absolute change outside the mask {float(((out - x).abs() * (1 - m)).mean()):.4f}")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]))

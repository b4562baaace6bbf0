"""Probe: how close can plain text prompts get to a wildcam-synth target group's images in CLIP space?
Prints the embedded CLIP's cosine to the group's mean image embedding (the `image_cosine` guidance target)
for the target images themselves, 32 train night scenes, 32 random train scenes, and each text prompt
generated from those 32 random train scenes (5 DDIM steps, CFG 5, inpainting, the animal pasted back, as the
wildcam-synth preset generates), with the oracle's share at night and label faithfulness.

    python docs/experiments/wildcam_night_probe.py <experiment folder> <group> "<prompt with {class}>" ...

e.g. `... runs/wc loc13-night "a camera trap photo of a {class}" "a camera trap photo of a {class} in the snow
at night, grey infrared"` (FINDINGS: 0.649 for the latter; GAP's learned prompt for that group ends at 0.535).
"""

import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from advprompts.data.folder import FolderDataset, load_images
from advprompts.models.loading import load_clip, load_components
from advprompts.sampler import Sampler
from advprompts.world.benchmarks import cached_export
from advprompts.zoo.corpus import OBJECT_NAMES
from advprompts.zoo.oracle import Oracle
from advprompts.zoo.paths import zoo_dir

run, group, prompts = Path(sys.argv[1]), sys.argv[2], sys.argv[3:]
clip = load_clip("embedded-clip")
targets = load_images(str(run / "targets" / group), max_images=64)
with torch.no_grad():
    mean = clip(targets).float().mean(0)


def cosine(images: torch.Tensor) -> float:
    with torch.no_grad():
        return F.cosine_similarity(clip(images).float(), mean[None], dim=-1).mean().item()


ds = FolderDataset(cached_export("wildcam-synth"), split="train")
rng = np.random.default_rng(0)
print(f"target images {cosine(targets):.3f}")
night = [i for i in range(len(ds)) if ds.rows[i]["time"] == "night"]
print(f"train night scenes {cosine(torch.stack([ds[int(i)]['image'] for i in rng.choice(night, 32, replace=False)])):.3f}")
pick = rng.choice(len(ds), 32, replace=False)
items = [ds[int(i)] for i in pick]
names = [ds.rows[int(i)]["label_name"] for i in pick]
x, m = torch.stack([it["image"] for it in items]), torch.stack([it["mask"] for it in items]).float()
print(f"train scenes {cosine(x):.3f}")
sampler, oracle = Sampler(load_components("embedded-inpaint")), Oracle.load(zoo_dir() / "oracle")
seen = [*OBJECT_NAMES, "empty"]
for p in prompts:
    with torch.no_grad():
        out = sampler([p.replace("{class}", n) for n in names], num_steps=5, guidance_scale=5.0, source=x,
                      object_mask=m, paste=True, generator=torch.Generator().manual_seed(0), grad=False).images
    pred = oracle.predict(out)
    faithful = np.mean([seen[o] == n for o, n in zip(pred["object"], names)])
    print(f"{p!r}: cosine {cosine(out):.3f}, at night {np.mean(pred['night'] == 1):.2f}, faithful {faithful:.2f}")

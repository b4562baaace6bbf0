"""Probe: is "this image is generated" a shortcut the fine-tuned CNN takes instead of the bird?

A pool that holds only the missing combinations (ducks on land, sparrows on water) is itself perfectly
anti-correlated with the background, so a CNN that can tell generated images from renders can learn
"generated: swap the background rule" and never look at the bird. For one finished experiment (seed 0)
and one of its generated pools this prints:

1. how well the task CNN (fresh from the pretrained backbone) tells the pool's images from train renders,
   on held-out halves of both;
2. test accuracy per group after fine-tuning the base model as the experiment's cells do, on
   (a) train + pool, and (b) train passed through the embedded VAE (the bird's pixels pasted back, as
   generation does) + pool: if generated-ness is the shortcut, (b) takes it away and lifts the missing
   groups.

    ADVPROMPTS_ZOO_DIR=<zoo> python docs/experiments/shortcut_probe.py <experiment folder> <config> <method> \
        [key=value overrides the experiment ran with]

e.g. `... runs/gap-class docs/experiments/waterbirds-gap-class-guidance-probe.yaml gap_class` (about 2 min on
2 cores). Nothing in the experiment folder is written.
"""

import sys
from pathlib import Path

import torch

from advprompts.data import resolve_dataset
from advprompts.experiments.config import load_experiment_config
from advprompts.experiments.pools import load_pool
from advprompts.experiments.runner import ExperimentRunner
from advprompts.tasks.train import Tensors, evaluate, predict, train_classifier

torch.set_num_threads(2)
out, config, method, overrides = Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4:]
cfg = load_experiment_config(config, overrides, None)
runner = ExperimentRunner(cfg, out, say=lambda s: None, progress=False)
train = runner.train_data
pool = load_pool(out / "pools" / f"{method}-s0", 0, cfg.max_extra, runner.task_size)

# 1. Generated or rendered? Balanced halves, label 1 = generated.
g = torch.Generator().manual_seed(0)
real = train.subset(torch.randperm(len(train), generator=g)[: 2 * len(pool)].tolist())
half = len(pool) // 2
both = Tensors.concat([Tensors(real.images, torch.zeros(len(real), dtype=torch.long)),
                       Tensors(pool.images, torch.ones(len(pool), dtype=torch.long))])
fit = list(range(len(real) // 2)) + [len(real) + i for i in range(half)]
held = [i for i in range(len(both)) if i not in set(fit)]
detector = train_classifier(runner.new_model(), both.subset(fit), cfg.finetune, seed=0, augment="none",
                            progress=False)
with torch.no_grad():
    right = (predict(detector, both.subset(held).images) == both.subset(held).labels).float()
print(f"detector generated-vs-render, held-out accuracy {right.mean():.3f} "
      f"(renders {right[: len(real) - len(real) // 2].mean():.3f}, generated {right[len(real) - len(real) // 2:].mean():.3f})")

# 2. The shortcut taken away: train images through the VAE, the bird pasted back.
vae = runner.components.vae
ds = resolve_dataset(cfg.benchmark, split=cfg.train_split, image_size=runner.image_size)
rebuilt = []
with torch.no_grad():
    for start in range(0, len(ds), 64):
        items = [ds[i] for i in range(start, min(start + 64, len(ds)))]
        x = torch.stack([it["image"] for it in items])
        m = torch.stack([it["mask"] for it in items]).float()
        rec = ((vae.decode(vae.encode(x.to(vae.dtype) * 2 - 1).latent_dist.mean).sample.float() + 1) / 2).clamp(0, 1)
        rebuilt.append(m * x + (1 - m) * rec)
rebuilt = torch.cat(rebuilt)
if rebuilt.shape[-1] != train.images.shape[-1]:
    rebuilt = torch.nn.functional.interpolate(rebuilt, size=train.images.shape[-2:], mode="bilinear", antialias=True)
vae_train = Tensors((rebuilt * 255).round().to(torch.uint8), train.labels, train.groups)
for name, base in (("train + pool", train), ("VAE(train) + pool", vae_train)):
    model = runner.base_model(0)
    train_classifier(model, Tensors.concat([base, pool]), cfg.finetune, seed=1, augment="none", progress=False)
    ev = evaluate(model, runner.eval_data).row()
    print(name, {k: round(100 * v, 1) for k, v in ev.items() if k.startswith("acc_") or k.endswith("_acc")})

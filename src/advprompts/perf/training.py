"""``finetune_fast_speedup``: the task model's fine-tuning with and without its opt-in fast path.

The same :func:`advprompts.tasks.train.train_classifier` call (small CNN, the suite's resolution, the
experiments' batch of 64) runs once on the default fp32 path and once with ``autocast: bf16`` and
``channels_last: true``; the speed-up is the ratio of the wall times. Both runs start from the same
weights and data, so the agreement of their predictions on held-out images is reported beside it: the fast
path is not bit-identical, and this says how far it moves the model.
"""

from __future__ import annotations

import time

import torch

from advprompts.perf.suites import Suite


def finetune_fast_speedup(suite: Suite, device: torch.device) -> dict:
    """Seconds per training step on each path, their ratio and the share of equal test predictions."""
    from advprompts.tasks.models import load_task_model
    from advprompts.tasks.train import Tensors, TrainRecipe, predict, train_classifier

    g = torch.Generator().manual_seed(0)
    size, n = suite.image_size, suite.train_images
    labels = torch.arange(2 * n) % 2
    images = (torch.rand(2 * n, 3, size, size, generator=g) * 160 + labels.view(-1, 1, 1, 1) * 60).to(torch.uint8)
    train, test = Tensors(images[:n], labels[:n]), images[n:]
    torch.manual_seed(0)
    start = load_task_model("small_cnn", 2).state_dict()
    seconds, predictions = {}, {}
    for name, fast in (("fp32", {}), ("bf16_channels_last", {"autocast": "bf16", "channels_last": True})):
        model = load_task_model("small_cnn", 2).to(device)
        model.load_state_dict(start)
        recipe = TrainRecipe(epochs=suite.train_epochs, batch_size=64, **fast)
        train_classifier(model, train.subset(range(min(n, 128))), recipe.model_copy(update={"epochs": 1}))  # warm-up
        model.load_state_dict(start)
        t0 = time.perf_counter()
        train_classifier(model, train, recipe, seed=0)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds[name] = time.perf_counter() - t0
        predictions[name] = predict(model, test)
    steps = suite.train_epochs * -(-n // 64)
    return {"finetune_fast_speedup": seconds["fp32"] / seconds["bf16_channels_last"],
            "finetune_fast": {"arch": "small_cnn", "images": n, "image_size": size, "epochs": suite.train_epochs,
                              "fp32_s_per_step": seconds["fp32"] / steps,
                              "fast_s_per_step": seconds["bf16_channels_last"] / steps,
                              "prediction_agreement": float((predictions["fp32"] == predictions["bf16_channels_last"])
                                                            .float().mean())}}

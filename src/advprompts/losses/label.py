"""Label-preservation terms: keep what a generated image shows the labelled class while the other
terms change its scene. Image guidance from unlabelled target images asks for what those images
show, animals included: in an empty camera-trap scene (nothing to keep, everything repainted) the
generator paints one, and the task model then learns "empty" from an elephant."""

from __future__ import annotations

import torch.nn.functional as F

from advprompts.errors import ConfigError
from advprompts.losses.registry import LossInputs, LossResources, LossTerm, register_loss


@register_loss("label_clip")
class LabelCLIP(LossTerm):
    """CLIP zero-shot cross-entropy of each generation towards its source's class.

    Args:
        classes: the task's class names in label order (the zero-shot classifier's classes).
        template: class text, ``{class}`` replaced by the name.
        texts: per-class text replacing the template (e.g. ``{empty: "an empty camera trap photo"}``).
        clip: CLIP spec as for image guidance (``embedded-clip``, a folder or a hub id).
    """

    def __init__(self, classes: list[str], template: str = "a photo of a {class}",
                 texts: dict[str, str] | None = None, clip: str = "embedded-clip"):
        if len(classes) < 2:
            raise ValueError(f"classes={classes}; a zero-shot classifier needs at least 2")
        unknown = sorted(set(texts or {}) - set(classes))
        if unknown:
            raise ValueError(f"texts names {unknown[0]!r}, which is not among classes {classes}")
        self.texts = [(texts or {}).get(c, template.replace("{class}", c)) for c in classes]
        self.clip_spec = clip

    def setup(self, resources: LossResources) -> None:
        from advprompts.models.loading import load_clip

        self.clip = load_clip(self.clip_spec, device=resources.device)
        self.class_embeddings = F.normalize(self.clip.embed_text(self.texts).float(), dim=-1)
        self.logit_scale = float(self.clip.clip.logit_scale.exp())  # CLIP's own temperature

    def __call__(self, inputs: LossInputs):
        if inputs.labels is None:
            raise ConfigError("loss 'label_clip' needs labelled source samples")
        labels = inputs.labels.to(inputs.images.device)
        if int(labels.max()) >= len(self.texts):
            raise ConfigError(f"loss 'label_clip' has {len(self.texts)} classes but a sample is labelled "
                              f"{int(labels.max())}; list every class of the task under classes:")
        images = F.normalize(self.clip(inputs.images).float(), dim=-1)
        return F.cross_entropy(self.logit_scale * images @ self.class_embeddings.T, labels)

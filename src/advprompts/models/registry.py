"""Diffusion, ControlNet and CLIP models by name: the loaders look a spec up here before reading it as
a folder or a hub id. The core registers its seeded random ``tiny`` models (in
:mod:`advprompts.models.loading`); the model zoo registers the shipped ``embedded`` ones as a plugin
(see :mod:`advprompts.registry`)."""

from __future__ import annotations

from advprompts.registry import Registry

#: name -> ``f(scheduler) -> Components`` (float32 on CPU, not yet frozen; ``scheduler`` as in load_components).
PIPELINES = Registry("diffusion model")
#: name -> ``f() -> ControlNetModel``.
CONTROLNETS = Registry("ControlNet")
#: name -> ``f() -> ClipImageEncoder`` on CPU.
CLIPS = Registry("CLIP model")

register_pipeline = PIPELINES.register
register_controlnet = CONTROLNETS.register
register_clip = CLIPS.register

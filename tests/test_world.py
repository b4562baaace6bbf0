"""The procedural world: determinism, masks, captions."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch
from torch.nn import functional as F

from advprompts.world.captions import caption, canonical_prompt
from advprompts.world.objects import OBJECTS
from advprompts.world.places import LAND_PLACES, PLACES, WATER_PLACES
from advprompts.world.render import Scene, random_scene, render, web_scene


def test_vocabularies_are_large_enough():
    assert len(OBJECTS) >= 12 and len(PLACES) >= 12
    assert sum(o.kind == "bird" for o in OBJECTS.values()) >= 2
    assert sum(o.kind == "mammal" for o in OBJECTS.values()) >= 6
    assert len(WATER_PLACES) >= 4 and len(LAND_PLACES) >= 6


def test_render_is_deterministic_and_seed_dependent():
    s = Scene(place="lake", obj="duck", seed=7, distractors=2)
    a, ma = render(s)
    b, mb = render(s)
    assert a.shape == (64, 64, 3) and a.dtype == np.uint8 and ma.shape == (64, 64)
    assert np.array_equal(a, b) and np.array_equal(ma, mb)
    c, _ = render(replace(s, seed=8))
    assert np.abs(a.astype(int) - c.astype(int)).mean() > 5


def test_mask_covers_exactly_the_object():
    rng = np.random.default_rng(0)
    for obj in OBJECTS:
        scene = random_scene(rng, obj, "desert")
        with_obj, mask = render(scene)
        without, empty = render(replace(scene, obj=None))
        assert empty.max() == 0 and 0.01 < (mask > 0).mean() < 0.6, obj
        # Outside the (slightly dilated) mask the background is untouched; inside, the object shows.
        m = torch.from_numpy(mask > 0).float()[None, None]
        grown = F.max_pool2d(m, 3, 1, 1)[0, 0].numpy() > 0
        diff = np.abs(with_obj.astype(int) - without.astype(int)).sum(-1)
        assert diff[~grown].max() == 0, obj
        assert diff[mask > 0].mean() > 20, obj


def test_night_is_grey_and_dark():
    day, _ = render(Scene(place="savanna", obj="zebra", seed=3))
    night, _ = render(Scene(place="savanna", obj="zebra", seed=3, time="night"))
    assert night.mean() < day.mean() * 0.7
    assert np.abs(night[..., 0].astype(int) - night[..., 2].astype(int)).max() == 0


def test_camera_location_fixes_the_layout():
    a, _ = render(Scene(place="ignored", obj=None, location=3, seed=1))
    b, _ = render(Scene(place="ignored", obj=None, location=3, seed=2))
    c, _ = render(Scene(place="ignored", obj=None, location=4, seed=1))
    same = np.abs(a.astype(int) - b.astype(int)).mean()
    other = np.abs(a.astype(int) - c.astype(int)).mean()
    assert same < 0.5 * other


def test_captions_vary_and_say_what_they_mention():
    rng = np.random.default_rng(0)
    scene = web_scene(np.random.default_rng(5))
    scene = replace(scene, obj="giraffe", place="snow", time="night", location=None)
    caps = [caption(scene, rng) for _ in range(200)]
    assert len({c.text for c in caps}) > 20
    assert all("night" in c.text for c in caps)
    for c in caps:
        if c.says_object:
            assert "giraffe" in c.text
        if c.says_place:
            assert any(w in c.text for w in ("snow",))
    assert canonical_prompt("impala", "bamboo forest") == "a photo of an impala in a bamboo forest"


def test_public_api_resolves_lazily():
    """Each exported name is the function or class it names, the same object before and after its
    module is imported (an export sharing a submodule's name would turn into that module)."""
    import importlib
    import inspect
    import pkgutil

    import advprompts

    submodules = {m.name for m in pkgutil.iter_modules(advprompts.__path__)}
    for name in advprompts.__all__:
        assert name not in submodules, f"advprompts.{name} is both an export and a submodule"
        obj = getattr(advprompts, name)
        assert (inspect.isfunction(obj) or inspect.isclass(obj)) and obj.__name__ == name, (name, obj)
        importlib.import_module(obj.__module__)
        assert getattr(advprompts, name) is obj, name
    from advprompts import optimize
    from advprompts.optim.loop import optimize as loop_optimize

    assert optimize is loop_optimize


def test_kind_captions_match_every_object_of_that_kind():
    from advprompts.zoo.corpus import render_corpus
    from advprompts.zoo.trainers import caption_match

    rng = np.random.default_rng(0)
    duck = replace(web_scene(np.random.default_rng(1)), obj="duck", place="lake", time="day", location=None)
    caps = [caption(duck, rng) for _ in range(400)]
    kind = [c for c in caps if c.says_kind]
    assert 0.05 < len(kind) / len(caps) < 0.2
    assert all("bird" in c.text and "duck" not in c.text and not c.says_object for c in kind)
    assert not any(c.says_kind for c in (caption(replace(duck, obj="car"), rng) for _ in range(200)))

    corpus = render_corpus(60, seed=3)
    names = [s.obj for s in corpus.scenes]
    i_duck = next(i for i, o in enumerate(names) if o == "duck")
    i_sparrow = next(i for i, o in enumerate(names) if o == "sparrow")
    i_cattle = next(i for i, o in enumerate(names) if o == "cattle")
    idx = np.array([i_duck, i_sparrow, i_cattle])
    def named(obj):  # a caption naming the object but not the place
        scene = corpus.scenes[{"sparrow": i_sparrow, "cattle": i_cattle}[obj]]
        return next(c for c in (caption(scene, rng) for _ in range(200)) if c.says_object and not c.says_place)

    caps = [next(c for c in kind if not c.says_place), named("sparrow"), named("cattle")]
    m = caption_match(caps, replace(corpus, night=np.zeros(len(corpus), bool)), idx)
    # "a bird" (a caption of the duck) fits both birds; "a sparrow" only the sparrow
    assert m.tolist() == [[1, 1, 0], [0, 1, 0], [0, 0, 1]]

"""Web-alt-text-like captions for scenes: varied wording, synonyms, optional details.

A caption does not always mention everything in the image (alt-text rarely does): it says
which attributes it constrains, so contrastive training knows which images also match it.
Some captions name only the kind ("a bird", "an animal"), as alt-text often does: without them
the models never see "bird" alone and read the prompt "a photo of a bird" as one species.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from advprompts.world.objects import OBJECTS
from advprompts.world.places import PLACES
from advprompts.world.render import Scene


@dataclass(frozen=True)
class Caption:
    text: str
    says_object: bool  # the text names the object (or says the scene is empty)
    says_place: bool  # the text names the place
    says_kind: bool = False  # the text names only the object's kind, so it matches the whole kind
    # Time is always implied: night captions say so, captions without night words mean day.


def canonical_prompt(obj: str | None, place: str) -> str:
    """The gate prompt: "a photo of a {object} in/on {place}" (or of an empty place)."""
    if obj is None:
        return f"an empty photo {PLACES[place].phrase}"
    return f"a photo of {_article(obj)} {obj} {PLACES[place].phrase}"


def object_prompt(obj: str) -> str:
    return f"a photo of {_article(obj)} {obj}"


def place_prompt(place: str) -> str:
    return f"a photo taken {PLACES[place].phrase}"


# The generic word of each kind of object (things have none: "a thing" is not alt-text).
KIND_WORDS = {"bird": "bird", "mammal": "animal"}
KIND_CAPTION_P = 0.12  # share of object captions that name only the kind


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _verb(obj: str, water: bool) -> str:
    kind = OBJECTS[obj].kind
    if kind == "thing":
        return "parked" if obj == "car" else ("floating" if obj in ("boat", "balloon") else "pitched")
    if water and kind == "bird":
        return "swimming"
    return "standing" if kind == "mammal" else "perched"


def caption(scene: Scene, rng: np.random.Generator) -> Caption:
    """A random caption of `scene`; canonical names most of the time, synonyms sometimes."""
    place = PLACES[scene.place]
    pp = place.phrase if rng.random() < 0.6 else str(rng.choice(place.synonyms))
    r = rng.random()
    says_kind = False
    if scene.obj is None:
        name = place.name
        if r < 0.8:
            options = [f"an empty photo {pp}", f"an empty {name}", f"nothing but the {name}",
                       f"no animal, just the {name}"]
            if scene.location is not None:
                options.append(f"an empty camera trap photo {pp}")
            text, says_obj, says_place = str(rng.choice(options)), True, True
        else:
            text, says_obj, says_place = str(rng.choice([f"a photo taken {pp}", f"a view of the {name}"])), False, True
    else:
        spec = OBJECTS[scene.obj]
        o = scene.obj if rng.random() < 0.75 else spec.synonyms[int(rng.integers(len(spec.synonyms)))]
        kind_only = spec.kind in KIND_WORDS and rng.random() < KIND_CAPTION_P
        if kind_only:
            o = KIND_WORDS[spec.kind]
        a = _article(o)
        verb = _verb(scene.obj, place.water)
        if r < 0.75:
            options = [f"a photo of {a} {o} {pp}", f"{a} {o} {pp}", f"{a} {o} {verb} {pp}",
                       f"{pp}, {a} {o}", f"photo of {a} {o} {verb} {pp}"]
            if scene.location is not None:
                options += [f"a camera trap photo of {a} {o} {pp}", f"camera trap: {a} {o} {pp}"]
            text, says_obj, says_place = str(rng.choice(options)), True, True
        elif r < 0.88:
            text, says_obj, says_place = str(rng.choice([f"a photo of {a} {o}", f"{a} {o}", f"a {verb} {o}"])), True, False
        else:
            text, says_obj, says_place = str(rng.choice([f"a photo taken {pp}", f"a view of the {place.name}"])), False, True
        says_kind, says_obj = kind_only and says_obj, says_obj and not kind_only
    if scene.time == "night":
        text += str(rng.choice([" at night", ", infrared night photo", " at night, grey infrared"]))
    elif rng.random() < 0.1:
        text += str(rng.choice([" during the day", ", daylight", ", sunny day"]))
    return Caption(text, says_obj, says_place, says_kind)

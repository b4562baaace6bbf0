"""Write ``docs/config-reference.md`` from the pydantic config classes, so the page cannot drift.

    python -m advprompts.config.reference            # rewrite docs/config-reference.md (from the repo root)
    python -m advprompts.config.reference --check    # exit 1 when the page differs

A field's description is its ``Field(description=...)`` when set, else the comments written with it
in the class body: comment lines just above the field, the comment at the end of its line, and
comment-only lines below it indented deeper (a wrapped comment). The schema keeps its descriptions as
comments next to each field, so reading them keeps one source of truth.
"""

from __future__ import annotations

import inspect
import io
import re
import sys
import textwrap
import tokenize
import types
import typing
from pathlib import Path

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from advprompts.registry import Registry

DEFAULT_OUT = Path("docs/config-reference.md")
_FIELD = re.compile(r"^    (\w+)\s*:")

#: Fields whose definition carries no comment yet: their description lives here until it does.
_FALLBACK = {
    "ExperimentConfig.name": "run name (report title)",
    "ExperimentConfig.methods": "method name -> how its extra data is made (see `MethodSpec`)",
    "ExperimentConfig.train_split": "split the base model is trained on (and the sources of generated pools)",
    "ExperimentConfig.eval_split": "split every fine-tuned model is evaluated on, per group",
    "ExperimentConfig.task": "the task model: architecture, input size, initial weights",
    "ExperimentConfig.max_extra": "pool size: extra images generated per method and seed",
    "ExperimentConfig.budgets": "fractions of `max_extra` fine-tuned on (each a column of the results)",
    "ExperimentConfig.seeds": "seeds; each seed trains its own base model, prompts, pools and fine-tunes",
    "ExperimentConfig.generation": "how pools are generated from the train split (see `GenerationSettings`)",
    "MethodSpec.kind": "how the extra data is made: no_extra (none), real_ood (real images of ood_split), "
                       "text (fixed prompts), random (random embeddings), optimized (prompts learned with a "
                       "preset), augment (augmented copies of train images), derived (another method's pool "
                       "changed by the ablations `label_noise` / `oracle_filter`)",
    "MethodSpec.augment": "augment: which augmentation makes the extra copies",
    "GenerationSettings.steps": "DDIM steps", "GenerationSettings.guidance_scale": "CFG scale",
    "GenerationSettings.strength": "SDEdit strength (1 = start from noise)", "GenerationSettings.eta": "DDIM eta",
    "GenerationSettings.batch_size": "images per batch",
    "TaskSpec.arch": "task model: small_cnn, resnet18, resnet50, vit_b_16, torchvision:<name>, timm:<name>",
    "TaskSpec.input_size": "resize inputs to this size first (default: the architecture's)",
}


def _comments(cls: type) -> dict[str, str]:
    """Field name -> the comments written with it in ``cls``'s body (see the module docstring)."""
    source = textwrap.dedent(inspect.getsource(cls))
    lines = source.splitlines()
    trailing = {}  # line number (1-based) -> end-of-line comment of a code line
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT and lines[tok.start[0] - 1][: tok.start[1]].strip():
            trailing[tok.start[0]] = tok.string.lstrip("#").strip()
    out, above, current = {}, [], None
    for no, line in enumerate(lines, 1):
        stripped = line.strip()
        indent = len(line) - len(line.lstrip())
        if stripped.startswith("#"):
            text = stripped.lstrip("#").strip()
            if current is not None and indent > 4:  # a wrapped end-of-line comment
                out[current] = f"{out[current]} {text}".strip()
            elif indent == 4:
                above.append(text)
                current = None
            continue
        match = _FIELD.match(line)
        if match and match.group(1) in cls.model_fields:
            current = match.group(1)
            out[current] = " ".join([*above, trailing.get(no, "")]).strip()
        else:
            current = None
        above = []
    return out


def _type(ann) -> str:
    """A short, readable type: ``int``, ``str | None``, ``"ap" | "gp"``, ``list[int]``, a config's name."""
    origin, args = typing.get_origin(ann), typing.get_args(ann)
    if origin is typing.Literal:
        return " \\| ".join(f'"{a}"' for a in args)
    if origin in (typing.Union, types.UnionType):
        return " \\| ".join(_type(a) for a in args)
    if origin is not None:
        return f"{getattr(origin, '__name__', str(origin))}[{', '.join(_type(a) for a in args)}]"
    if ann is type(None):
        return "None"
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return f"[`{ann.__name__}`](#{ann.__name__.lower()})"
    return getattr(ann, "__name__", str(ann))


def _bounds(field) -> str:
    """Constraints from ``Field(ge=..., gt=..., min_length=...)`` as text, e.g. ``>= 1``."""
    names = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<", "min_length": "length >="}
    return ", ".join(f"{op} {getattr(m, key)}" for m in field.metadata for key, op in names.items()
                     if hasattr(m, key))


def _default(field) -> str:
    if field.default is PydanticUndefined and field.default_factory is None:
        return "**required**"
    value = field.default_factory() if field.default_factory is not None else field.default
    if isinstance(value, BaseModel):  # a nested config: its class, with the fields that differ
        try:
            base = type(value)().model_dump()
        except ValueError:  # the class has required fields: show them all
            base = {}
        changed = {k: v for k, v in value.model_dump().items() if k not in base or v != base[k]}
        return f"`{type(value).__name__}({', '.join(f'{k}={v!r}' for k, v in changed.items())})`"
    return f"`{value!r}`".replace("|", "\\|")


def _section(cls: type) -> list[str]:
    doc = (cls.__doc__ or "").strip().splitlines()
    comments = _comments(cls)
    rows = [f"## {cls.__name__}", ""]
    if doc and not doc[0].startswith("!!!"):  # pydantic's BaseModel docstring is not the class's own
        rows += [doc[0], ""]
    rows += ["| field | type | default | description |", "|---|---|---|---|"]
    for name, field in cls.model_fields.items():
        text = field.description or comments.get(name) or _FALLBACK.get(f"{cls.__name__}.{name}", "")
        kind = _type(field.annotation) + (f" ({_bounds(field)})" if _bounds(field) else "")
        text = re.sub(r"<(?=\w)", r"\\<", text.replace("|", "/"))  # "<w>" would read as an HTML tag
        rows.append(f"| `{name}` | {kind} | {_default(field)} | {text} |")
    return [*rows, ""]


def _nested(roots: list[type]) -> list[type]:
    """The roots and every config class their fields use, in order of first appearance."""
    seen: list[type] = []

    def visit(cls: type) -> None:
        if cls in seen:
            return
        seen.append(cls)
        for field in cls.model_fields.values():
            for ann in (field.annotation, *typing.get_args(field.annotation)):
                for arg in (ann, *typing.get_args(ann)):
                    if isinstance(arg, type) and issubclass(arg, BaseModel):
                        visit(arg)

    for root in roots:
        visit(root)
    return seen


#: Configs the page documents after the core's, name -> (class, what reads it); the experiments add theirs.
DOCUMENTED = Registry("documented config")


def render() -> str:
    """The whole page, as ``docs/config-reference.md`` holds it."""
    from advprompts.config.schema import GenerateConfig, RunConfig

    more = DOCUMENTED.complete()

    parts = [
        "# Configuration reference",
        "",
        "Generated from the pydantic config classes by `python -m advprompts.config.reference`; do not edit",
        "by hand (a test fails when this page and the code differ). Every config is YAML; unknown keys and",
        "wrong types are rejected with one line naming the key. Override any field on the command line with",
        "`--set a.b=value` (a YAML value; list items by index: `--set losses.1.weight=5`).",
        "",
        "- [`RunConfig`](#runconfig): `advprompts optimize --config` (presets: `advprompts presets`).",
        "- [`GenerateConfig`](#generateconfig): what `advprompts generate --source` builds from its flags "
        "(`generate_dataset` in Python).",
        *(f"- [`{name}`](#{name.lower()}): {usage}" for name, (_, usage) in more.items()),
        "",
        "Loss terms and their `params`: [engine.md](engine.md#config-runconfig-yaml).",
        "",
    ]
    for cls in _nested([RunConfig, GenerateConfig, *(cls for cls, _ in more.values())]):
        parts += _section(cls)
    return "\n".join(parts).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    check = "--check" in args
    paths = [a for a in args if not a.startswith("--")]
    out = Path(paths[0]) if paths else DEFAULT_OUT
    text = render()
    if check:
        if not out.is_file() or out.read_text() != text:
            print(f"{out} is out of date: run python -m advprompts.config.reference", file=sys.stderr)
            return 1
        return 0
    out.write_text(text)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    # Run the imported module's main, not this __main__ copy: the plugins register with the former.
    from advprompts.config.reference import main as imported_main

    sys.exit(imported_main())

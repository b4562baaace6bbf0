"""Presets (YAML files shipped in ``config/presets/``), config files and ``--set`` overrides."""

from __future__ import annotations

import importlib.metadata
import logging
import platform
from dataclasses import dataclass
from pathlib import Path

import yaml

from advprompts.config.schema import RunConfig, parse_config
from advprompts.errors import ConfigError
from advprompts.fsio import atomic_write_text
from advprompts.registry import Registry

logger = logging.getLogger(__name__)

PRESET_DIR = Path(__file__).parent / "presets"
_EXTRA_DIRS: list[Path] = []


def add_preset_dir(path: str | Path) -> None:
    """Also scan ``path`` for ``*.yaml`` presets (e.g. the embedded benchmarks)."""
    _EXTRA_DIRS.append(Path(path))


def _preset_files() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for folder in [PRESET_DIR, *_EXTRA_DIRS]:
        for f in sorted(folder.glob("*.yaml")):
            found.setdefault(f.stem, f)
    return found


def list_presets() -> list[str]:
    """Names of the shipped presets, usable wherever a config file is expected."""
    return sorted(_preset_files())


def preset_description(name: str) -> str:
    """The first comment line of a preset file."""
    return describe(_preset_files()[name])


def describe(path: Path) -> str:
    """The first line of a YAML file when it is a comment (a preset's one-line description), else "";
    "..." marks a sentence that the next comment line continues."""
    lines = Path(path).read_text().splitlines()[:2]
    if not lines or not lines[0].startswith("#"):
        return ""
    first = lines[0].lstrip("# ").strip()
    continued = len(lines) > 1 and lines[1].startswith("#") and not first.endswith(".")
    return first + " ..." if continued else first


@dataclass(frozen=True)
class PresetKind:
    """A kind of shipped preset: its heading, the command that takes it and its folder of ``*.yaml``."""

    heading: str
    usage: str
    folder: Path


#: Kinds of shipped presets by key, in listing order: ``optimize`` (one method's prompts, a RunConfig)
#: here; the experiments add ``experiment`` (methods x budgets x seeds, the closed loop) as a plugin.
PRESET_KINDS = Registry("preset kind")
PRESET_KINDS.add("optimize", PresetKind("optimisation presets", "advprompts optimize --config NAME", PRESET_DIR))


def presets_by_kind() -> dict[str, dict[str, Path]]:
    """Every shipped preset, name -> file, per kind (the keys of :data:`PRESET_KINDS`)."""
    return {key: _preset_files() if key == "optimize" else {f.stem: f for f in sorted(kind.folder.glob("*.yaml"))}
            for key, kind in PRESET_KINDS.complete().items()}


def find_yaml(spec: str | Path, presets: dict[str, Path] | None = None, what: str = "config",
              file_first: bool = False) -> Path:
    """The file of a preset name (a key of ``presets``, default the optimisation presets) or YAML path;
    ``file_first``: an existing file of that name wins over a preset (ConfigError if neither)."""
    presets = _preset_files() if presets is None else presets
    path = Path(spec) if file_first and Path(spec).is_file() else presets.get(str(spec), Path(spec))
    if not path.is_file():
        raise ConfigError(f"{what} {str(spec)!r} is neither a file nor a preset; presets: {', '.join(presets)}")
    return path


def read_yaml(spec: str | Path, presets: dict[str, Path] | None = None, what: str = "config",
              file_first: bool = False) -> dict:
    """The mapping in a YAML file or preset name (:func:`find_yaml`; ConfigError if neither, if the file
    is not YAML or does not hold a mapping)."""
    path = find_yaml(spec, presets, what, file_first)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{what} {str(path)!r} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{what} {str(path)!r} must hold a mapping, not {type(data).__name__}")
    return data


def load_yaml_config(spec: str | Path, schema: type, overrides: list[str] | tuple[str, ...] = (), *,
                     presets: dict[str, Path] | None = None, what: str = "config", file_first: bool = False):
    """A YAML file or preset name read (:func:`read_yaml`), ``--set`` overrides applied
    (:func:`apply_overrides`) and validated into ``schema``: the one way a YAML config is loaded.

    Raises:
        ConfigError: unknown file/preset, invalid YAML, malformed override, unknown key, wrong type or value.
    """
    data = apply_overrides(read_yaml(spec, presets, what, file_first), overrides)
    return parse_config(data, schema, what=f"{what} {spec}")


def apply_overrides(data: dict, overrides: list[str] | tuple[str, ...] = ()) -> dict:
    """Apply ``a.b=value`` overrides (values parsed as YAML) to a nested dict (copied).

    Unknown keys are caught by validation afterwards; malformed overrides raise ConfigError here.
    """
    import copy

    data = copy.deepcopy(data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r} is malformed; use --set a.b=value")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            raise ConfigError(f"override {item!r}: value is not valid YAML") from None
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    raise ConfigError(f"override {item!r}: {part!r} is not an index of the list")
                node = node[int(part)]
                continue
            if not isinstance(node.setdefault(part, {}), (dict, list)):
                raise ConfigError(f"override {item!r}: {part!r} is a value, not a section")
            node = node[part]
        last = parts[-1]
        if isinstance(node, list):
            if not last.isdigit() or int(last) >= len(node):
                raise ConfigError(f"override {item!r}: {last!r} is not an index of the list")
            node[int(last)] = value
        else:
            node[last] = value
    return data


def load_config(spec: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Load a config file or preset, apply ``--set`` overrides and validate it.

    Raises:
        ConfigError: unknown file/preset, invalid YAML, unknown key, wrong type or value.
    """
    return load_yaml_config(spec, RunConfig, overrides)


def versions() -> dict[str, str]:
    """Versions of the libraries that shape results (written into every run dir)."""
    out = {"python": platform.python_version()}
    for pkg in ("advprompts", "torch", "diffusers", "transformers", "accelerate", "torchvision"):
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def dump_config(config, path: str | Path, extra: dict | None = None) -> None:
    """Write the resolved config (+ library versions) as YAML, atomically."""
    path = Path(path)
    body = config.model_dump(mode="json")
    text = yaml.safe_dump(body, sort_keys=False)
    meta = {"versions": versions(), **(extra or {})}
    text += "# provenance (ignored when the file is loaded as a config)\n"
    text += "".join(f"# {line}\n" for line in yaml.safe_dump(meta, sort_keys=False).splitlines())
    atomic_write_text(path, text)  # its temp file is recognised as one: a run killed here resumes

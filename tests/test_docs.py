"""The user docs stay true to the code: the generated config reference is current, the generic SD 1.5
preset validates (offline, nothing downloaded), and every `advprompts ...` command in the README and the
tutorial names real commands and options, with --set overrides that validate against their preset."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import typer.main

from advprompts.cli.app import app
from advprompts.config.presets import list_presets, load_config
from advprompts.config.reference import DEFAULT_OUT, render
from advprompts.experiments.config import list_experiment_presets, load_experiment_config

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", ROOT / "docs" / "tutorial.md"]
GLOBAL_OPTIONS = {"--debug", "--verbose", "-v", "--version"}


def test_config_reference_is_current():
    page = ROOT / DEFAULT_OUT
    assert page.read_text() == render(), "docs/config-reference.md is stale: python -m advprompts.config.reference"


def test_sd15_gap_preset_validates_offline():
    from advprompts.losses import build_loss
    from advprompts.losses.assignment import check_rankable
    from advprompts.losses.registry import LossSet, WeightedTerm

    assert "sd15-gap" in list_presets()
    config = load_config("sd15-gap")
    assert config.method == "gap" and config.model.diffusion == "stable-diffusion-v1-5/stable-diffusion-v1-5"
    # No masks needed by default: SDEdit from the source image.
    assert config.sampler.conditioning == "none" and config.sampler.strength < 1.0
    # Building the terms checks their params without loading a model; the model's ranking needs both
    # an adversarial term and per-class prompts.
    losses = LossSet([WeightedTerm(build_loss(l.name, **l.params), l.weight, l.warmup, "") for l in config.losses])
    assert check_rankable(losses, config.prompt.per_class)
    # The masked variant the preset's comments and the README describe also validates.
    masked = load_config("sd15-gap", ["sampler.conditioning=inpaint", "sampler.strength=1.0",
                                      "model.diffusion=/models/sd15", "data.source=folder:train@data/mine"])
    assert masked.sampler.conditioning == "inpaint"


def _commands(path: Path) -> list[list[str]]:
    """Every `advprompts ...` command in the file's bash blocks, as argv lists (after `advprompts`)."""
    blocks = re.findall(r"```bash\n(.*?)```", path.read_text(), re.S)
    commands = []
    for block in blocks:
        text = re.sub(r"\\\n", " ", block)
        for line in text.splitlines():
            line = re.sub(r"\$\([^)]*\)", "", line)  # shell substitutions are arguments, not options
            words = shlex.split(line, comments=True)
            for i, word in enumerate(words):
                if word != "advprompts":
                    continue
                argv = []
                for w in words[i + 1:]:
                    if w in ("&&", "||", "|", ";", ">", ">>"):
                        break
                    argv.append(w)
                commands.append(argv)
    return commands


def _resolve(argv: list[str]):
    """The click command an argv names, and the arguments left for it."""
    command = typer.main.get_command(app)
    rest = [a for a in argv if a not in GLOBAL_OPTIONS]
    while rest and hasattr(command, "commands") and rest[0] in command.commands:
        command, rest = command.commands[rest[0]], rest[1:]
    return command, rest


def _values(rest: list[str], option: str) -> list[str]:
    return [rest[i + 1] for i, a in enumerate(rest[:-1]) if a == option]


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_doc_commands_match_the_cli(path):
    commands = _commands(path)
    assert commands, f"no advprompts commands found in {path.name}"
    for argv in commands:
        command, rest = _resolve(argv)
        assert not hasattr(command, "commands") or not rest or rest[0].startswith("-"), \
            f"{path.name}: unknown command in `advprompts {' '.join(argv)}`"
        known = {o for p in command.params for o in (*p.opts, *p.secondary_opts)} | {"--help"}
        for word in rest:
            if word.startswith("-") and word != "--":
                assert word.split("=")[0] in known, f"{path.name}: `{word}` is not an option of `advprompts {' '.join(argv)}`"
        configs, sets = _values(rest, "--config"), _values(rest, "--set")
        if configs and command.name == "optimize" and configs[0] in list_presets():
            load_config(configs[0], sets)
        if configs and command.name == "experiment" and configs[0] in list_experiment_presets():
            methods = _values(rest, "--methods")
            load_experiment_config(configs[0], sets, methods[0].split(",") if methods else None)


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_doc_python_snippets_compile(path):
    for i, code in enumerate(re.findall(r"```python\n(.*?)```", path.read_text(), re.S)):
        compile(code, f"{path.name} snippet {i}", "exec")

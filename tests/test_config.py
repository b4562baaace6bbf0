"""Config: presets, --set overrides parsed as YAML, strict validation, resolved config on disk."""

from __future__ import annotations

import pytest
import yaml

from advprompts.config.presets import apply_overrides, dump_config, list_presets, load_config
from advprompts.config.schema import RunConfig
from advprompts.errors import ConfigError


def test_presets_load_and_validate():
    assert {"tiny-ap", "tiny-gap"} <= set(list_presets())
    for name in list_presets():
        assert isinstance(load_config(name), RunConfig)
    gap = load_config("tiny-gap")
    assert [l.name for l in gap.losses] == ["opposite_ce", "text_l2", "image_cosine"] and gap.losses[0].warmup == 1


def test_overrides_are_yaml_and_nested():
    cfg = load_config("tiny-ap", ["prompt.seeds=[1,2,3]", "optim.lr=5e-4", "sampler.paste=false",
                                  "losses.0.weight=2.5", "model.controlnet=tiny", "sampler.conditioning=controlnet"])
    assert cfg.prompt.seeds == [1, 2, 3] and cfg.optim.lr == 5e-4 and cfg.sampler.paste is False
    assert cfg.losses[0].weight == 2.5 and cfg.model.controlnet == "tiny"
    assert apply_overrides({"a": {"b": 1}}, ["a.c.d=x"]) == {"a": {"b": 1, "c": {"d": "x"}}}


@pytest.mark.parametrize("override,match", [
    ("optim.beta=1", "unknown key 'optim.beta'"),
    ("optim=3", "invalid value for 'optim'"),
    ("optim.steps=1.5", "invalid value for 'optim.steps'"),
    ("prompt.template=no-placeholder", "prompt.template"),
    ("sampler.conditioning=controlnet", "needs model.controlnet"),
    ("sampler.strength=0.1", "sampler: strength=0.1 with num_steps=2 leaves no denoising step"),
    ("losses.3.weight=1", "not an index"),
    ("novalue", "malformed"),
])
def test_bad_overrides_are_one_line_config_errors(override, match):
    with pytest.raises(ConfigError, match=match) as info:
        load_config("tiny-ap", [override])
    assert "\n" not in str(info.value)


def test_frozen_and_resolved_config_round_trips(tmp_path):
    cfg = load_config("tiny-gap", ["optim.steps=7"])
    with pytest.raises(Exception):
        cfg.optim.steps = 3  # frozen
    dump_config(cfg, tmp_path / "config.yaml")
    text = (tmp_path / "config.yaml").read_text()
    assert "torch:" in text and "diffusers:" in text  # library versions as provenance comments
    assert load_config(tmp_path / "config.yaml") == cfg
    assert yaml.safe_load(text) == cfg.model_dump(mode="json")

"""Shared fixtures: tiny random diffusion components built offline (diffusers-test style)."""

from __future__ import annotations

import copy

import pytest
import torch

from advprompts.models.tiny import tiny_components

# Tiny models gain nothing from intra-op threads, and on a loaded 2-core machine OpenMP threads
# contend badly (a 10x slowdown was measured); one thread keeps the suite fast and stable.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def _tiny_session():
    return {
        "txt2img": tiny_components(seed=0),
        "inpaint9": tiny_components(seed=0, unet_in_channels=9),
        "controlnet": tiny_components(seed=0, controlnet=True),
    }


@pytest.fixture
def tiny(_tiny_session):
    """Fresh (deep-copied) tiny txt2img components; tests may add tokens to them."""
    return copy.deepcopy(_tiny_session["txt2img"]).freeze()


@pytest.fixture
def tiny_inpaint9(_tiny_session):
    return copy.deepcopy(_tiny_session["inpaint9"]).freeze()


@pytest.fixture
def tiny_controlnet(_tiny_session):
    return copy.deepcopy(_tiny_session["controlnet"]).freeze()


def source_batch(batch: int = 2, size: int = 16, seed: int = 0):
    """Random source images in [0, 1] and object masks (a centred square object)."""
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(batch, 3, size, size, generator=g)
    masks = torch.zeros(batch, 1, size, size)
    masks[:, :, size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] = 1.0
    return images, masks


def one_line_error(result, match: str) -> str:
    """Check a ``CliRunner`` result: exit status 2, one ``error: ...`` line containing ``match``, no
    traceback (progress bars aside: "%|"). Returns the line."""
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    lines = [line for line in result.output.strip().splitlines() if line.strip() and "%|" not in line]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.output, result.output
    assert match in lines[0], lines[0]
    return lines[0]

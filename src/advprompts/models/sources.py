"""Where a model spec points (a local folder or a hub id, found in the hub cache or online), and reading
a part of it with ``from_pretrained``; every failure a user can cause is a one-line ModelLoadError
that says how to get the model."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from advprompts.errors import ModelLoadError

#: Sub-folders a Stable Diffusion pipeline folder must hold, with their config file.
PIPELINE_PARTS = {
    "unet": "config.json",
    "vae": "config.json",
    "text_encoder": "config.json",
    "tokenizer": None,
    "scheduler": "scheduler_config.json",
}

#: What a local folder of each kind of model holds, and the hub id suggested for it.
_KINDS = {
    "pipeline": ("a local diffusers pipeline folder (unet/, vae/, text_encoder/, tokenizer/, scheduler/)",
                 "stable-diffusion-v1-5/stable-diffusion-v1-5"),
    "clip": ("a local transformers CLIPModel folder (config.json, model.safetensors, preprocessor_config.json, "
             "tokenizer files)", "openai/clip-vit-large-patch14"),
    "controlnet": ("a local diffusers ControlNetModel folder (config.json, diffusion_pytorch_model.safetensors)",
                   "lllyasviel/sd-controlnet-depth"),
}


def howto(spec: str, kind: str = "pipeline") -> str:
    """How to get the model ``spec`` names: the end of every message saying it cannot be loaded."""
    from huggingface_hub import constants

    folder, default = _KINDS[kind]
    repo = spec if "/" in spec and not Path(spec).is_absolute() and not spec.startswith((".", "~")) else default
    return (
        f"pass {folder}, or download it first with `hf download {repo} --local-dir DIR` (older huggingface_hub: "
        f"`huggingface-cli download`) and pass DIR, or point HF_HOME / HF_HUB_CACHE at a hub cache holding it "
        f"(now {constants.HF_HUB_CACHE})"
    )


def resolve_spec(spec: str, kind: str = "pipeline") -> tuple[str, bool]:
    """Return (location, is_local) for a model spec (``kind`` words the error messages)."""
    path = Path(spec).expanduser()
    looks_like_path = path.is_absolute() or spec.startswith((".", "~")) or path.exists() or spec.count("/") != 1
    if looks_like_path:
        if not path.is_dir():
            raise ModelLoadError(f"model folder {spec!r} does not exist; {howto(spec, kind)}")
        return str(path), True
    return _resolve_hub(spec, kind)


def _hub_reachable(timeout: float = 3.0) -> bool:
    from urllib.parse import urlparse

    from huggingface_hub import constants

    url = urlparse(os.environ.get("HF_ENDPOINT", constants.ENDPOINT))
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _resolve_hub(repo: str, kind: str = "pipeline") -> tuple[str, bool]:
    """A hub id: its cached snapshot if there is one; else fail at once when the hub cannot be reached.

    Without this, huggingface_hub retries every file for minutes before the first error.
    """
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(repo, local_files_only=True), True
    except Exception:  # not (fully) cached: any huggingface_hub error means the same here
        pass
    if _offline() or not _hub_reachable():
        why = "you are offline (HF_HUB_OFFLINE is set)" if _offline() else "the hub cannot be reached"
        from huggingface_hub import constants

        raise ModelLoadError(f"model {repo!r} is not in the hub cache {constants.HF_HUB_CACHE} and {why}; "
                             f"{howto(repo, kind)}")
    return repo, False


def check_pipeline_folder(path: str | Path, parts: dict[str, str | None] = PIPELINE_PARTS) -> None:
    """Raise ModelLoadError naming the missing parts of a diffusers pipeline folder."""
    path = Path(path)
    missing = []
    for sub, cfg in parts.items():
        if not (path / sub).is_dir() or (cfg and not (path / sub / cfg).is_file()):
            missing.append(f"{sub}/{cfg or ''}")
        elif sub != "tokenizer" and sub != "scheduler" and not any((path / sub).glob("*.safetensors")) \
                and not any((path / sub).glob("*.bin")):
            missing.append(f"{sub}/ weights")
    if missing:
        raise ModelLoadError(
            f"model folder {str(path)!r} is incomplete: missing {', '.join(missing)}; {howto(str(path))}"
        )


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")


def from_pretrained(cls, location: str, subfolder: str | None, local: bool, what: str, kind: str = "pipeline",
                    **kwargs):
    """``cls.from_pretrained(location, subfolder=...)``; a failure is a ModelLoadError naming ``what``."""
    # huggingface_hub reads HF_HUB_OFFLINE at import time; re-read it so a later setting holds.
    # transformers 5 fails on subfolder=None (os.path.join(None, ...)): pass it only when set.
    if subfolder is not None:
        kwargs["subfolder"] = subfolder
    try:
        return cls.from_pretrained(location, local_files_only=bool(local) or _offline(), **kwargs)
    except (OSError, ValueError, EnvironmentError, RuntimeError) as exc:
        offline = _offline()
        why = "offline (HF_HUB_OFFLINE is set) and not in the cache" if offline and not local else type(exc).__name__
        raise ModelLoadError(f"cannot load the {what} from {location!r} ({why}); {howto(location, kind)}") from exc



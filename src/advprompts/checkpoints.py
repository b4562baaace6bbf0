"""Resumable optimisation checkpoints without pickle: tensors in safetensors, the rest in JSON.

One checkpoint of prompt ``<key>`` is a pair in the run's ``checkpoints/`` folder:

* ``<key>.safetensors``: the prompt embeddings, every tensor of the optimiser state (Adam's
  ``exp_avg``, ``exp_avg_sq``, ``step``, ...) and torch's RNG state;
* ``<key>.json``: the step, the early-stop flag, the optimiser's ``param_groups`` and its non-tensor
  state, numpy's and python's RNG states, what the tensors belong to (prompt key, shape, optimiser)
  and the sha256 of the safetensors file.

Both are written atomically, safetensors first: the JSON commits the pair. A kill between the two
writes leaves a JSON naming the previous safetensors' hash; such a torn (or half-missing) pair is not
loaded: the prompt restarts from scratch (same result, seeded per step) with a warning. Nothing here
unpickles; a checkpoint of an older version (``<key>.pt``, pickle) is read with ``weights_only=True``
(tensors, plain containers and numpy arrays only) or, failing that, ignored.

The training loops' files are written here too, atomically: weights as a safetensors state dict
(:func:`save_weights`, the format of every weights file advprompts ships) and a resumable training state
(:func:`save_torch` / :func:`load_torch`, torch's zip format read with ``weights_only``).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import random
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from advprompts.errors import ConfigError
from advprompts.fsio import atomic_write_bytes, atomic_write_text

logger = logging.getLogger(__name__)
FORMAT, VERSION = "advprompts-checkpoint", 1


def save_weights(path: str | Path, state: dict[str, torch.Tensor]) -> Path:
    """Write a state dict as safetensors, atomically (the same bytes as ``safetensors.torch.save_file``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, save_safetensors({k: v.detach().contiguous() for k, v in state.items()}))
    return path


def save_torch(path: str | Path, obj) -> None:
    """``torch.save`` ``obj`` atomically: a run killed while writing leaves the previous file whole."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_torch(path: str | Path, device: torch.device | str | None = None):
    """A :func:`save_torch` file: tensors and plain containers only, no pickled code runs."""
    return torch.load(path, weights_only=True, map_location=device)


def checkpoint_paths(folder: Path, key: str) -> tuple[Path, Path]:
    """``(tensors, meta)``: ``<key>.safetensors`` and ``<key>.json`` in ``folder``."""
    return folder / f"{key}.safetensors", folder / f"{key}.json"


def _encode(obj, tensors: dict[str, torch.Tensor], name: str):
    """``obj`` as JSON-safe data; its tensors go to ``tensors`` under ``name``-derived keys."""
    if isinstance(obj, torch.Tensor):
        tensors[name] = obj.detach().cpu().clone().contiguous()
        return {"__tensor__": name}
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v, tensors, f"{name}.{i}") for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_encode(v, tensors, f"{name}.{i}") for i, v in enumerate(obj)]
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj):
            return {k: _encode(v, tensors, f"{name}.{k}") for k, v in obj.items()}
        if all(isinstance(k, int) for k in obj):
            return {"__intkeys__": {str(k): _encode(v, tensors, f"{name}.{k}") for k, v in obj.items()}}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot checkpoint {type(obj).__name__} at {name}")


def _decode(obj, tensors: dict[str, torch.Tensor]):
    if isinstance(obj, list):
        return [_decode(v, tensors) for v in obj]
    if isinstance(obj, dict):
        if set(obj) == {"__tensor__"}:
            return tensors[obj["__tensor__"]]
        if set(obj) == {"__tuple__"}:
            return tuple(_decode(v, tensors) for v in obj["__tuple__"])
        if set(obj) == {"__intkeys__"}:
            return {int(k): _decode(v, tensors) for k, v in obj["__intkeys__"].items()}
        return {k: _decode(v, tensors) for k, v in obj.items()}
    return obj


def save_checkpoint(folder: Path, key: str, step: int, embeddings: torch.Tensor, opt: torch.optim.Optimizer,
                    stopped: bool) -> None:
    """Write the pair for prompt ``key`` after ``step`` steps (safetensors, then the JSON that commits it)."""
    folder.mkdir(parents=True, exist_ok=True)
    tensors_path, meta_path = checkpoint_paths(folder, key)
    tensors = {"embeddings": embeddings.detach().cpu().clone().contiguous(), "rng.torch": torch.get_rng_state()}
    optimizer = _encode(opt.state_dict(), tensors, "optimizer")
    # One metadata entry: safetensors writes them in hash-map order, which differs from process to process
    # (the same checkpoint would get other bytes); the key and step are in the JSON half.
    data = save_safetensors(tensors, metadata={"format": FORMAT})
    atomic_write_bytes(tensors_path, data)
    name, keys, pos, has_gauss, cached = np.random.get_state()
    version, state, gauss_next = random.getstate()
    meta = {"format": FORMAT, "version": VERSION, "key": key, "step": step, "stopped": bool(stopped),
            "tensors": tensors_path.name, "sha256": hashlib.sha256(data).hexdigest(),
            "embeddings_shape": list(embeddings.shape), "optimizer_class": type(opt).__name__,
            "optimizer": optimizer,
            "rng": {"numpy": [name, np.asarray(keys).tolist(), int(pos), int(has_gauss), float(cached)],
                    "python": [version, list(state), gauss_next]}}
    atomic_write_text(meta_path, json.dumps(meta))
    legacy = folder / f"{key}.pt"
    if legacy.is_file():  # superseded by the pair just committed
        legacy.unlink()


def _read_pair(folder: Path, key: str) -> dict | None:
    """The committed checkpoint as ``meta`` with its tensors under ``"_tensors"``; None when there is none
    or the pair is torn (warned)."""
    tensors_path, meta_path = checkpoint_paths(folder, key)
    if not meta_path.is_file():
        if tensors_path.is_file():
            logger.warning("checkpoint %s has no %s (killed while writing it?); ignoring it", tensors_path,
                           meta_path.name)
        return None
    try:
        meta = json.loads(meta_path.read_text())
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise ValueError("not an advprompts checkpoint")
        if meta.get("version") != VERSION:
            raise ValueError(f"format version {meta.get('version')!r}, this advprompts reads {VERSION}")
    except ValueError as exc:  # JSONDecodeError included
        raise ConfigError(f"checkpoint {str(meta_path)!r} is unreadable ({exc}); delete it to restart prompt "
                          f"{key} or use another --out") from None
    data = tensors_path.read_bytes() if tensors_path.is_file() else None
    if data is None or hashlib.sha256(data).hexdigest() != meta.get("sha256"):
        logger.warning("checkpoint %s does not match %s (%s; killed between the two writes?); ignoring it",
                       meta_path, tensors_path.name, "missing" if data is None else "another sha256")
        return None
    try:
        meta["_tensors"] = load_safetensors(data)
    except Exception as exc:  # noqa: BLE001 (safetensors' own error type): hash right, content not
        raise ConfigError(f"checkpoint {str(tensors_path)!r} is unreadable ({exc}); delete it to restart prompt "
                          f"{key} or use another --out") from None
    return meta


def _read_legacy(folder: Path, key: str) -> dict | None:
    """A ``<key>.pt`` of an older version, loaded without running code (weights_only), as a pair's meta."""
    path = folder / f"{key}.pt"
    if not path.is_file():
        return None
    core = getattr(np, "_core", None) or np.core
    allowed = [core.multiarray._reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]
    try:
        with torch.serialization.safe_globals(allowed):
            state = torch.load(path, map_location="cpu", weights_only=True)
        name, keys, pos, has_gauss, cached = state["rng"]["numpy"]
        version, pystate, gauss_next = state["rng"]["python"]
        tensors = {"embeddings": state["embeddings"], "rng.torch": state["rng"]["torch"]}
        meta = {"key": key, "step": int(state["step"]), "stopped": bool(state.get("stopped", False)),
                "embeddings_shape": list(state["embeddings"].shape), "optimizer_class": None,
                "optimizer": _encode(state["optimizer"], tensors, "optimizer"),
                "rng": {"numpy": [name, np.asarray(keys).tolist(), pos, has_gauss, cached],
                        "python": [version, list(pystate), gauss_next]}}
    except Exception as exc:  # noqa: BLE001 (an unreadable old checkpoint only costs a restart)
        logger.warning("old-format checkpoint %s cannot be read safely (%s); ignoring it", path,
                       str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        return None
    logger.info("prompt %s: resuming from the old-format checkpoint %s", key, path)
    meta["_tensors"] = tensors
    return meta


def load_checkpoint(folder: Path, key: str, embeddings: torch.Tensor, opt: torch.optim.Optimizer) -> tuple[int, bool]:
    """Restore prompt ``key``'s embeddings, optimiser and RNG states in place from its checkpoint.

    Returns:
        ``(step, stopped)``: the steps already run and the early-stop flag; ``(0, False)`` when there is
        no usable checkpoint (none, or a torn pair: warned), leaving everything untouched.

    Raises:
        ConfigError: the checkpoint belongs to another prompt, shape or optimiser (another run), or is
            unreadable.
    """
    meta = _read_pair(folder, key) or _read_legacy(folder, key)
    if meta is None:
        if any(p.is_file() for p in (*checkpoint_paths(folder, key), folder / f"{key}.pt")):
            logger.warning("prompt %s: no usable checkpoint; it restarts from step 0", key)
        return 0, False
    where = str(checkpoint_paths(folder, key)[1])
    tensors = meta.pop("_tensors")
    saved = tensors.get("embeddings")
    shape = list(embeddings.shape)

    def refuse(what: str):
        raise ConfigError(f"checkpoint {where!r} belongs to another run ({what}); use another --out or pass "
                          "--overwrite")

    if meta.get("key") != key:
        refuse(f"it is prompt {meta.get('key')!r}'s, not {key!r}'s")
    if saved is None or list(saved.shape) != shape or meta.get("embeddings_shape") != shape:
        refuse(f"prompt embeddings of shape {meta.get('embeddings_shape')}, this run's are {shape}: "
               f"{shape[0]} tokens of {shape[-1]} dims")
    if meta.get("optimizer_class") not in (None, type(opt).__name__):
        refuse(f"optimiser {meta.get('optimizer_class')}, this run uses {type(opt).__name__}")
    try:
        state = _decode(meta["optimizer"], tensors)
        for slot in state["state"].values():
            for name, value in slot.items():
                if isinstance(value, torch.Tensor) and value.dim() and list(value.shape) != shape:
                    refuse(f"optimiser state {name!r} of shape {list(value.shape)}, the embeddings' is {shape}")
        for group, current in zip(state["param_groups"], opt.param_groups):  # JSON lists back to tuples
            group.update({k: tuple(v) for k, v in group.items() if isinstance(current.get(k), tuple)})
        opt.load_state_dict(state)
        with torch.no_grad():
            embeddings.copy_(saved)
        torch.set_rng_state(tensors["rng.torch"])
        name, keys, pos, has_gauss, cached = meta["rng"]["numpy"]
        np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
        version, pystate, gauss_next = meta["rng"]["python"]
        random.setstate((version, tuple(pystate), gauss_next))
        step, stopped = int(meta["step"]), bool(meta["stopped"])
    except ConfigError:
        raise
    except (AttributeError, KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise ConfigError(f"checkpoint {where!r} does not fit this run ({type(exc).__name__}: "
                          f"{str(exc).splitlines()[0] if str(exc) else 'malformed'}); use another --out or pass "
                          "--overwrite") from None
    logger.info("prompt %s: resuming at step %d", key, step)
    return step, stopped

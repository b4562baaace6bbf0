"""Reading a dataset's files: paths kept inside the dataset folder, images decoded alike whatever their format.

* :func:`escapes`: whether a path named in a metadata file leaves the dataset folder (an absolute
  path elsewhere, ``../``, or a symlink pointing out); such rows are refused, so a dataset can never
  make advprompts read (and copy into a generated set) files outside it.
* :func:`read_rgb`: (3, H, W) in [0, 1] from any image: EXIF orientation applied (phone photos);
  16-bit and 32-bit greyscale scaled, not clipped to white; transparent pixels composited on white
  (the colour stored under them is arbitrary); CMYK, palette and greyscale converted; NaN or
  infinite pixels (float images) refused.
* :func:`read_mask`, :func:`image_problem`: the same orientation, so an image and its mask are
  compared as one sees them.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from advprompts.errors import DataError

_UNREADABLE = (UnidentifiedImageError, OSError, SyntaxError, ValueError)  # PIL's ways to say "corrupt"
_WIDE = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")  # more than 8 bits per pixel: scaled, not clipped
_ROTATED = (5, 6, 7, 8)  # EXIF orientations that swap width and height


def escapes(root: str | Path, name: str, follow_links: bool = True) -> bool:
    """Whether ``root / name`` lies outside ``root``; ``follow_links=False``: judged on the path's text
    only (``..`` and absolute paths), for loaders whose folders may legitimately be symlinks."""
    if follow_links:
        base = Path(root).resolve()
        return not (base / name).resolve().is_relative_to(base)
    base = Path(os.path.abspath(root))
    return not Path(os.path.normpath(base / name)).is_relative_to(base)


def _orientation(im: Image.Image) -> int:
    if im.format == "PNG" and "exif" not in im.info:  # PNG's getexif() would decode the whole image
        return 1
    return im.getexif().get(0x0112, 1)


def image_problem(path: Path, decode: bool = False) -> tuple[tuple[int, int] | None, str | None]:
    """``(size as displayed, None)`` for a readable image, else ``(None, "missing" | "corrupt" | "nonfinite")``.

    ``decode`` also decodes the pixels (JPEG at reduced scale), which catches truncated files.
    Float images are always decoded: their pixels must be finite.
    """
    try:
        with Image.open(path) as im:
            size = im.size[::-1] if _orientation(im) in _ROTATED else im.size
            mode = im.mode
            im.verify()
        if decode or mode == "F":
            with Image.open(path) as im:
                im.draft("RGB", (64, 64))
                im.load()
                if mode == "F" and not np.isfinite(np.asarray(im)).all():
                    return None, "nonfinite"
    except FileNotFoundError:
        return None, "missing"
    except _UNREADABLE:
        return None, "corrupt"
    return size, None


def _rgb(im: Image.Image, path: Path) -> np.ndarray:
    if im.mode in _WIDE:
        arr = np.asarray(im, dtype=np.float32)
        if not np.isfinite(arr).all():
            raise DataError(f"image {str(path)!r} has NaN or infinite pixels; replace it")
        scale = 65535.0 if im.mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
        return np.repeat((arr / scale).clip(0, 1)[..., None], 3, axis=-1)
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info:
        im = Image.alpha_composite(Image.new("RGBA", im.size, (255, 255, 255, 255)), im.convert("RGBA"))
    return np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0


def read_rgb(path: Path) -> torch.Tensor:
    """The image at ``path`` as (3, H, W) float32 in [0, 1], as displayed (see the module docstring).

    Raises:
        DataError: missing, corrupt or truncated, or with non-finite pixels.
    """
    try:
        with Image.open(path) as im:
            ImageOps.exif_transpose(im, in_place=True)
            arr = _rgb(im, path)
    except FileNotFoundError as exc:
        raise DataError(f"image {str(path)!r} is missing; fix file_name in metadata.csv or add the file") from exc
    except _UNREADABLE as exc:
        raise DataError(f"image {str(path)!r} is corrupt or unreadable ({exc}); replace or remove it") from exc
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


def read_mask(path: Path, instance: bool = False) -> np.ndarray:
    """The object pixels of a mask file as a bool (H, W) array, as displayed.

    Binary masks: above half of 255 (0/255 masks and soft CUB segmentations alike; in a 0/1 mask,
    1). Instance masks (0 = background, k = the k-th instance): every non-zero pixel.
    """
    try:
        with Image.open(path) as im:
            ImageOps.exif_transpose(im, in_place=True)
            arr = np.asarray(im if instance else im.convert("L"))
    except FileNotFoundError as exc:
        raise DataError(f"mask {str(path)!r} is missing; add it or clear mask_file") from exc
    except _UNREADABLE as exc:
        raise DataError(f"mask {str(path)!r} is corrupt or unreadable; replace or remove it") from exc
    if arr.ndim == 3:
        arr = arr.max(axis=-1)
    return arr > 0 if instance or arr.max(initial=0) <= 1 else arr > 127

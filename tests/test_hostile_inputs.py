"""Hostile and odd inputs (issue 25, part 4): each converted correctly, or refused with a DataError
(one line and exit status 2 from the CLI). Mask size mismatches and corrupt headers: test_errors.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from typer.testing import CliRunner

from advprompts.cli.app import app
from advprompts.data.folder import FolderDataset
from advprompts.errors import DataError
from advprompts.prompts import LearnablePrompt
from conftest import one_line_error

runner = CliRunner()


def _folder(root, images: dict):
    """A dataset folder of ``images`` (name -> PIL image or encoded bytes), one row each."""
    root.mkdir(parents=True, exist_ok=True)
    for name, im in images.items():
        (root / name).write_bytes(im) if isinstance(im, bytes) else im.save(root / name)
    (root / "metadata.csv").write_text("file_name,label\n" + "".join(f"{name},0\n" for name in images))
    return root


# ---------------------------------------------------------------- paths that leave the dataset folder
@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlinked file", "symlinked folder", "mask"])
def test_paths_leaving_the_dataset_folder_are_refused(tmp_path, kind):
    secret = tmp_path / "elsewhere" / "secret.png"
    secret.parent.mkdir()
    Image.new("RGB", (16, 16)).save(secret)
    root = tmp_path / "data" / "set"
    _folder(root, {"ok.png": Image.new("RGB", (16, 16))})
    name = {"dotdot": "../../elsewhere/secret.png", "absolute": str(secret), "symlinked file": "link.png",
            "symlinked folder": "linked/secret.png", "mask": "ok.png"}[kind]
    (root / "link.png").symlink_to(secret)
    (root / "linked").symlink_to(secret.parent)
    mask = "../../elsewhere/secret.png" if kind == "mask" else ""
    (root / "metadata.csv").write_text(f"file_name,label,mask_file\nok.png,0,\n{name},1,{mask}\n")
    with pytest.raises(DataError, match="is outside the dataset folder"):
        FolderDataset(root)
    if kind == "dotdot":
        out = tmp_path / "out"
        one_line_error(runner.invoke(app, ["generate", "--model", "tiny", "--prompt", "a {class}", "--steps", "1",
                                           "--source", str(root), "--out", str(out)]), "is outside the dataset folder")
        assert not out.exists()


def test_paths_inside_the_folder_are_fine_and_loader_masks_may_live_elsewhere(tmp_path):
    root = _folder(tmp_path / "set", {"a.png": Image.new("RGB", (16, 16), (255, 0, 0))})
    (root / "alias.png").symlink_to(root / "a.png")  # a symlink that stays inside
    (root / "metadata.csv").write_text(f"file_name,label\na.png,0\nalias.png,1\n{root / 'a.png'},0\n")
    assert len(FolderDataset(root)) == 3
    mask = tmp_path / "segmentations" / "a.png"  # a loader's masks folder (CUB segmentations, ?masks=DIR)
    mask.parent.mkdir()
    Image.new("L", (16, 16), 255).save(mask)
    ds = FolderDataset(root, rows=[{"file_name": "a.png", "label": 0, "mask_file": str(mask)}])
    assert ds[0]["mask"].min() == 1
    with pytest.raises(DataError, match="outside the dataset folder"):  # a loader's image path still may not
        FolderDataset(root, rows=[{"file_name": "../segmentations/a.png", "label": 0}])


# ---------------------------------------------------------------- image modes
def _palette(transparent: bool) -> Image.Image:
    im = Image.new("P", (4, 4), 1)
    im.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    if transparent:
        im.info["transparency"] = 1
    return im


MODES = {  # name -> (image, expected RGB of pixel (0, 0) in 0..255)
    "cmyk.jpg": (Image.new("CMYK", (4, 4), (255, 0, 0, 0)), (0, 255, 255)),
    "cmyk.tif": (Image.new("CMYK", (4, 4), (0, 255, 0, 0)), (255, 0, 255)),
    "16bit.png": (Image.fromarray(np.full((4, 4), 32896, np.uint16)), (128, 128, 128)),  # not clipped to white
    "float.tif": (Image.fromarray(np.full((4, 4), 64.0, np.float32)), (64, 64, 64)),
    "palette.png": (_palette(False), (10, 200, 30)),
    "palette-transparent.png": (_palette(True), (255, 255, 255)),
    "grey.png": (Image.new("L", (4, 4), 77), (77, 77, 77)),
    "rgba-transparent.png": (Image.new("RGBA", (4, 4), (255, 0, 0, 0)), (255, 255, 255)),  # not hidden red
    "rgba-opaque.png": (Image.new("RGBA", (4, 4), (255, 0, 0, 255)), (255, 0, 0)),
    "one-pixel.png": (Image.new("RGB", (1, 1), (9, 99, 199)), (9, 99, 199)),
}


@pytest.mark.parametrize("name", list(MODES))
def test_images_of_every_mode_are_read_as_rgb_as_displayed(tmp_path, name):
    image, rgb = MODES[name]
    ds = FolderDataset(_folder(tmp_path / "set", {name: image}), image_size=8)
    item = ds[0]["image"]
    assert item.shape == (3, 8, 8) and item.dtype == torch.float32
    tol = 6 if name.endswith(".jpg") else 1
    assert torch.allclose(item[:, 0, 0] * 255, torch.tensor(rgb, dtype=torch.float32), atol=tol), item[:, 0, 0] * 255


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_exif_rotation_is_applied_and_masks_compare_as_displayed(tmp_path, suffix):
    stored = Image.new("RGB", (8, 4), (0, 0, 255))
    stored.paste((255, 0, 0), (0, 0, 4, 4))  # left half red as stored; orientation 6 turns it to the top
    exif = Image.Exif()
    exif[0x0112] = 6
    root = tmp_path / "set"
    root.mkdir()
    stored.save(root / f"a{suffix}", exif=exif, quality=95)
    Image.new("L", (4, 8), 255).save(root / "m.png")  # drawn on the displayed (portrait) image
    Image.new("L", (8, 4), 255).save(root / "stored_m.png")
    (root / "metadata.csv").write_text(f"file_name,label,mask_file\na{suffix},0,m.png\n")
    image = FolderDataset(root)[0]["image"]
    assert image.shape == (3, 8, 4)
    assert image[0, :4].mean() > 0.9 and image[2, 4:].mean() > 0.9  # red on top, blue below
    (root / "metadata.csv").write_text(f"file_name,label,mask_file\na{suffix},0,stored_m.png\n")
    with pytest.raises(DataError, match="masks must match their image size"):
        FolderDataset(root)


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_truncated_images_are_refused(tmp_path, suffix):
    import io

    buf = io.BytesIO()
    noise = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(buf, "PNG" if suffix == ".png" else "JPEG")
    data = buf.getvalue()
    root = _folder(tmp_path / "set", {f"a{suffix}": data[: len(data) * 3 // 4]})
    with pytest.raises(DataError, match="corrupt or unreadable"):
        FolderDataset(root)[0]


# ---------------------------------------------------------------- NaN and Inf
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_pixels_are_refused_when_the_dataset_opens(tmp_path, value):
    arr = np.full((16, 16), 100.0, np.float32)
    arr[3, 3] = value
    root = _folder(tmp_path / "set", {"a.tif": Image.fromarray(arr)})
    with pytest.raises(DataError, match="has NaN or infinite pixels"):
        FolderDataset(root)
    out = tmp_path / "out"
    one_line_error(runner.invoke(app, ["generate", "--model", "tiny", "--prompt", "a {class}", "--steps", "1",
                                       "--source", str(root), "--out", str(out)]), "has NaN or infinite pixels")
    assert not out.exists()


def test_non_finite_depth_is_refused(tmp_path):
    root = _folder(tmp_path / "set", {"a.png": Image.new("RGB", (4, 4))})
    np.save(root / "a.npy", np.full((4, 4), np.nan, np.float32))
    (root / "metadata.csv").write_text("file_name,label,depth_file\na.png,0,a.npy\n")
    with pytest.raises(DataError, match="NaN or infinite values"):
        FolderDataset(root)[0]


@pytest.mark.parametrize("case", ["nan", "inf", "width", "sidecar"])
def test_bad_prompt_files_are_refused(tmp_path, tiny, case):
    width = tiny.text_encoder.get_input_embeddings().weight.shape[1]
    rows = torch.zeros(2, width + (1 if case == "width" else 0))
    rows[1, 0] = {"nan": float("nan"), "inf": float("inf")}.get(case, 0.0)
    path = tmp_path / "p.safetensors"
    save_file({"<p>": rows}, str(path))
    if case == "sidecar":
        path.with_suffix(".json").write_text('{"template": "a photo of')  # torn
    match = {"width": "learned for another model", "sidecar": "is not readable JSON"}.get(case, "NaN or infinite")
    with pytest.raises(DataError, match=match):
        LearnablePrompt.load(path, tiny.tokenizer, tiny.text_encoder)
    if case == "nan":
        out = tmp_path / "out"
        one_line_error(runner.invoke(app, ["generate", "--model", "tiny", "--prompt-file", str(path), "--steps", "1",
                                           "--source", "tiny-synth:train", "--out", str(out)]), "NaN or infinite")
        assert not out.exists()

"""Real layouts on fake data: Waterbirds, iWildCam (WILDS) and labelled folders, their summaries,
the error messages for broken layouts, and a short preset run with tiny models substituted."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from typer.testing import CliRunner

from advprompts.cli.app import app
from advprompts.data import FolderDataset, collate, resolve_dataset
from advprompts.errors import DataError

runner = CliRunner()
ALBATROSS, FLICKER = "001.Black_footed_Albatross", "036.Northern_Flicker"  # a waterbird, a landbird
# (y, place) per image of each Waterbirds split code: train has all four groups, majority first.
WB_SPLITS = {0: [(0, 0), (0, 0), (1, 1), (1, 1), (0, 1), (1, 0)], 1: [(0, 0), (0, 1), (1, 0), (1, 1)],
             2: [(0, 0), (0, 1), (1, 0), (1, 1)]}


def _scene(size, water: bool, seed: int):
    """A background (blue water / green land) with an elliptic 'animal'; returns (image, bool mask)."""
    w, h = size
    rng = np.random.default_rng(seed)
    image = Image.new("RGB", size, (40, 90, 200) if water else (60, 150, 60))
    mask = Image.new("L", size, 0)
    box = (w // 4, h // 4, 3 * w // 4, 3 * h // 4)
    colour = tuple(int(c) for c in rng.integers(120, 255, 3))
    ImageDraw.Draw(image).ellipse(box, fill=colour)
    ImageDraw.Draw(mask).ellipse(box, fill=255)
    return image, np.asarray(mask) > 0


def make_waterbirds(base, masks: str = "beside"):
    """A Waterbirds release folder (real columns, split codes, NNN.Species folders, varying sizes);
    masks: ``beside`` (<stem>_mask.png), ``cub`` (soft CUB segmentations in ../CUB_200_2011) or none."""
    root = base / "waterbird_complete95_forest2water2"
    lines = ["img_id,img_filename,y,split,place,place_filename"]
    k = 0
    for split, cells in WB_SPLITS.items():
        for y, place in cells:
            k += 1
            species = ALBATROSS if y == 1 else FLICKER
            stem = f"{species.split('.')[1]}_{k:04d}_{700 + k}"
            size = (40 + 4 * k, 32 + 2 * k)
            image, keep = _scene(size, place == 1, k)
            (root / species).mkdir(parents=True, exist_ok=True)
            image.save(root / species / f"{stem}.jpg", quality=90)
            if masks == "beside":
                Image.fromarray((keep * 255).astype(np.uint8)).save(root / species / f"{stem}_mask.png")
            elif masks == "cub":  # soft segmentation: 200 inside (kept), 100 on a border band (dropped)
                seg = base / "CUB_200_2011" / "segmentations" / species
                seg.mkdir(parents=True, exist_ok=True)
                soft = np.where(keep, 200, 0).astype(np.uint8)
                soft[:2] = 100
                Image.fromarray(soft).save(seg / f"{stem}.png")
            place_file = "/b/bamboo_forest/00000001.jpg" if place == 0 else "/o/ocean/00000002.jpg"
            lines.append(f"{k},{species}/{stem}.jpg,{y},{split},{place},{place_file}")
    (root / "metadata.csv").write_text("\n".join(lines) + "\n")
    return root


WILDS_COLUMNS = "split,location_remapped,location,sequence_remapped,seq_id,y,category_id,datetime,filename,image_id"
# (split, location_remapped, WILDS y, hour): train at locations 10 and 11, test at 287 and 288.
IWC_ROWS = ([("train", 10, y, h) for y, h in [(0, 12), (24, 12), (32, 22), (36, 7), (48, 3), (49, 15), (52, 10)]]
            + [("train", 11, 24, 14), ("train", 11, 99, 12)]
            + [("test", loc, y, h) for loc in (287, 288) for y, h in [(32, 10), (48, 11), (0, 13), (24, 21), (49, 2),
                                                                        (36, 19)]])


def make_iwildcam(base, subset: bool = True, masks: bool = True):
    """A WILDS iwildcam_v2.0 folder: metadata.csv (leading index column), categories.csv, train/,
    the paper's *_subset.csv files (ALIA's columns) and instance masks for some images."""
    root = base / "iwildcam_v2.0"
    (root / "train").mkdir(parents=True)
    (root / "masks").mkdir()
    rows = []
    for i, (split, loc, y, hour) in enumerate(IWC_ROWS):
        image_id = f"8{i:07d}-21bc-11ea-a13a-137349068a90"
        image, keep = _scene((48, 32), False, i)
        image.save(root / "train" / f"{image_id}.jpg", quality=90)
        if masks and y != 0 and i % 2 == 0:  # instance ids 1 and 2; odd images have no mask
            inst = np.zeros((32, 48), np.uint8)
            inst[keep] = 1
            inst[:4, :4] = 2
            Image.fromarray(inst).save(root / "masks" / f"{image_id}.png")
        dt = f"2013-02-{1 + i % 27:02d} {hour:02d}:00:49.000"
        rows.append([split, loc, 400 + loc, i, f"seq{i}", y, 100 + y, dt, f"{image_id}.jpg", image_id])
    with open(root / "metadata.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["", *WILDS_COLUMNS.split(",")])
        w.writerows([i, *r] for i, r in enumerate(rows))
    (root / "categories.csv").write_text("y,category_id,name\n" + "".join(
        f"{y},{100 + y},{n}\n" for y, n in [(0, "empty"), (24, "bos taurus"), (32, "loxodonta africana"),
                                            (36, "aepyceros melampus"), (48, "equus quagga"),
                                            (49, "giraffa camelopardalis"), (52, "madoqua guentheri"), (99, "other")]))
    if subset:
        for split in ("train", "test"):
            with open(root / f"{split}_subset.csv", "w", newline="") as f:
                w = csv.writer(f)
                w.writerow(["", "Unnamed: 0", *WILDS_COLUMNS.split(",")])
                w.writerows([i, i, *r] for i, r in enumerate(rows) if r[0] == split and r[5] != 99)
    return root


# ----------------------------------------------------------------------------- loaders

def test_waterbirds_splits_groups_and_masks_beside_images(tmp_path):
    root = make_waterbirds(tmp_path)
    ds = resolve_dataset(f"waterbirds:train_majority@{root}", image_size=32)
    assert len(ds) == 4 and {ds[i]["group"] for i in range(4)} == {"landbird-land", "waterbird-water"}
    item = ds[0]
    reference = FolderDataset(_folder(tmp_path / "ref"))[0]
    assert set(item) == set(reference)  # the same sample structure as every other dataset
    assert item["image"].shape == (3, 32, 32) and item["mask"].shape == (1, 32, 32)
    assert set(item["mask"].unique().tolist()) == {0.0, 1.0} and item["label_name"] in ("landbird", "waterbird")
    pool = resolve_dataset(f"waterbirds@{tmp_path}?masks=none", split="ood_pool")  # the parent folder works too
    assert sorted(pool[i]["group"] for i in range(len(pool))) == ["landbird-water", "waterbird-land"]
    assert pool[0]["mask"] is None and pool[0]["image"].shape[-2:] != (32, 32)  # native size, sizes vary
    assert [len(resolve_dataset(f"waterbirds:{s}@{root}")) for s in ("train", "val", "test")] == [6, 4, 4]
    waterbirds = resolve_dataset(f"waterbirds:train@{root}?label=1")  # one class (per-class prompts)
    assert len(waterbirds) == 3 and {waterbirds[i]["label"] for i in range(3)} == {1}
    batch = collate([ds[i] for i in range(4)])
    assert batch["image"].shape == (4, 3, 32, 32) and batch["label"].tolist() == [ds[i]["label"] for i in range(4)]


def test_waterbirds_cub_segmentations_are_thresholded_and_found_by_env(tmp_path, monkeypatch):
    root = make_waterbirds(tmp_path, masks="cub")
    monkeypatch.setenv("ADVPROMPTS_WATERBIRDS_ROOT", str(root))
    ds = resolve_dataset("waterbirds:test")  # root from the env, segmentations found beside it
    row, item = ds.rows[0], ds[0]
    seg = np.asarray(Image.open(row["mask_file"]))
    assert row["mask_file"].startswith(str(tmp_path / "CUB_200_2011" / "segmentations"))
    assert torch.equal(item["mask"][0].bool(), torch.from_numpy(seg > 127))  # 200 kept, 100 dropped
    assert item["mask"][0, :2].sum() == 0 and item["mask"].sum() > 0


def test_iwildcam_subset_classes_times_targets_and_instance_masks(tmp_path):
    root = make_iwildcam(tmp_path)
    train = resolve_dataset(f"iwildcam:train@{root}")
    assert len(train) == 8  # 9 train rows in train_subset.csv minus none (class 99 is not in the subset)
    names = train.class_names
    assert names == {0: "background", 1: "cattle", 2: "elephants", 3: "impalas", 4: "zebras", 5: "giraffes",
                     6: "dik-diks"}
    items = [train[i] for i in range(len(train))]
    assert [it["label"] for it in items[:7]] == list(range(7))
    assert [it["time"] for it in items[:7]] == ["day", "day", "night", "twilight", "night", "day", "day"]
    assert items[0]["group"] == "10-day" and items[0]["location"] == "10"
    masked = items[2]  # elephant with an instance mask holding ids 1 and 2: both are object
    assert masked["mask"].sum() > 0 and masked["mask"][0, :4, :4].min() == 1
    assert items[1]["mask"].sum() == 0 and items[1]["mask"].shape == (1, 32, 48)  # no mask: regenerate all
    target = resolve_dataset(f"iwildcam:target@{root}?n=2&seed=0")
    groups = sorted({target[i]["group"] for i in range(len(target))})
    assert groups == ["287-day", "287-night", "288-day", "288-night"] and len(target) == 8
    one = resolve_dataset(f"iwildcam:target-287-day@{root}?n=2&seed=0")
    again = resolve_dataset(f"iwildcam:target-287-day@{root}?n=2&seed=0")
    other = resolve_dataset(f"iwildcam:target-287-day@{root}?n=2&seed=5")
    assert [r["file_name"] for r in one.rows] == [r["file_name"] for r in again.rows]
    assert len(one) == 2 and {r["time"] for r in one.rows} == {"day"}
    assert len(other) == 2  # 3 day images at 287: another seed may draw another pair
    from advprompts.data.folder import load_images

    assert load_images(f"iwildcam:target-288-night@{root}?n=2", image_size=16).shape == (2, 3, 16, 16)


def test_iwildcam_without_subset_files_uses_wilds_splits(tmp_path):
    root = make_iwildcam(tmp_path, subset=False, masks=False)
    assert len(resolve_dataset(f"iwildcam:train@{root}")) == 8  # class 99 dropped
    everything = resolve_dataset(f"iwildcam:train@{root}?classes=all")
    assert len(everything) == 9 and everything.class_names[99] == "other"
    assert resolve_dataset(f"iwildcam:test@{root}")[0]["mask"].sum() == 0


def _folder(root, columns="file_name,label", rows=2):
    root.mkdir(parents=True)
    lines = [columns]
    for i in range(rows):
        Image.new("RGB", (16, 16), (i * 40, 80, 120)).save(root / f"{i}.png")
        values = {"file_name": f"{i}.png", "label": str(i % 2), "group": f"g{i}", "split": "train" if i else "val",
                  "mask_file": ""}
        lines.append(",".join(values[c] for c in columns.split(",")))
    (root / "metadata.csv").write_text("\n".join(lines) + "\n")
    return root


def test_folder_optional_columns_are_optional(tmp_path):
    bare = FolderDataset(_folder(tmp_path / "bare"))
    assert bare[0]["mask"] is None and bare[0]["group"] == "" and bare[0]["split"] == ""
    full = _folder(tmp_path / "full", "file_name,label,group,mask_file,split", rows=3)
    ds = resolve_dataset(f"folder:train@{full}")
    assert len(ds) == 2 and ds[0]["group"] == "g1" and ds[0]["mask"] is None
    renamed = tmp_path / "full" / "labels.csv"
    renamed.write_text((full / "metadata.csv").read_text())
    assert len(resolve_dataset(str(renamed))) == 3  # a CSV of any name, paths relative to its folder


# ----------------------------------------------------------------------------- summary and errors

def test_summary_counts_per_split_and_group(tmp_path):
    root = make_waterbirds(tmp_path)
    result = runner.invoke(app, ["data", "summary", "--dataset", "waterbirds", "--root", str(root)])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "split train_majority: 4 images" in out and "split ood_pool: 2 images" in out
    assert "checked 14 images and 14 masks: all readable" in out
    wild = make_iwildcam(tmp_path / "w")
    result = runner.invoke(app, ["data", "summary", "--dataset", "iwildcam", "--root", str(wild), "-O", "n=1"])
    assert result.exit_code == 0, result.output
    assert "split target-287-day: 1 images (group 287-day)" in result.output
    assert "split test: 12 images" in result.output and "  288-night" in result.output
    result = runner.invoke(app, ["data", "summary", "--dataset", "folder", "--root", str(_folder(tmp_path / "f"))])
    assert result.exit_code == 0 and "split all: 2 images" in result.output


def test_summary_lists_every_broken_file_and_exits_2(tmp_path):
    root = make_waterbirds(tmp_path, masks="cub")
    images = sorted(root.glob("*/*.jpg"))
    images[0].unlink()                                           # missing image
    images[1].write_bytes(images[1].read_bytes()[:200])          # truncated (corrupt) image
    seg = tmp_path / "CUB_200_2011" / "segmentations"
    masks = sorted(seg.glob("*/*.png"))
    Image.new("L", (8, 8), 255).save(masks[2])                   # mask of the wrong size
    masks[3].unlink()                                            # missing mask
    result = runner.invoke(app, ["data", "summary", "--dataset", "waterbirds", "--root", str(root)])
    assert result.exit_code == 2, result.output
    problems = [line for line in result.output.splitlines() if line.startswith("problem: ")]
    assert len(problems) == 4, result.output
    assert str(images[0]) in result.output and str(images[1]) in result.output and str(masks[3]) in result.output
    assert "masks must match their image size" in result.output
    assert result.output.strip().splitlines()[-1].startswith("error: 4 problem(s) in waterbirds")
    with pytest.raises(DataError, match="is missing"):  # opening the dataset fails on the first one
        resolve_dataset(f"waterbirds:train@{root}")


@pytest.mark.parametrize("broken,args,match", [
    ("no_metadata", ["--dataset", "waterbirds"], "has no metadata.csv"),
    ("wrong_columns", ["--dataset", "waterbirds"], "lacks column 'place'"),
    ("bad_split_code", ["--dataset", "waterbirds"], "split '7' is not one of 0, 1, 2"),
    (None, ["--dataset", "waterbirds", "-O", "mask=x"], "has no option 'mask'"),
    (None, ["--dataset", "nope"], "is unknown"),
    ("wilds_columns", ["--dataset", "iwildcam"], "lacks column 'datetime'"),
])
def test_broken_layouts_are_one_line_errors(tmp_path, broken, args, match):
    root = make_waterbirds(tmp_path)
    meta = root / "metadata.csv"
    if broken == "no_metadata":
        meta.unlink()
    elif broken == "wrong_columns":
        meta.write_text(meta.read_text().replace(",place,", ",location,"))
    elif broken == "bad_split_code":
        lines = meta.read_text().splitlines()
        meta.write_text("\n".join([lines[0], lines[1].replace(",0,0,/", ",7,0,/"), *lines[2:]]) + "\n")
    elif broken == "wilds_columns":
        root = make_iwildcam(tmp_path / "w", subset=False)
        meta = root / "metadata.csv"
        meta.write_text(meta.read_text().replace("datetime", "date"))
    result = runner.invoke(app, ["data", "summary", *args, "--root", str(root)])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and "Traceback" not in result.output, result.output
    assert match in lines[0], lines[0]


def test_dataset_specs_name_what_is_wrong(tmp_path, monkeypatch):
    monkeypatch.delenv("ADVPROMPTS_WATERBIRDS_ROOT", raising=False)
    monkeypatch.delenv("ADVPROMPTS_DATA_DIR", raising=False)
    with pytest.raises(DataError, match="ADVPROMPTS_WATERBIRDS_ROOT"):
        resolve_dataset("waterbirds:train")
    root = make_waterbirds(tmp_path)
    with pytest.raises(DataError, match="no split 'trian'; splits: train, val, test, train_majority, ood_pool"):
        resolve_dataset(f"waterbirds:trian@{root}")
    with pytest.raises(DataError, match="takes no @ROOT"):
        resolve_dataset(f"tiny-synth:train@{root}")
    with pytest.raises(DataError, match="CUB segmentations folder"):
        resolve_dataset(f"waterbirds:train@{root}?masks={tmp_path / 'nowhere'}")

"""Every snippet of the user docs runs: the Python blocks are executed and the `advprompts ...` lines of
the bash blocks are run in-process (typer's CliRunner, their words expanded by bash as a user's shell
would), in document order, in a temporary folder holding the data the docs assume.

What a user has and a test cannot afford is swapped by a substitution table per document, the only
difference from what a user types: Stable Diffusion 1.5 and the embedded models -> tiny random models,
a ResNet-50 -> the small CNN, the embedded benchmark -> a small labelled folder, step and epoch counts ->
1 or 2 (for CLI commands, appended options: the last value of an option wins). Every entry of a table
must match (a snippet edited in the docs fails here until its table follows), and every block or shell
line that no test here runs is listed in NOT_RUN with the reason and what covers it instead.
"""

from __future__ import annotations

import csv
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from advprompts.cli.app import app
from advprompts.data.synthetic import TinySynth
from advprompts.models.tiny import save_tiny_pipeline
from advprompts.tasks.models import load_task_model
from advprompts.tasks.train import save_task_weights

ROOT = Path(__file__).resolve().parents[1]
DOCS = ["README.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md"))]

# Blocks run by a test below: whole documents, or single blocks named by a line they contain.
RUN = {"README.md": "all", "docs/tutorial.md": "all",
       "docs/real-data.md": ['root = pathlib.Path("data/mine")'],
       "docs/engine.md": ["from advprompts import LearnablePrompt"]}
# Blocks and shell lines no test here runs, by a line they contain (a block) or start with (a shell line).
NOT_RUN = {
    "make ": "builds .venv, runs the whole suite or the 8-minute demo: CI runs `make test`",
    "source .venv/bin/activate": "shell setup",
    "pip install": "installs the package this suite runs in",
    "advprompts demo": "minutes on 2 cores: tests/test_demo.py runs `demo --quick`; the tutorial's reading of "
                       "its outputs runs on a folder of the same layout",
    "advprompts experiment": "hours: tests/test_experiments.py runs experiments on tiny models; test_docs.py "
                             "validates these presets, --methods and --set",
    # docs/engine.md: a reference list of command forms with placeholders (DATASET, M, ...).
    "advprompts presets show tiny-gap > my.yaml": "command forms: tests/test_cli.py; test_docs.py checks options",
    # docs/performance.md
    "advprompts benchmark --suite full": "minutes: tests/test_perf.py runs the quick suite",
    "accelerate launch --num_processes 8": "several processes / GPUs: tests/test_multiprocess.py",
    # docs/real-data.md: downloads of real models and data; the same paths on fake data in the real
    # layouts with tiny model folders: tests/test_real_data.py and tests/test_sd15_presets.py
    "hf download stable-diffusion-v1-5": "downloads SD 1.5 (4.3 GB)",
    "wget https://nlp.stanford.edu": "downloads Waterbirds",
    "python3 -m venv /tmp/wilds": "downloads iWildCam (11 GB)",
    "advprompts optimize --config waterbirds-sd15-gap": "SD 1.5 on a GPU: tests/test_sd15_presets.py runs the "
                                                         "preset on fake Waterbirds with a tiny model folder",
    "from advprompts.config.schema import GenerateConfig": "needs the Waterbirds download and SD 1.5: "
                                                           "tests/test_sd15_presets.py generates the same way",
    "advprompts optimize --config iwildcam-sd15-ap": "SD 1.5 on a GPU: tests/test_sd15_presets.py",
    "docs/experiments/house_byte_compare.sh": "two worktrees and minutes of optimisation; the determinism it "
                                              "relies on: tests/test_optimize.py, tests/test_sampler_vs_diffusers.py",
    # docs/zoo-builds.md
    "StableDiffusionInpaintPipeline.from_pretrained(": "tests/test_embedded_diffusers.py does exactly this",
}

# Appended to every `optimize` the docs run, per preset: tiny models at 16 px, one prompt per class, one step.
TINY_OPTIMIZE = ["model.device=cpu", "sampler.image_size=16", "sampler.num_steps=2", "task.input_size=16",
                 "optim.steps=1", "prompt.seeds=[0]", "optim.batch_size=1", "log.tensorboard=false",
                 "log.progress=false", "log.sample_every=0"]
PRESET_SWAPS = {"sd15-gap": ["model.diffusion=tiny"],
                "waterbirds-synth-gap": ["model.diffusion=tiny-inpaint", "data.source=folder:train@wb"]}
SD15 = "stable-diffusion-v1-5/stable-diffusion-v1-5"
# The classifier: the docs' ResNet-50 at 224 px -> the small CNN at 16 px (my_resnet50.pt holds its weights).
RESNET = {"task.arch=resnet50": "task.arch=small_cnn", 'load_task_model("resnet50"': 'load_task_model("small_cnn"',
          "input_size=224": "input_size=16"}

README_SUBS = {
    SD15: "tiny", **RESNET,
    '"task.num_classes=3"])': '"task.num_classes=3", ' + ", ".join(map(repr, TINY_OPTIMIZE + ["model.diffusion=tiny"]))
                              + "])",
    '"num_steps": 15': '"num_steps": 2',
    # The Python example is an alternative to the three commands before it, which wrote these folders
    # with another config: run it beside them.
    '"runs/mine-gap"': '"runs/mine-gap-py"', '"data/mine-gen"': '"data/mine-gen-py"',
}
TUTORIAL_SUBS = {
    "embedded-inpaint": "tiny-inpaint", SD15: "tiny", **RESNET, "image_size=224": "image_size=16",
    "waterbirds-synth:train": "folder:train@wb", "waterbirds-synth:test": "folder:test@wb",
    "from_pretrained(sd_path())": 'from_pretrained("sd")',  # a tiny pipeline folder
    "num_inference_steps=15": "num_inference_steps=2", "epochs=5": "epochs=1",
    '.to("cuda")': '.to("cpu")',
}
ENGINE_SUBS = {"optim.steps=20": "optim.steps=1", "num_steps=15": "num_steps=2",
               'run_and_report("demo-quick", "runs/dq")': "None  # minutes: tests/test_demo.py"}


def blocks(doc: str) -> list[tuple[str, str]]:
    """(language, code) of the document's python and bash blocks, in order."""
    return re.findall(r"```(python|bash)\n(.*?)```", (ROOT / doc).read_text(), re.S)


def shell_lines(code: str) -> list[str]:
    """The commands of a bash block: continuations joined, comment lines dropped."""
    lines = (line.strip() for line in re.sub(r"\\\n\s*", " ", code).splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def not_run_reason(text: str, block: bool = False) -> str | None:
    return next((why for key, why in NOT_RUN.items() if (key in text if block else text.startswith(key))), None)


def tiny_args(argv: list[str]) -> list[str]:
    """Options appended to a command the docs run (the last value of an option wins)."""
    if argv[0] == "optimize":
        sets = TINY_OPTIMIZE + PRESET_SWAPS[argv[argv.index("--config") + 1]]
        return [w for s in sets for w in ("--set", s)]
    return ["--steps", "2"] if argv[0] == "generate" else []


class DocRunner:
    """Runs one document's blocks in the current folder with its substitution table."""

    def __init__(self, doc: str, subs: dict[str, str]):
        self.doc, self.subs, self.used = doc, subs, set()
        self.outputs: list[str] = []  # each command's output, in order

    def substitute(self, text: str) -> str:
        for old, new in self.subs.items():
            if old in text:
                text = text.replace(old, new)
                self.used.add(old)
        return text

    def python(self, code: str, name: str) -> dict:
        namespace = {"__name__": "__doc__"}
        exec(compile(self.substitute(code), f"{self.doc} {name}", "exec"), namespace)
        return namespace

    def bash(self, code: str) -> None:
        for line in shell_lines(code):
            if not_run_reason(line):
                continue
            assert line.startswith("advprompts "), f"{self.doc}: `{line}` is neither run nor listed in NOT_RUN"
            # bash expands the words (quotes, globs, $(...)) exactly as in a user's shell
            words = subprocess.run(["bash", "-c", 'printf "%s\\0" ' + self.substitute(line)], capture_output=True,
                                   text=True, check=True).stdout.split("\0")[1:-1]
            argv = words + tiny_args(words)
            result = CliRunner().invoke(app, argv)
            assert result.exit_code == 0, \
                f"{self.doc}: advprompts {' '.join(argv)}\n{result.output}{result.exception!r}"
            self.outputs.append(result.output)

    def run(self, only: list[str] | None = None) -> list[dict]:
        """Every block (or those containing a line of ``only``); the Python blocks' namespaces, in order."""
        spaces = []
        for i, (lang, code) in enumerate(blocks(self.doc)):
            if only is not None and not any(key in code for key in only):
                continue
            if lang == "python":
                spaces.append(self.python(code, f"python block {i}"))
            else:
                self.bash(code)
        return spaces

    def check_table(self) -> None:
        unused = set(self.subs) - self.used
        assert not unused, f"{self.doc}: substitutions that match no snippet any more (update the table): {unused}"


# --- the data the docs assume, tiny --------------------------------------------------------------------


def _png(path: Path, image: torch.Tensor) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    array = (image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array).save(path)  # a mask: one channel


def class_folder(root: Path, classes: list[str], per_class: int = 2) -> None:
    """An ImageNet-style folder: root/<class>/<n>.png, 16 px tiny-synth images."""
    synth = TinySynth(n=len(classes) * per_class)
    for i in range(len(synth)):
        _png(root / classes[i % len(classes)] / f"{i}.png", synth[i]["image"])


def benchmark_folder(root: Path) -> None:
    """Stands in for waterbirds-synth: landbird/waterbird with object masks and groups; train holds the two
    majority groups, test all four."""
    names, places = ["landbird", "waterbird"], {"blue": "land", "green": "water"}
    rows = []
    sets = (("train", TinySynth("train", n=8)), ("test", TinySynth("train", n=2, seed=1)),
            ("test", TinySynth("target", n=2)))
    for k, (split, synth) in enumerate(sets):
        for i in range(len(synth)):
            item, stem = synth[i], f"{k}-{i}"
            _png(root / "images" / f"{stem}.png", item["image"])
            _png(root / "masks" / f"{stem}.png", item["mask"])
            rows.append([f"images/{stem}.png", f"masks/{stem}.png", item["label"], names[item["label"]],
                         f"{names[item['label']]}-{places[item['place']]}", split])
    with open(root / "metadata.csv", "w", newline="") as f:
        csv.writer(f).writerows([["file_name", "mask_file", "label", "label_name", "group", "split"], *rows])


def demo_outputs(out: Path) -> None:
    """What the tutorial reads of `demo --quick`'s folder: results.csv (the runner's columns) and the base CNN."""
    from advprompts.experiments.results import BASE_COLUMNS, POOL_COLUMNS

    columns = BASE_COLUMNS + POOL_COLUMNS + ["acc_landbird-land", "acc_waterbird-land"]
    rows = [dict.fromkeys(columns, "0.5") | {"method": m, "n_extra": n} for m, n in (("no_extra", 0), ("gap", 128))]
    out.mkdir(parents=True)
    with open(out / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, columns)
        writer.writeheader()
        writer.writerows(rows)
    save_task_weights(load_task_model("small_cnn", 2), out / "models" / "base-small_cnn-s0.safetensors")


def classifier(path: str, num_classes: int) -> None:
    """The user's classifier state dict (the docs' ResNet-50 -> the small CNN)."""
    torch.save(load_task_model("small_cnn", num_classes).net.state_dict(), path)


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    """datasets.load_dataset with a private cache: nothing is left in ~/.cache."""
    import datasets

    load = datasets.load_dataset
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **kw: load(*a, cache_dir=str(tmp_path / "hf"), **kw))


def _rows(path: str) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# --- the tests -----------------------------------------------------------------------------------------

CLASSES = ["cat", "dog", "fox"]


def test_readme_your_data_and_python_api(tmp_path, monkeypatch, hf_cache, capsys):
    """README: a labelled class folder (metadata.csv written by real-data.md's snippet) -> `data summary` ->
    `optimize --config sd15-gap` -> `generate`, then the Python API example."""
    monkeypatch.chdir(tmp_path)
    class_folder(Path("data/mine"), CLASSES)
    classifier("my_resnet50.pt", 3)
    real_data = DocRunner("docs/real-data.md", {})
    real_data.run(RUN["docs/real-data.md"])
    assert [r["label_name"] for r in _rows("data/mine/metadata.csv")] == sorted(CLASSES * 2)

    readme = DocRunner("README.md", README_SUBS)
    (api,) = readme.run()
    readme.check_table()
    version, summary, optimized, generated = readme.outputs
    assert version.startswith("advprompts ") and "classes: 0 cat, 1 dog, 2 fox" in summary
    assert sorted(p.name for p in Path("runs/mine-gap").glob("prompt_*.safetensors")) == \
        [f"prompt_c{c}-s0.safetensors" for c in range(3)]
    # each image edited by its own class's prompt
    assert all(r["prompt_file"].endswith(f"c{r['label']}-s0.safetensors") for r in _rows("data/mine-gen/metadata.csv"))
    assert "6 images written" in generated
    # the Python example: optimised against the passed model, generated, read back typed by datasets
    assert len(api["result"].prompts) == 3 and api["ds"].features["label"].names == CLASSES
    assert len(api["ds"]) == 6 and str(CLASSES) in capsys.readouterr().out


def test_tutorial_end_to_end(tmp_path, monkeypatch, hf_cache, capsys):
    """The tutorial from the demo's outputs to a fine-tuned model, then section 9 from an ImageNet-style
    folder (train/ and val/) to a fine-tuned model."""
    monkeypatch.chdir(tmp_path)
    benchmark_folder(Path("wb"))
    demo_outputs(Path("runs/dq"))
    save_tiny_pipeline(Path("sd"))
    for split in ("train", "val"):
        class_folder(Path("data/mine") / split, CLASSES)
    classifier("my_resnet50.pt", 3)

    tutorial = DocRunner("docs/tutorial.md", TUTORIAL_SUBS)
    results, diffusers_, hf, torch_, finetune, _metadata, finetune_mine = tutorial.run()
    tutorial.check_table()
    printed = capsys.readouterr().out
    assert "gap" in printed and "worst group" in printed  # the results.csv reader
    assert "sd15-gap" in tutorial.outputs[1] and "method: gap" in tutorial.outputs[2]  # presets, presets show
    assert Path("runs/my-gap/prompt_c1-s0.safetensors").is_file()
    assert diffusers_["text"] == "a photo of a duck <ap-c1-s0>" and Path("duck.png").is_file()
    assert hf["ds"].features["label"].names == ["landbird", "waterbird"]
    assert torch_["batch"]["image"].shape[1:] == (3, 64, 64)
    assert set(finetune["after"].group_acc) == {"landbird-land", "landbird-water", "waterbird-land", "waterbird-water"}
    # section 9: metadata for both splits, three commands, fine-tuned and saved
    assert {(r["split"], r["label_name"]) for r in _rows("data/mine/metadata.csv")} == \
        {(s, c) for s in ("train", "val") for c in CLASSES}
    assert len(_rows("data/mine-gen/metadata.csv")) == 6 and finetune_mine["val"].labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert Path("my_resnet50_gap.safetensors").is_file() and "val accuracy" in printed


def test_engine_python_api(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    engine = DocRunner("docs/engine.md", ENGINE_SUBS)
    (api,) = engine.run(RUN["docs/engine.md"])
    engine.check_table()
    assert tuple(api["out"].images.shape) == (1, 3, 16, 16) and len(api["prompt"].decode_nearest(k=3)) == 2
    assert sorted(p.name for p in Path("runs/t2i/images").iterdir()) == [f"{k:05d}.png" for k in range(4)]


def test_every_doc_snippet_is_run_or_excused():
    for doc in DOCS:
        run = RUN.get(doc, [])
        for lang, code in blocks(doc):
            if run == "all" or any(key in code for key in run):
                continue  # run above; a whole document's shell lines are checked as it runs
            assert not_run_reason(code, block=True), f"{doc}: no test runs the block starting " \
                                                     f"`{code.splitlines()[0]}`; run it here or add it to NOT_RUN"
    used = [key for key in NOT_RUN if any(key in code for doc in DOCS for _, code in blocks(doc))]
    assert used == list(NOT_RUN), f"NOT_RUN entries that name no doc line any more: {set(NOT_RUN) - set(used)}"

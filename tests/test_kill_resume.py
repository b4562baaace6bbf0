"""Kill anywhere, resume to the same bytes: every command SIGKILLed at seeded moments (just before a file
event, or half-way through a write), rerun with the same arguments, ends with the bytes of an
uninterrupted run (logs and cached cells aside from their timing fields). How: tests/killharness.py;
the cases are listed in docs/reliability.md."""

from __future__ import annotations

import os
import shutil

import pytest
import yaml

from killharness import Harness, Kill, Zygote, kill_point

TINY_GEN = ["--model", "tiny", "--steps", "2", "--guidance-scale", "3", "--out", "out"]
SOURCE = ["generate", *TINY_GEN, "--source", "tiny-synth:train", "--prompt", "a {class}", "--batch-size", "3"]
TEXT2IMG = ["generate", *TINY_GEN, "--prompt", "a photo", "--num-images", "6", "--batch-size", "2"]
# --resume continues the run in --out and starts a new one alike, so the rerun has the same arguments.
OPTIMIZE = ["optimize", "--config", "tiny-ap", "--set", "optim.steps=2", "--set", "prompt.seeds=[0,1]", "--set",
            "log.tensorboard=false", "--set", "log.checkpoint_every=1", "--set", "log.sample_every=1", "--resume",
            "--out", "out"]
# `zoo build` is this call with the committed recipe; the CLI takes no recipe, so the test calls the
# library on test_zoo.py's tiny one.
ZOO = """
from pathlib import Path
from advprompts.zoo.build import build
from advprompts.zoo.trainers import ZooRecipe
build(Path("out"), Path("work"), ZooRecipe(corpus_size=48, clip_steps=2, clip_batch=8, vae_steps=2, vae_batch=4,
      unet_steps=2, unet_batch=4, inpaint_steps=2, inpaint_batch=4, oracle_steps=2, oracle_batch=8))
"""


def _shards(argv: list[str]) -> list[dict]:
    return [{"argv": [*argv, "--shard", f"{i}/2"]} for i in range(2)]


#: case -> (steps of one run, Harness options)
CASES = {
    "optimize": ([{"argv": OPTIMIZE}], {}),
    "generate-source": ([{"argv": SOURCE}], {}),
    "generate-source-shards": (_shards(SOURCE), {}),
    "generate-text2img": ([{"argv": TEXT2IMG}], {}),
    "generate-text2img-shards": (_shards(TEXT2IMG), {}),
    "experiment": ([{"argv": ["experiment", "-c", "../experiment.yaml", "--out", "out"]}], {"checkpoint_rng": False}),
    # A killed export's `out.partial-<pid>` folder is removed by the rerun: test_a_killed_export_leaves_no_partial_folder.
    "data-export": ([{"argv": ["data", "export", "../bench.yaml", "--out", "out"]}], {}),
    "zoo-build": ([{"python": ZOO}], {"ignore": r"^work/"}),  # work/: checkpoints holding their clocks
}

#: Where runs die: (case, name, step, mode, event kinds, path regex); the event is drawn with a generator
#: seeded by the name from the matching events of the uninterrupted run.
POINTS = [
    ("optimize", "torn-config", 0, "torn", "open", r"config\.yaml"),
    ("optimize", "torn-checkpoint", 0, "torn", "*", r"/checkpoints/"),
    ("optimize", "log-rows", 0, "before", "open", r"\.log\.csv"),
    ("generate-source", "torn-image", 0, "torn", "open", r"/images/"),
    ("generate-source", "anywhere", 0, "before", "*", r""),
    ("generate-source-shards", "torn-rows", 0, "torn", "open", r"/\.parts/"),
    ("generate-source-shards", "merge", 1, "before", "*", r"metadata\.csv|README"),
    ("generate-text2img", "torn-image", 0, "torn", "open", r"/images/"),
    ("generate-text2img", "anywhere", 0, "before", "*", r""),
    ("generate-text2img-shards", "image", 0, "before", "*", r"/images/"),
    ("generate-text2img-shards", "torn-anything", 1, "torn", "*", r""),
    ("experiment", "torn-pool", 0, "torn", "*", r"/pools/"),
    ("experiment", "cell", 0, "before", "*", r"/cells/|results\.csv"),
    ("data-export", "torn-image", 0, "torn", "open", r"/images/"),
    ("data-export", "anywhere", 0, "before", "*", r""),
    ("zoo-build", "torn-backbone", 0, "torn", "open", r"^work/\.backbone"),  # the last stage: the rerun trains no other
]
SLOW_POINTS = [  # ADVPROMPTS_SLOW=1: more zoo builds, and the optimisation inside an experiment
    ("zoo-build", "torn-latents", 0, "torn", "open", r"^work/\.latents"),
    ("zoo-build", "saving", 0, "before", "*", r"^out/"),
    ("experiment", "torn-prompts", 0, "torn", "*", r"/prompts/"),
]


@pytest.fixture(scope="module")
def zygote(tmp_path_factory):
    root = tmp_path_factory.mktemp("kill")
    server = Zygote(root, env={"ADVPROMPTS_CACHE": str(root / "cache")})
    yield server
    server.close()


@pytest.fixture(scope="module")
def harness(zygote):
    """The uninterrupted run of a case (made once, on first use)."""
    made: dict[str, Harness] = {}

    def get(case: str) -> Harness:
        if case not in made:
            if case in ("experiment", "data-export"):
                _benchmark_files(zygote.root)
            steps, options = CASES[case]
            made[case] = Harness(zygote, zygote.root / case, steps, **options)
        return made[case]

    return get


def _benchmark_files(root) -> None:
    """bench.yaml (test_experiments' small benchmark), its export, and an experiment on it: three methods
    (no pool, a text pool, an optimised one with its prompts), two budgets."""
    from test_experiments import SMALL_BENCH

    from advprompts.world.benchmarks import Benchmark, export_benchmark

    if (root / "experiment.yaml").is_file():
        return
    (root / "bench.yaml").write_text(yaml.safe_dump(SMALL_BENCH))
    export_benchmark(Benchmark(**SMALL_BENCH), root / "bench")
    experiment = {
        "name": "kill", "benchmark": str(root / "bench"), "ood_split": "ood_pool", "model": "tiny", "image_size": 16,
        "train": {"epochs": 1, "batch_size": 8}, "finetune": {"epochs": 1, "batch_size": 8}, "max_extra": 4,
        "budgets": [1.0, 0.5], "seeds": [0], "generation": {"steps": 2, "guidance_scale": 3.0, "batch_size": 8},
        "methods": {"no_extra": {"kind": "no_extra"},
                    "agnostic": {"kind": "text", "prompts": ["a photo of a {class}"]},
                    "ap": {"kind": "optimized", "optimize": "tiny-ap",
                           "set": ["optim.steps=2", "log.tensorboard=false"]}}}
    (root / "experiment.yaml").write_text(yaml.safe_dump(experiment))


def _id(point) -> str:
    return f"{point[0]}-{point[1]}"


def _check(harness, point) -> None:
    case, _, step, mode, kinds, pattern = point
    h = harness(case)
    kill = kill_point(h.events[step], _id(point), mode, kinds, pattern)
    assert h.resume_differences(step, kill) == [], f"killed at {kill}"


@pytest.mark.parametrize("point", POINTS, ids=_id)
def test_a_killed_command_reruns_to_the_same_bytes(harness, point):
    _check(harness, point)


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("ADVPROMPTS_SLOW"), reason="set ADVPROMPTS_SLOW=1")
@pytest.mark.parametrize("point", SLOW_POINTS, ids=_id)
def test_more_kill_points(harness, point):
    _check(harness, point)


def test_a_killed_export_leaves_no_partial_folder(harness):
    h = harness("data-export")
    kill = kill_point(h.events[0], "litter", "torn", "open", r"/masks/")
    h.resume_differences(0, kill)
    assert not [p.name for p in h.work.iterdir() if p.name.startswith("out.partial-")]


def test_the_harness_tears_writes_and_kills_before_events(zygote):
    work = zygote.root / "self-test"
    work.mkdir()
    code = "open('a.txt', 'w').write('0123456789')\nopen('b.txt', 'w').write('x')\n"
    rc, events, _ = zygote.run(work, python=code, record=True)
    assert rc == 0 and events == [["open", "a.txt", 1], ["open", "b.txt", 1]]
    shutil.rmtree(work)
    work.mkdir()
    rc, _, _ = zygote.run(work, python=code, kill=Kill("open", "a.txt", 1, "torn"))
    assert rc == -9 and (work / "a.txt").read_text() == "01234" and not (work / "b.txt").exists()
    rc, _, _ = zygote.run(work, python=code, kill=Kill("open", "b.txt", 1, "before"))
    assert rc == -9 and (work / "a.txt").read_text() == "0123456789" and not (work / "b.txt").exists()

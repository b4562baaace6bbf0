"""Scale-out: generation under `accelerate launch` (2 CPU processes) and prompt optimisation split
by --shard give exactly what one process gives, with no duplicates."""

from __future__ import annotations

import csv
import os
import socket
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
from typer.testing import CliRunner

from advprompts.cli.app import app
from advprompts.config.presets import load_config
from advprompts.errors import ConfigError
from advprompts.generate import Rows, resolve_shard
from advprompts.optim.loop import optimize
from advprompts.tasks.models import load_task_model

OPTIMIZE = ["optimize", "--config", "tiny-ap", "--set", "optim.steps=2", "--set", "prompt.seeds=[0,1,2]",
            "--set", "log.tensorboard=false", "--set", "log.sample_every=0"]
PROMPTS = [a for k in range(3) for a in ("--prompt-file", f"prompts/prompt_s{k}.safetensors")]
GENERATE = ["generate", "--model", "tiny", "--source", "tiny-synth:train", *PROMPTS, "--prompt", "a {class} on snow",
            "--steps", "2", "--guidance-scale", "3", "--batch-size", "3"]
# Both commands in one launch (process start-up dominates on tiny models); the CLI runs as it does
# under `accelerate launch -m advprompts ...`.
DRIVER = """
import sys
from advprompts.cli.app import app
for args in ({optimize!r} + ["--out", "prompts"], {generate!r} + ["--out", "images"]):
    rc = app(args, standalone_mode=False)
    if rc:
        sys.exit(rc)
"""


def _rows(path):
    return list(csv.DictReader(open(path)))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_accelerate_launch_two_processes_equals_one_process(tmp_path, monkeypatch):
    single, multi = tmp_path / "single", tmp_path / "multi"
    single.mkdir(), multi.mkdir()
    monkeypatch.chdir(single)
    for args in (OPTIMIZE + ["--out", "prompts"], GENERATE + ["--out", "images"]):
        res = CliRunner().invoke(app, args)
        assert res.exit_code == 0, res.output
    (multi / "driver.py").write_text(DRIVER.format(optimize=OPTIMIZE, generate=GENERATE))
    # accelerate's --cpu starts one process; --multi_gpu on a host without (visible) GPUs starts
    # CPU processes (torch.distributed.run + gloo), as a multi-GPU node would start GPU ones.
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(_free_port()), "driver.py"]
    proc = subprocess.run(cmd, env=env, cwd=multi, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # Optimisation: the same prompts, and one log of every prompt's steps.
    for k in range(3):
        name = f"prompts/prompt_s{k}.safetensors"
        assert (single / name).read_bytes() == (multi / name).read_bytes()
    drop = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    assert drop(_rows(single / "prompts/log.csv")) == drop(_rows(multi / "prompts/log.csv"))
    # Generation: the same images and metadata, no duplicates, each process made its half.
    one, two = _rows(single / "images/metadata.csv"), _rows(multi / "images/metadata.csv")
    assert len(one) == 16 * 4 and one == two and len({r["file_name"] for r in two}) == len(two)
    for r in one:
        assert (single / "images" / r["file_name"]).read_bytes() == (multi / "images" / r["file_name"]).read_bytes()
    parts = [{int(r["index"]) for r in _rows(multi / f"images/.parts/shard-{p}-of-2.csv")} for p in (0, 1)]
    assert parts[0] == set(range(0, 64, 2)) and parts[1] == set(range(1, 64, 2))


def test_python_dash_m_runs_the_cli():
    proc = subprocess.run([sys.executable, "-m", "advprompts", "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "generate" in proc.stdout


def test_process_shards_compose_with_manual_shards():
    covered = {}
    for i in range(3):  # --shard i/3 on each of 3 nodes, 2 processes per node
        for p in range(2):
            mine, n = resolve_shard(f"{i}/3", SimpleNamespace(num_processes=2, process_index=p))
            for k in range(60):
                if k % n == mine:
                    assert k % 3 == i  # a node's processes make exactly its manual shard
                    covered[k] = covered.get(k, 0) + 1
    assert covered == {k: 1 for k in range(60)}
    assert resolve_shard("1/3", None) == (1, 3)


def test_optimize_shards_equal_one_process(_tiny_session, tmp_path):
    import copy

    config = load_config("tiny-ap", ["optim.steps=2", "prompt.seeds=[0, 1, 2]", "log.tensorboard=false",
                                     "log.sample_every=0"])
    comps = lambda: copy.deepcopy(_tiny_session["txt2img"]).freeze()  # noqa: E731

    def task():  # the same random task model in every run (separate processes get it from torch's default seed)
        torch.manual_seed(0)
        return load_task_model("small_cnn", 2)

    full = optimize(config, tmp_path / "one", components=comps(), task_model=task())
    keys = []
    for i in range(2):
        run = optimize(config, tmp_path / "two", shard=f"{i}/2", components=comps(), task_model=task())
        keys += [p.key for p in run.prompts]
    assert sorted(keys) == ["s0", "s1", "s2"]
    for p in full.prompts:
        assert p.file.read_bytes() == (tmp_path / "two" / p.file.name).read_bytes()
    drop = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    assert drop(_rows(tmp_path / "one" / "log.csv")) == drop(_rows(tmp_path / "two" / "log.csv"))
    with pytest.raises(ConfigError, match="--overwrite"):
        optimize(config, tmp_path / "two", shard="0/2", overwrite=True, components=comps(), task_model=task())


def test_rows_survive_a_crash_mid_append(tmp_path):
    rows = Rows(tmp_path, (0, 1))
    rows.add([{"file_name": "images/00000.png", "index": 0}, {"file_name": "images/00001.png", "index": 1}])
    with open(rows.path, "a") as f:
        f.write("images/00002.png,0,sq")  # a crash cut this row short
    again = Rows(tmp_path, (0, 1))
    assert [r["index"] for r in again.rows] == ["0", "1"]
    again.add([{"file_name": "images/00002.png", "index": 2}])
    assert [r["index"] for r in Rows(tmp_path, (0, 1)).rows] == ["0", "1", "2"]

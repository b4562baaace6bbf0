"""Run folders: one writer per folder (advisory locks), shards sharing one, locks dying with their process."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from advprompts.errors import AdvPromptsError, OutputLockedError
from advprompts.rundir import prepare_run_dir
from advprompts.runlock import LOCK_NAME, held_locks, lock_run_dir, release_run_dir, releases_run_dir

# A second process: takes the folder's lock as prepare_run_dir does (shard given or not), says so, sleeps.
HOLDER = textwrap.dedent("""
    import ast, sys, time
    from pathlib import Path
    from advprompts.rundir import prepare_run_dir
    out, shard = Path(sys.argv[1]), ast.literal_eval(sys.argv[2])
    prepare_run_dir(out, {"a": 1}, "config.yaml", resume=False, overwrite=False, auto_resume=True, shard=shard)
    if not (out / "config.yaml").exists():
        (out / "config.yaml").write_text("a: 1\\n")
    print("ready", flush=True)
    time.sleep(300)
""")


@contextlib.contextmanager
def holder(out, shard=None):
    """A live process holding ``out``'s lock (as shard ``shard``); killed (SIGKILL) on exit."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(out), repr(shard)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        if line.strip() != "ready":
            proc.wait(timeout=30)
            pytest.fail(f"the holder did not start: {proc.stderr.read()[-2000:]}")
        yield proc
    finally:
        kill(proc)


def kill(proc):
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    proc.stdout.close()
    proc.stderr.close()


def _prepare(out, **kw):
    kw.setdefault("resume", True)
    return prepare_run_dir(out, {"a": 1}, "config.yaml", overwrite=False, **kw)


@pytest.fixture(autouse=True)
def _release(tmp_path):
    yield
    for folder in [tmp_path, *tmp_path.rglob("*")]:  # the test process's locks end with each test
        if folder.is_dir():
            release_run_dir(folder)


def test_a_second_process_is_refused_naming_the_holder_until_it_is_killed(tmp_path):
    out = tmp_path / "run"
    with holder(out) as proc:
        for create in (False, True):  # the dry check before loading models fails already
            with pytest.raises(OutputLockedError, match=f"pid {proc.pid}") as err:
                _prepare(out, create=create)
            assert "\n" not in str(err.value) and str(out) in str(err.value)
        assert isinstance(err.value, AdvPromptsError) and err.value.exit_code == 2
        assert (out / LOCK_NAME).read_text().strip() == str(proc.pid)
        kill(proc)  # SIGKILL: no cleanup ran, the stale lock file (with its dead pid) stays
        assert (out / LOCK_NAME).read_text().strip() == str(proc.pid)
        assert _prepare(out) is True  # continued: the OS released the dead process's lock
    assert (out / LOCK_NAME).read_text().strip() == str(os.getpid())


def test_locks_are_reentrant_within_one_process(tmp_path):
    out = tmp_path / "run"
    assert _prepare(out, resume=False) is False
    (out / "config.yaml").write_text("a: 1\n")
    assert _prepare(out) is True and _prepare(out, create=False) is True  # the same folder again: no deadlock
    lock_run_dir(out)
    sub = out / "prompts" / "p0"  # the experiment runner writes into sub-folders of its own folder
    assert _prepare(sub, resume=False) is False and held_locks(sub)

    @releases_run_dir("out")
    def write(out):
        _prepare(out)
        return held_locks(out)

    assert write(out) and held_locks(out)  # held before the call: still held after it
    (sub / "config.yaml").write_text("a: 1\n")
    release_run_dir(sub)
    assert write(sub) and not held_locks(sub)  # taken by the call: released when it returns
    with holder(sub):  # so another process may take it
        pass


def test_shards_share_a_folder_but_not_a_shard(tmp_path):
    out = tmp_path / "run"
    with holder(out, (0, 2)) as proc:
        assert _prepare(out, shard=(1, 2)) is True  # the other shard joins the run
        for shard, what in (((0, 2), "shard 0/2 of output folder"), (None, "output folder")):
            with pytest.raises(OutputLockedError, match=f"{what} .* \\(pid {proc.pid}\\)"):
                _prepare(out, shard=shard)
    assert _prepare(out, shard=(0, 2)) is True
    release_run_dir(out)
    assert _prepare(out) is True  # no shard writes any more: a single writer may continue


def test_a_single_writer_keeps_shards_out(tmp_path):
    out = tmp_path / "run"
    with holder(out) as proc:
        with pytest.raises(OutputLockedError, match=f"output folder .* \\(pid {proc.pid}\\)"):
            _prepare(out, shard=(1, 2))
        assert not held_locks(out)  # all or nothing: no shared lock left behind


def test_lock_files_are_not_output(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / LOCK_NAME).write_text("999999999\n")  # left by a run killed right after it created the folder
    assert _prepare(out, resume=False) is False  # counts as empty, and a stale pid blocks nothing
    (out / "config.yaml").write_text("a: 1\n")
    (out / "images").mkdir()
    assert prepare_run_dir(out, {"a": 2}, "config.yaml", resume=False, overwrite=True) is False
    assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME]  # overwrite keeps the (held) lock file
    (out / "config.yaml").write_text("a: 1\n")
    release_run_dir(out)
    with holder(out) as proc:
        with pytest.raises(OutputLockedError, match=str(proc.pid)):
            prepare_run_dir(out, {"a": 2}, "config.yaml", resume=False, overwrite=True)
        assert (out / "config.yaml").is_file()  # a folder in use is never emptied


def test_the_cli_says_who_holds_the_folder_in_one_line_with_exit_2(tmp_path):
    from typer.testing import CliRunner

    from advprompts.cli.app import app

    out = tmp_path / "run"
    with holder(out) as proc:
        for args in (["generate", "--model", "tiny", "--prompt", "a {class}", "--steps", "1"],
                     ["optimize", "--config", "tiny-ap", "--resume"]):
            result = CliRunner().invoke(app, [*args, "--out", str(out)])
            lines = [line for line in result.output.strip().splitlines() if line.strip()]
            assert result.exit_code == 2 and len(lines) == 1, result.output
            assert lines[0].startswith("error: ") and f"pid {proc.pid}" in lines[0] and str(out) in lines[0]
    assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME, "config.yaml"]  # nothing written meanwhile


def test_a_forked_child_neither_holds_nor_releases_the_parents_lock(tmp_path):
    import multiprocessing

    out = tmp_path / "run"
    _prepare(out, resume=False)
    ctx = multiprocessing.get_context("fork")
    child = ctx.Process(target=lambda: sys.exit(0 if not held_locks(out) else 3))
    child.start()
    child.join(30)
    assert child.exitcode == 0 and held_locks(out)
    probe = subprocess.run([sys.executable, "-c", HOLDER, str(out), "None"], capture_output=True, text=True,
                           timeout=60)
    assert probe.returncode == 1 and f"pid {os.getpid()}" in probe.stderr  # still ours after the child exited


def test_options_added_later_and_left_off_do_not_make_an_old_folder_another_run(tmp_path):
    import yaml

    from advprompts.errors import OutputExistsError

    old = {"name": "e", "methods": {"gap": {"kind": "optimized", "set": []}}}
    out = tmp_path / "run"
    out.mkdir()
    (out / "experiment.yaml").write_text(yaml.safe_dump(old))
    new = {"name": "e", "methods": {"gap": {"kind": "optimized", "set": [], "pool_of": None, "label_noise": 0.0,
                                            "oracle_filter": False, "extra": [], "n": 0}}}
    assert prepare_run_dir(out, new, "experiment.yaml", resume=False, overwrite=False, auto_resume=True)
    for on in ({"label_noise": 0.5}, {"oracle_filter": True}, {"extra": ["x"]}):  # a new option switched on
        changed = {"name": "e", "methods": {"gap": {"kind": "optimized", "set": [], **on}}}
        with pytest.raises(OutputExistsError, match="differs"):
            prepare_run_dir(out, changed, "experiment.yaml", resume=False, overwrite=False, auto_resume=True)

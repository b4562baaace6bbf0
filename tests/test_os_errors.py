"""Operating-system errors (issue 25, part 3): not a folder, permission denied, no space left, read-only
file system, name too long: exit status 2 and one line naming the path and what to do; nothing left
behind that looks complete, and a rerun after the fix ends as an uninterrupted run."""

from __future__ import annotations

import errno
import os
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

from advprompts import fsio
from advprompts.cli.app import app
from advprompts.errors import AdvPromptsError, FileSystemError
from conftest import one_line_error

runner = CliRunner()


def _t2i(out, *extra):
    return ["generate", "--model", "tiny", "--prompt", "a photo", "--steps", "1", "--num-images", "3",
            "--batch-size", "1", "--out", str(out), *extra]


def _outputs(folder):
    """Every output file's bytes but the lock file, a shard's row log and the dataset card (it hashes
    the folder's path)."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and not p.name.endswith(".lock") and ".parts" not in p.parts and p.name != "README.md"}


def _full_disk_at(name_start: str, real=fsio._write):
    """A ``fsio._write`` that writes half of a file whose name starts with ``name_start``, then fails as
    a full disk does."""

    def write(path, data):
        if path.name.startswith(name_start):
            real(path, data[: len(data) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(path, data)

    return write


@pytest.mark.parametrize("command", [
    ["generate", "--model", "tiny", "--prompt", "a photo", "--steps", "1"],
    ["optimize", "--config", "tiny-ap"],
    ["data", "export", "waterbirds-synth"],
])
def test_an_out_under_an_existing_file_is_one_line_before_any_work(tmp_path, command):
    (tmp_path / "file").write_text("mine")
    out = tmp_path / "file" / "run"
    line = one_line_error(runner.invoke(app, [*command, "--out", str(out)]), "a part of this path is a file")
    assert repr(str(out)) in line and (tmp_path / "file").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_a_name_too_long_is_one_line(tmp_path):
    out = tmp_path / ("x" * 300)
    one_line_error(runner.invoke(app, _t2i(out)), "a name in this path is too long; pick a shorter path")


@pytest.mark.parametrize("code,words", [(errno.EACCES, "permission denied"), (errno.EROFS, "read-only file system")])
def test_a_folder_one_may_not_write_is_refused_before_any_work(tmp_path, monkeypatch, code, words):
    # Simulated: the suite may run as root, whom permissions do not stop.
    monkeypatch.setattr(fsio.os, "access", lambda *a, **k: False)
    monkeypatch.setattr(fsio.os, "statvfs", lambda p: SimpleNamespace(f_flag=os.ST_RDONLY if code == errno.EROFS else 0))
    out = tmp_path / "run"
    line = one_line_error(runner.invoke(app, _t2i(out)), words)
    assert repr(str(tmp_path if code == errno.EACCES else out)) in line and not out.exists()


@pytest.mark.parametrize("code,words", [(errno.EACCES, "permission denied"), (errno.EROFS, "read-only file system"),
                                        (errno.EDQUOT, "disk quota exceeded")])
def test_a_refused_write_is_one_line_naming_the_file(tmp_path, monkeypatch, code, words):
    def refuse(path, data):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(fsio, "_write", refuse)
    out = tmp_path / "run"
    line = one_line_error(runner.invoke(app, _t2i(out)), words)
    assert repr(str(out / "text2img.yaml")) in line and not list(out.rglob("*.tmp"))


def test_a_failed_atomic_write_keeps_the_old_file_and_leaves_no_temp_file(tmp_path, monkeypatch):
    path = tmp_path / "results.csv"
    fsio.atomic_write_text(path, "old")
    monkeypatch.setattr(fsio, "_write", _full_disk_at(".results.csv"))
    with pytest.raises(FileSystemError) as info:
        fsio.atomic_write_text(path, "new and longer")
    err = info.value
    assert isinstance(err, OSError) and isinstance(err, AdvPromptsError)  # caught by either handler
    assert err.errno == errno.ENOSPC and err.filename == str(path) and "no space left" in str(err)
    assert path.read_text() == "old" and sorted(os.listdir(tmp_path)) == ["results.csv"]


def test_disk_full_mid_run_leaves_no_complete_looking_output_and_a_rerun_finishes_it(tmp_path, monkeypatch):
    clean = tmp_path / "clean"
    assert runner.invoke(app, _t2i(clean)).exit_code == 0
    out = tmp_path / "run"
    monkeypatch.setattr(fsio, "_write", _full_disk_at(".00001.png"))
    line = one_line_error(runner.invoke(app, _t2i(out)), "no space left on the device")
    assert repr(str(out / "images" / "00001.png")) in line and "rerun the same command" in line
    assert not (out / "metadata.csv").exists() and not (out / "README.md").exists()  # not complete-looking
    assert not (out / "images" / "00001.png").exists() and not list(out.rglob("*.tmp"))
    monkeypatch.setattr(fsio, "_write", _full_disk_at("never"))
    assert runner.invoke(app, _t2i(out)).exit_code == 0  # space freed: the same command finishes the run
    assert _outputs(out) == _outputs(clean) and (out / "README.md").is_file()


def test_a_failed_export_leaves_no_partial_folder(tmp_path, monkeypatch):
    from advprompts.world import benchmarks

    calls = []

    def render(scene):
        calls.append(scene)
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # as PIL's write of a PNG would
        return real(scene)

    real = benchmarks.render
    monkeypatch.setattr(benchmarks, "render", render)
    out = tmp_path / "export"
    line = one_line_error(runner.invoke(app, ["data", "export", "waterbirds-synth", "--out", str(out)]),
                          "no space left on the device")
    assert repr(str(out)) in line and os.listdir(tmp_path) == []

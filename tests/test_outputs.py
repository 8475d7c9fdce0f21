"""outputs.write_result_set: --out holds the complete old set or the complete new one, whatever fails."""

import errno
import os
import signal

import numpy as np
import pytest

from vmdiff_jax.app import interrupts, outputs
from vmdiff_jax.app.outputs import OutputError, write_result_set

OLD = {"fused.png": b"old image", "search.png": b"old plot", "report.json": b'{"old": true}\n'}
NEW = {"fused.png": b"new image " * 1000, "search.png": b"new plot", "report.json": b'{"new": true}\n'}


def _files(d):
    return {p.name: p.read_bytes() for p in d.iterdir()}


def _beside(out):
    return sorted(p.name for p in out.parent.iterdir() if p.name != out.name)


@pytest.fixture(params=["exchange", "two renames"])
def swap(request, monkeypatch):
    if request.param == "two renames":
        monkeypatch.setattr(outputs, "_renameat2", None)
    return request.param


def test_new_and_replaced_sets(tmp_path, swap):
    out = tmp_path / "a" / "b" / "out"
    assert write_result_set(out, OLD) == out
    assert _files(out) == OLD
    umask = os.umask(0)
    os.umask(umask)
    assert (out / "fused.png").stat().st_mode & 0o777 == 0o666 & ~umask
    write_result_set(out, NEW)
    assert _files(out) == NEW and _beside(out) == []
    with pytest.raises(OutputError, match="not a vmdiff result"):  # a set with other names is not ours to replace
        write_result_set(out, {"fused.png": b"x"})
    assert _files(out) == NEW


def test_disk_full_keeps_old_set(tmp_path, swap, monkeypatch):
    out = tmp_path / "out"
    write_result_set(out, OLD)
    calls = []

    def full(path, data):  # the second file hits a full disk half-way
        calls.append(path.name)
        with open(path, "xb") as f:
            f.write(data[: len(data) // 2])
            if len(calls) == 2:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(outputs, "_write_file", full)
    with pytest.raises(OutputError, match="no space left on the device") as e:
        write_result_set(out, NEW)
    assert "\n" not in str(e.value)
    assert _files(out) == OLD and _beside(out) == []


def test_failed_swap_restores_old_set(tmp_path, monkeypatch):
    out = tmp_path / "out"
    write_result_set(out, OLD)
    monkeypatch.setattr(outputs, "_renameat2", None)
    real = os.rename

    def rename(a, b):
        if str(b) == str(out) and ".vmdiff-new-" in str(a):
            raise OSError(errno.EIO, "I/O error")
        return real(a, b)

    monkeypatch.setattr(outputs.os, "rename", rename)
    with pytest.raises(OutputError, match="I/O error"):
        write_result_set(out, NEW)
    assert _files(out) == OLD and _beside(out) == []


def test_foreign_folder_is_refused(tmp_path):
    out = tmp_path / "desktop"
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    with pytest.raises(OutputError, match="holds files that are not a vmdiff result"):
        write_result_set(out, NEW)
    assert _files(out) == {"thesis.tex": b"precious"}


def test_leftovers_of_a_killed_run(tmp_path):
    out = tmp_path / "out"
    stale_new = tmp_path / ".out.vmdiff-new-abc"  # killed while writing
    stale_new.mkdir()
    (stale_new / "fused.png").write_bytes(b"half")
    old = tmp_path / ".out.vmdiff-old-def"  # killed between the two renames: the old set is put back first
    old.mkdir()
    for k, v in OLD.items():
        (old / k).write_bytes(v)
    outputs._sweep(out)
    assert _files(out) == OLD and _beside(out) == []
    stale_new.mkdir()
    write_result_set(out, NEW)
    assert _files(out) == NEW and _beside(out) == []


def test_interrupt_before_commit_writes_nothing(tmp_path, monkeypatch):
    out = tmp_path / "out"
    write_result_set(out, OLD)
    monkeypatch.setattr(interrupts, "_redeliver", lambda *a: None)
    real = outputs._write_file

    def slow(path, data):  # a signal arrives while the set is written: recorded, raised before the swap
        real(path, data)
        if path.name == "fused.png":
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(outputs, "_write_file", slow)
    with interrupts.handled():
        with pytest.raises(interrupts.Interrupted) as e:
            write_result_set(out, NEW)
    assert e.value.exit_code == 143
    assert _files(out) == OLD and _beside(out) == []


def test_report_is_utf8_with_undecodable_names(tmp_path):
    from vmdiff_jax.app.report import report_json

    name = os.fsdecode(b"caf\xe9 \xff.png")  # not UTF-8: surrogate escapes
    report = {"labels": ["caf\u00e9", "duck"], "image1": name, "score": np.float32(2.5)}
    write_result_set(tmp_path / "o", {"report.json": report_json(report)})
    raw = (tmp_path / "o" / "report.json").read_bytes()
    text = raw.decode("utf-8")  # valid UTF-8
    assert '"caf\u00e9"' in text and '"caf\\\\xe9 \\\\xff.png"' in text and '"score": 2.5' in text

"""Every bad input to `vmdiff fuse` ends in one line on stderr naming the problem, exit code 2,
no traceback, and nothing written to --out."""

import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from vmdiff_jax.cli import main
from vmdiff_jax.images import load_image


@pytest.fixture()
def good(tmp_path):
    rng = np.random.default_rng(0)
    p1, p2 = tmp_path / "red_apple.png", tmp_path / "duck.jpg"
    Image.fromarray(rng.integers(0, 255, (64, 80, 3), dtype=np.uint8)).save(p1)
    Image.fromarray(rng.integers(0, 255, (70, 50, 3), dtype=np.uint8)).save(p2)
    return p1, p2


def _run(capsys, argv):
    code = main(argv)
    err = capsys.readouterr().err
    return code, err


def _assert_one_line_error(code, err, needle):
    assert code == 2, err
    lines = [l for l in err.splitlines() if l.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("vmdiff: error:") and needle in lines[0], lines[0]
    assert "Traceback" not in err


def _bad_images(tmp_path):
    d = {}
    d["missing"] = (tmp_path / "nope.png", "no such image file")
    (tmp_path / "folder.png").mkdir()
    d["unreadable"] = (tmp_path / "folder.png", "is a folder")
    (tmp_path / "junk.png").write_bytes(b"this is not an image at all")
    d["corrupt"] = (tmp_path / "junk.png", "not an image file")
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "full.png")
    (tmp_path / "cut.png").write_bytes((tmp_path / "full.png").read_bytes()[:300])
    d["truncated"] = (tmp_path / "cut.png", "corrupt or truncated")
    Image.new("RGB", (1, 1)).save(tmp_path / "dot.png")
    d["tiny"] = (tmp_path / "dot.png", "too small")
    Image.new("L", (9000, 8000)).save(tmp_path / "huge.png")
    d["enormous"] = (tmp_path / "huge.png", "too large")
    return d


@pytest.mark.parametrize("case", ["missing", "unreadable", "corrupt", "truncated", "tiny", "enormous"])
def test_bad_images(tmp_path, capsys, good, case):
    path, needle = _bad_images(tmp_path)[case]
    out = tmp_path / "out"
    code, err = _run(capsys, ["fuse", str(path), str(good[1]), "--out", str(out), "--weights", str(tmp_path)])
    _assert_one_line_error(code, err, needle)
    assert str(path.name) in err
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.parametrize("flag", ["--label1", "--label2"])
def test_empty_labels(tmp_path, capsys, good, flag):
    code, err = _run(capsys, ["fuse", str(good[0]), str(good[1]), flag, "  ", "--out", str(tmp_path / "o")])
    _assert_one_line_error(code, err, f"{flag} is empty")


def test_unwritable_out(tmp_path, capsys, good):
    (tmp_path / "afile").write_text("x")
    code, err = _run(capsys, ["fuse", str(good[0]), str(good[1]), "--out", str(tmp_path / "afile" / "sub")])
    _assert_one_line_error(code, err, "cannot write to the output folder")
    code, err = _run(capsys, ["fuse", str(good[0]), str(good[1]), "--out", str(tmp_path / "afile")])
    _assert_one_line_error(code, err, "not a folder")


def test_missing_weights_lists_every_checkpoint(tmp_path, capsys, good, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty_cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "o"
    code, err = _run(capsys, ["fuse", str(good[0]), str(good[1]), "--out", str(out), "--weights", str(tmp_path / "w")])
    _assert_one_line_error(code, err, "missing checkpoints (8 of 8)")
    for name in ("FLUX.1-Krea-dev", "FLUX.1-Redux-dev", "siglip-so400m", "dinov2-base", "CLIP-ViT-bigG"):
        assert name in err
    assert not out.exists()  # no empty output folder before the weights are found


def test_bad_numbers(tmp_path, capsys, good):
    code, err = _run(capsys, ["fuse", str(good[0]), str(good[1]), "--out", str(tmp_path / "o"), "--size", "100"])
    _assert_one_line_error(code, err, "--size must be a multiple of 16")
    code, err = _run(capsys, ["fuse", str(good[0]), str(good[1]), "--out", str(tmp_path / "o"), "--steps", "x"])
    _assert_one_line_error(code, err, "invalid int value")


def test_modes_are_converted(tmp_path):
    rng = np.random.default_rng(2)
    rgba = rng.integers(0, 255, (40, 40, 4), dtype=np.uint8)
    rgba[..., 3] = 0  # fully transparent -> white
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    assert (load_image(tmp_path / "a.png", 32) == 255).all()
    Image.fromarray(rng.integers(0, 255, (40, 40), dtype=np.uint8), "L").save(tmp_path / "l.png")
    Image.fromarray(rng.integers(0, 255, (40, 40, 4), dtype=np.uint8), "CMYK").save(tmp_path / "c.jpg")
    Image.fromarray((rng.integers(0, 65535, (40, 40))).astype(np.uint16)).save(tmp_path / "i16.png")
    for name in ("l.png", "c.jpg", "i16.png"):
        im = load_image(tmp_path / name, 32)
        assert im.shape == (32, 32, 3) and im.dtype == np.uint8
    gray = load_image(tmp_path / "l.png", None)
    assert (gray[..., 0] == gray[..., 2]).all()


def test_console_script_has_no_traceback(tmp_path):
    exe = os.path.join(os.path.dirname(sys.executable), "vmdiff")
    cmd = [exe] if os.path.exists(exe) else [sys.executable, "-m", "vmdiff_jax.cli"]
    r = subprocess.run(cmd + ["fuse", str(tmp_path / "a.png"), str(tmp_path / "b.png"), "--out", str(tmp_path / "o")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "a.png: no such image file" in r.stderr

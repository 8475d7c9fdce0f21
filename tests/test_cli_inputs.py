"""Every bad input to `vmdiff fuse` ends in one line on stderr naming the problem, exit code 2,
no traceback, and nothing written to --out."""

import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from vmdiff_jax.app.cli import main
from vmdiff_jax.app.inputs import load_image


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
def test_bad_images(tmp_path, capsys, photos, case):
    path, needle = _bad_images(tmp_path)[case]
    out = tmp_path / "out"
    code, err = _run(capsys, ["fuse", str(path), str(photos[1]), "--out", str(out), "--weights", str(tmp_path)])
    _assert_one_line_error(code, err, needle)
    assert str(path.name) in err
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.parametrize("flag", ["--label1", "--label2"])
def test_empty_labels(tmp_path, capsys, photos, flag):
    code, err = _run(capsys, ["fuse", str(photos[0]), str(photos[1]), flag, "  ", "--out", str(tmp_path / "o")])
    _assert_one_line_error(code, err, f"{flag} is empty")


def test_unwritable_out(tmp_path, capsys, photos):
    (tmp_path / "afile").write_text("x")
    code, err = _run(capsys, ["fuse", str(photos[0]), str(photos[1]), "--out", str(tmp_path / "afile" / "sub")])
    _assert_one_line_error(code, err, "cannot write to the output folder")
    code, err = _run(capsys, ["fuse", str(photos[0]), str(photos[1]), "--out", str(tmp_path / "afile")])
    _assert_one_line_error(code, err, "not a folder")


def test_missing_weights_lists_every_checkpoint(tmp_path, capsys, photos, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty_cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "o"
    code, err = _run(capsys, ["fuse", str(photos[0]), str(photos[1]), "--out", str(out), "--weights", str(tmp_path / "w")])
    _assert_one_line_error(code, err, "missing checkpoints (9 of 9)")
    for name in ("FLUX.1-Krea-dev", "FLUX.1-Redux-dev", "siglip-so400m", "dinov2-base", "CLIP-ViT-bigG"):
        assert name in err
    assert not out.exists()  # no empty output folder before the weights are found


def test_bad_numbers(tmp_path, capsys, photos):
    code, err = _run(capsys, ["fuse", str(photos[0]), str(photos[1]), "--out", str(tmp_path / "o"), "--size", "100"])
    _assert_one_line_error(code, err, "--size must be a multiple of 16")
    code, err = _run(capsys, ["fuse", str(photos[0]), str(photos[1]), "--out", str(tmp_path / "o"), "--steps", "x"])
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
    cmd = [exe] if os.path.exists(exe) else [sys.executable, "-m", "vmdiff_jax.app.cli"]
    r = subprocess.run(cmd + ["fuse", str(tmp_path / "a.png"), str(tmp_path / "b.png"), "--out", str(tmp_path / "o")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "a.png: no such image file" in r.stderr


# ---------------------------------------------------------------- runs through a stand-in pipeline
# (the CLI's own work: checks, notices, the report; the models are tested elsewhere)

import errno  # noqa: E402
import json  # noqa: E402
import shlex  # noqa: E402
import types  # noqa: E402

from vmdiff_jax.app import cli, outputs  # noqa: E402


class _FakePipe:
    """build_pipeline's stand-in: the demo tokenizers and a fuse that returns a fixed result."""

    def __init__(self):
        from vmdiff_jax.engine.demo import demo_tokenizer

        tok = demo_tokenizer()
        self.models = types.SimpleNamespace(clip_l_tokenizer=tok, clip_bigg_tokenizer=tok)
        self.score_text = "paper"

    def fuse(self, img1, img2, l1, l2, seed=0, **kw):
        from vmdiff_jax.engine.pipeline import FusionResult

        traj = [dict(stage="alpha", round=1, alpha=0.5, beta1=1.0, beta2=1.0, S=2.5, d1=0.6, d2=0.6, n1=0.7, n2=0.6)]
        return FusionResult(image=(img1 // 2 + img2 // 2), alpha=0.5, beta=(1.0, 1.0), score=2.5,
                            subscores=dict(d1=0.6, d2=0.6, n1=0.7, n2=0.6), calls=6, rounds=1, accepted=True,
                            trajectory=traj, timings={"total_s": 0.1}, labels=(l1, l2), seed=seed, schedule="paper",
                            settings={"eaa": {"threshold": 2.4}}, thumbs=[img1[:16, :16]])

    def fuse_many(self, images, labels, seed=0, **kw):
        assert len(images) == 2, "the stand-in fuses pairs"
        return self.fuse(images[0], images[1], labels[0], labels[1], seed=seed, **kw)


@pytest.fixture()
def fake_pipe(monkeypatch):
    monkeypatch.setattr(cli, "build_pipeline", lambda args: _FakePipe())


def _lines(err):
    return [line for line in err.splitlines() if line.strip()]


def test_run_writes_whole_set_with_quoted_command(tmp_path, capsys, photos, fake_pipe):
    out = tmp_path / "my out"
    argv = ["fuse", str(photos[0]), str(photos[1]), "--label1", "it's red", "--out", str(out)]
    code, err = _run(capsys, argv)
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["fused.png", "report.json", "search.png"]
    rep = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert rep["command"] == shlex.join(["vmdiff", *argv]) and shlex.split(rep["command"])[1:] == argv
    assert rep["notices"] == [] and rep["labels"] == ["it's red", "toy duck"]


def test_disk_full_is_one_line_and_keeps_old_set(tmp_path, capsys, photos, fake_pipe, monkeypatch):
    out = tmp_path / "o"
    argv = ["fuse", str(photos[0]), str(photos[1]), "--out", str(out)]
    assert _run(capsys, argv)[0] == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def full(path, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(outputs, "_write_file", full)
    code, err = _run(capsys, argv + ["--seed", "7"])
    _assert_one_line_error(code, err, "no space left on the device")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["o", photos[0].name, photos[1].name])


@pytest.mark.parametrize("seed", ["-1", str(2**32), str(2**64), "1e3"])
def test_seed_out_of_range(tmp_path, capsys, photos, seed):
    code, err = _run(capsys, ["fuse", str(photos[0]), str(photos[1]), "--out", str(tmp_path / "o"), "--seed", seed])
    _assert_one_line_error(code, err, "--seed must be an integer from 0 to 4294967295")
    assert main(["demo", "--out", str(tmp_path / "o"), "--seed", str(2**32 - 1), "--help"]) == 0  # the largest is valid
    capsys.readouterr()


@pytest.mark.parametrize("argv,needle", [
    (["--steps", "201"], "--steps must be between 2 and 200"),
    (["--steps", "1"], "--steps must be between 2 and 200"),
    (["--size", "2048"], "--size must be a multiple of 16 between 32 and 1024"),
    (["--batch", "65"], "--batch must be between 1 and 64"),
    (["--fsdp", "64"], "--fsdp 64 must divide the number of local devices"),
    (["--attention", "cudnn"], "attention 'cudnn' needs an NVIDIA GPU"),
    (["--attention", "splash"], "attention 'splash' needs a TPU"),
    (["--flux", "nope.safetensors"], "nope.safetensors: --flux names no such checkpoint file"),
])
def test_bad_run_flags(tmp_path, capsys, photos, argv, needle):
    import jax

    if ("cudnn" in argv and jax.default_backend() == "gpu") or ("splash" in argv and jax.default_backend() == "tpu"):
        pytest.skip("this machine has the accelerator")
    out = tmp_path / "o"
    code, err = _run(capsys, ["fuse", str(photos[0]), str(photos[1]), "--out", str(out), "--weights", str(tmp_path)] + argv)
    _assert_one_line_error(code, err, needle)
    assert not out.exists()


def test_flux_file_replaces_found_checkpoint(tmp_path):
    from vmdiff_jax.checkpoints.weights import MissingWeights, find_weights

    f = tmp_path / "my-flux.safetensors"
    f.write_bytes(b"")
    with pytest.raises(MissingWeights) as e:
        find_weights(tmp_path / "w", use_hf_cache=False, given={"flux": f})
    assert "(8 of 9)" in str(e.value) and "FLUX.1 Krea [dev] transformer" not in str(e.value)
    args = cli.build_parser().parse_args(["fuse", "a", "b", "--out", "o", "--flux", str(f), "--weights", str(tmp_path / "w")])
    with pytest.raises(MissingWeights, match=r"\(8 of 9\)"):
        cli._weights(args)


@pytest.mark.parametrize("name", ["___.png", "-_-.png"])
def test_file_name_without_label(tmp_path, capsys, photos, name):
    bad = tmp_path / name
    bad.write_bytes(photos[0].read_bytes())
    code, err = _run(capsys, ["fuse", str(bad), str(photos[1]), "--out", str(tmp_path / "o")])
    _assert_one_line_error(code, err, f"{name}: the file name gives no label")
    assert "--label" not in err  # the user gave no such flag
    folder = tmp_path / "imgs"
    folder.mkdir()
    (folder / name).write_bytes(photos[0].read_bytes())
    (folder / "duck.png").write_bytes(photos[0].read_bytes())
    code, err2 = _run(capsys, ["batch", str(folder), "--out", str(tmp_path / "b"), "--demo-models", "random", "--size", "32",
                               "--steps", "2", "--tiny-search", "--no-progress", "--locator", "whole"])
    _assert_one_line_error(code, err2, f"{name}: the file name gives no label")
    batch_says = err2.split("error: ")[1].replace(str(folder), "")
    assert batch_says == err.split("error: ")[1].replace(str(tmp_path), "").rstrip("\n") + " (its pairs are recorded as failed)\n"


def test_undecodable_file_name_works(tmp_path, capsys, photos, fake_pipe):
    raw = os.fsencode(tmp_path) + b"/caf\xe9_\xff.png"
    with open(raw, "wb") as f:
        f.write(photos[0].read_bytes())
    name = os.fsdecode(raw)  # surrogate escapes, as sys.argv holds it
    out = tmp_path / "o"
    code, err = _run(capsys, ["fuse", name, str(photos[1]), "--out", str(out)])
    assert code == 0 and "Traceback" not in err, err
    rep = json.loads((out / "report.json").read_bytes().decode("utf-8"))
    assert rep["labels"][0] == "caf\ufffd \ufffd"
    assert "caf\\xe9_\\xff.png" in rep["command"]


def test_long_labels_and_animated_gif_give_notices(tmp_path, capsys, photos, fake_pipe):
    gif = tmp_path / "spinning_top.gif"
    frames = [Image.fromarray(np.full((40, 40, 3), v, np.uint8)) for v in (10, 200, 90)]
    frames[0].save(gif, save_all=True, append_images=frames[1:], duration=50, loop=0)
    long1 = " ".join(["enormous"] * 22)  # 197 characters, over 77 tokens
    out = tmp_path / "o"
    code, err = _run(capsys, ["fuse", str(gif), str(photos[1]), "--label1", long1, "--out", str(out)])
    assert code == 0, err
    lines = _lines(err)
    assert all(line.startswith("vmdiff: notice: ") for line in lines) and len(lines) == 3, err
    assert "spinning_top.gif: animated image (3 frames); using its first frame" in lines[0]
    assert "FLUX prompt is" in lines[1] and "label 1 is cut and label 2 is left out" in lines[1]
    assert "label 1 is" in lines[2] and "score's CLIP text" in lines[2]
    rep = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert rep["notices"] == [line.removeprefix("vmdiff: notice: ") for line in lines]
    img = load_image(gif, 32)
    assert (img == 10).all()  # the first frame


def test_label_2_pushed_out_of_prompt():
    from vmdiff_jax.engine.demo import demo_tokenizer
    from vmdiff_jax.app.inputs import clip_cut_notices
    from vmdiff_jax.method.prompts import PROMPT, SCORE_TEXT

    tok = demo_tokenizer()
    count = lambda t: len(tok.encode(t)) + 2  # noqa: E731
    labels = ("fox", "x")
    while count(PROMPT.format(*labels)) <= 77:  # label 1 just short of the limit, label 2 beyond it
        labels = (labels[0] + " fox", "x")
    labels = (labels[0].rsplit(" ", 1)[0], "enormous tiger")
    n = clip_cut_notices(PROMPT, labels, count, [SCORE_TEXT.format(lab) for lab in labels], count)
    assert len(n) == 1 and "label 2 is cut or left out" in n[0], n
    assert clip_cut_notices(PROMPT, ("apple", "duck"), count, ["A  apple .", "A  duck ."], count) == []


@pytest.mark.parametrize("argv,needle", [
    (["--fsdp", "64"], "--fsdp 64 must divide the number of local devices"),
    (["--pairs-per-call", "0"], "--pairs-per-call must be 'auto' or a positive integer"),
])
def test_bad_batch_flags(tmp_path, capsys, photos, argv, needle):
    code, err = _run(capsys, ["batch", str(tmp_path), "--out", str(tmp_path / "o"), "--weights", str(tmp_path)] + argv)
    _assert_one_line_error(code, err, needle)

"""`vmdiff fuse` on real checkpoint layouts: every model written by its PyTorch reference
(tiny configs, chained dimensions) into a weights folder, found by `find_weights` (folder
and Hugging Face cache layouts), loaded by `VMDiff.from_pretrained`, fused end to end."""

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from vmdiff_jax.app.cli import main
from vmdiff_jax.checkpoints.weights import SPECS, find_weights

VOCAB = 1024  # the demo tokenizer's


def test_fuse_from_weights_folder(weights, photos, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["fuse", str(photos[0]), str(photos[1]), "--weights", str(weights), "--out", str(out),
                 "--steps", "4", "--size", "64", "--no-progress", "--schedule", "authors"])
    assert code == 0, capsys.readouterr().err
    r = json.loads((out / "report.json").read_text())
    assert r["labels"] == ["red apple", "toy duck"]  # from the file names
    assert r["settings"]["models"] == "pretrained" and r["schedule"] == "authors"
    # authors' schedule: 10 iterations x 2 candidates in the alpha stage
    assert sum(t["stage"] == "alpha" for t in r["trajectory"]) == 20
    assert np.asarray(Image.open(out / "fused.png")).shape == (64, 64, 3)


def test_hf_cache_layout_is_found_offline(weights, tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    for spec in SPECS:
        local = next(weights / n for n in spec.local if (weights / n).exists())
        repo = cache / ("models--" + spec.repo.replace("/", "--"))
        snap = repo / "snapshots" / "0123abcd"
        target = snap / spec.subpath if spec.subpath else snap
        target.parent.mkdir(parents=True, exist_ok=True)
        if spec.subpath:
            target.symlink_to(local, target_is_directory=local.is_dir())
        elif not target.exists():
            shutil.copytree(local, target)
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / "main").write_text("0123abcd")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    found = find_weights(None)
    assert set(found) == {s.name for s in SPECS}
    assert found["flux"].name == "transformer" and found["redux"].name == "flux1-redux-dev.safetensors"


def test_fuse_fsdp_on_four_devices_matches_one(weights, photos, tmp_path):
    """`vmdiff fuse --fsdp 2` on 4 (simulated) devices: FLUX streamed onto a (2 data x 2 fsdp)
    mesh, candidates sharded over 'data'; same search result as one device."""
    import os
    import subprocess
    import sys

    args = ["fuse", str(photos[0]), str(photos[1]), "--weights", str(weights), "--steps", "4", "--size", "64",
            "--no-progress", "--batch", "2"]
    one, four = tmp_path / "one", tmp_path / "four"
    assert main(args + ["--out", str(one)]) == 0
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4")
    r = subprocess.run([sys.executable, "-m", "vmdiff_jax.app.cli"] + args + ["--out", str(four), "--fsdp", "2"],
                       env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    a, b = (json.loads((d / "report.json").read_text()) for d in (one, four))
    assert b["settings"]["devices"] == 4 and a["settings"]["devices"] == 1
    # The same candidates with the same scores (float32 sums in another order: S within 1e-3)
    # until the two searches part, which they may only do after a near tie: the tiny random
    # models give candidates whose S differ by less than that noise, and a comparison of two
    # such candidates may go either way.
    def key(t):
        return (t["stage"], t["round"], round(t["alpha"], 9), t["beta1"], t["beta2"])

    ta, tb = a["trajectory"], b["trajectory"]
    k = next((i for i, (x, y) in enumerate(zip(ta, tb)) if key(x) != key(y)), min(len(ta), len(tb)))
    assert k >= 2  # at least the first search step (2 alphas from the shared BNoise) agrees
    for x, y in zip(ta[:k], tb[:k]):
        assert x["S"] == pytest.approx(y["S"], abs=1e-3)
    if k < max(len(ta), len(tb)):
        s = [x["S"] for x in ta[:k]]
        assert any(abs(s[i] - s[j]) < 2e-3 for i in range(k) for j in range(i + 1, k)), "parted without a near tie"
    else:
        assert a["calls"] == b["calls"]


def test_fuse_in_bfloat16(weights, photos, tmp_path):
    """The accelerator default (bf16 weights and activations, float32 where BFL keeps it) runs end to end."""
    out = tmp_path / "bf16"
    assert main(["fuse", str(photos[0]), str(photos[1]), "--weights", str(weights), "--out", str(out), "--steps", "4",
                 "--size", "64", "--no-progress", "--dtype", "bfloat16"]) == 0
    r = json.loads((out / "report.json").read_text())
    assert r["settings"]["dtype"] == "bfloat16"
    assert np.isfinite(r["score"]) and all(np.isfinite(t["S"]) for t in r["trajectory"])
    img = np.asarray(Image.open(out / "fused.png"))
    assert img.shape == (64, 64, 3) and img.std() > 0

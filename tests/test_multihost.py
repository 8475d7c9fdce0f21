"""Multi-process `vmdiff batch`: two CPU processes on localhost joined by jax.distributed
(coordinator 127.0.0.1:<free port>, 2 processes, Gloo collectives for the final barrier)
split the pairs p -> process p % 2; together they produce exactly what one process does:
the same pairs, the same S per pair and byte-identical fused.png files."""

import json
import os
import re
import sys

import numpy as np
import pytest
from PIL import Image

from processes import free_port, run_all
from vmdiff_jax.app.cli import main

# one pair per call: every pair's calls are its own, so the split runs are bit-identical to one run
RUN = ["--demo-models", "random", "--size", "64", "--steps", "4", "--tiny-search", "--no-progress", "--locator", "whole",
       "--pairs-per-call", "1"]


def _folder(path):
    path.mkdir()
    rng = np.random.default_rng(1)
    for k, name in enumerate(["kettle", "owl", "pine_cone"]):
        a = rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)
        a[..., k] //= 4
        Image.fromarray(a).save(path / f"{name}.png")
    return path


def _results(out):
    reps = {p.parent.name: json.loads(p.read_text()) for p in (out / "pairs").glob("*/report.json")}
    png = {name: (out / "pairs" / name / "fused.png").read_bytes() for name in reps}
    return reps, png


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("multihost")
    imgs = _folder(tmp / "imgs")
    multi = tmp / "multi"
    port = free_port()
    commands = []
    for pid in range(2):
        env = dict(os.environ, VMDIFF_COORDINATOR=f"127.0.0.1:{port}", VMDIFF_NUM_PROCESSES="2",
                   VMDIFF_PROCESS_ID=str(pid), JAX_PLATFORMS="cpu")
        env.pop("XLA_FLAGS", None)
        commands.append(([sys.executable, "-m", "vmdiff_jax.app.cli", "batch", str(imgs), "--out", str(multi)] + RUN, env))
    logs = run_all(commands)
    single = tmp / "single"
    assert main(["batch", str(imgs), "--out", str(single)] + RUN) == 0
    return dict(multi=multi, single=single, logs=logs)


def test_each_process_runs_its_share(runs):
    for pid, log in enumerate(runs["logs"]):
        m = re.search(rf"process {pid}: ran (\d+), skipped (\d+)", log)
        assert m, log[-2000:]
        assert (int(m.group(1)), int(m.group(2))) == (3, 0)  # 6 ordered pairs, p % 2
    assert "6 pairs: SS" in runs["logs"][0]  # process 0 writes the table, after the barrier
    assert "pairs: SS" not in runs["logs"][1]
    table = json.loads((runs["multi"] / "results.json").read_text())
    assert table["aggregate"]["pairs"] == 6


def test_union_equals_single_process(runs):
    reps_m, png_m = _results(runs["multi"])
    reps_s, png_s = _results(runs["single"])
    assert sorted(reps_m) == sorted(reps_s) and len(reps_s) == 6
    for name in reps_s:
        assert reps_m[name]["score"] == reps_s[name]["score"], name
        assert reps_m[name]["parameters"] == reps_s[name]["parameters"], name
        assert reps_m[name]["seed"] == reps_s[name]["seed"], name
        assert png_m[name] == png_s[name], name  # identical bytes
    agg_m = json.loads((runs["multi"] / "results.json").read_text())["aggregate"]
    agg_s = json.loads((runs["single"] / "results.json").read_text())["aggregate"]
    assert agg_m["SS"] == agg_s["SS"] and agg_m["B_sim"] == agg_s["B_sim"]

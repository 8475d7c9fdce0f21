"""`vmdiff batch` on three tiny images with the demo models (size 64, 4 steps, --tiny-search):
pairs and per-pair seeds, the results table against the pairs' reports, resumption after
kill -9 (completed pairs skipped, none redone), and bad input (exit 2, one line)."""

import csv
import contextlib
import io
import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from vmdiff_jax import batch, score
from vmdiff_jax.cli import main

RUN = ["--demo-models", "--size", "64", "--steps", "4", "--tiny-search", "--no-progress", "--locator", "whole"]
NAMES = ["apple", "red_cup", "zebra"]


def _images(folder, names=NAMES):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for k, name in enumerate(names):
        a = rng.integers(0, 255, (48, 56, 3), dtype=np.uint8)
        a[..., k] = 255  # one dominant channel each: distinct images
        Image.fromarray(a).save(folder / f"{name}.png")
    return folder


def _reports(out):
    return {p.parent.name: json.loads(p.read_text()) for p in sorted((out / "pairs").glob("*/report.json"))}


def _counts(stdout):
    m = re.search(r"process 0: ran (\d+), skipped (\d+)", stdout)
    assert m, stdout
    return int(m.group(1)), int(m.group(2))


@pytest.fixture(scope="module")
def ordered(tmp_path_factory):
    """A run killed with SIGKILL after its first pair completed, then resumed in-process."""
    tmp = tmp_path_factory.mktemp("batch")
    imgs, out = _images(tmp / "imgs"), tmp / "out"
    argv = ["batch", str(imgs), "--out", str(out)] + RUN
    proc = subprocess.Popen([sys.executable, "-m", "vmdiff_jax.cli"] + argv, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    t0 = time.time()
    try:
        while not list((out / "pairs").glob("*/report.json")):
            assert proc.poll() is None, f"batch ended before a pair completed: {proc.stdout.read()[-3000:]}"
            assert time.time() - t0 < 240, "no pair completed in 240 s"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    done = {p.parent.name: p.stat().st_mtime_ns for p in (out / "pairs").glob("*/report.json")}
    fused = {name: (out / "pairs" / name / "fused.png").read_bytes() for name in done}
    table_before_resume = (out / "results.csv").exists()
    # resume here, so that every test of this module (whichever xdist worker runs it) sees the finished run
    runs = []
    for _ in range(2):  # the resumed run, then one with nothing left to do
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            code = main(argv)
        runs.append((code, _counts(buf.getvalue())))
    return dict(imgs=imgs, out=out, argv=argv, done=done, fused=fused, runs=runs, table_before_resume=table_before_resume)


def test_resume_after_kill_skips_completed_pairs(ordered):
    out, done = ordered["out"], ordered["done"]
    assert 1 <= len(done) < 6  # killed mid-run
    assert not ordered["table_before_resume"]  # the table is written at the end only
    (code, (ran, skipped)), (code2, counts2) = ordered["runs"]
    assert code == 0 and (ran, skipped) == (6 - len(done), len(done))
    for name, mtime in done.items():  # completed pairs untouched
        assert (out / "pairs" / name / "report.json").stat().st_mtime_ns == mtime
        assert (out / "pairs" / name / "fused.png").read_bytes() == ordered["fused"][name]
    assert not list(out.rglob("*.tmp"))  # nothing half-written left behind
    assert code2 == 0 and counts2 == (0, 6)  # a third run has nothing left to do


def test_ordered_pairs_table_matches_reports(ordered):
    out = ordered["out"]
    reps = _reports(out)
    want = [(i, j) for i in range(3) for j in range(3) if i != j]
    assert sorted(reps) == [f"{i:03d}_{j:03d}_{NAMES[i]}__{NAMES[j]}" for i, j in want]
    for (i, j), (name, r) in zip(want, sorted(reps.items())):
        assert r["seed"] == batch.pair_seed(0, i, j)
        assert r["labels"] == [NAMES[i].replace("_", " "), NAMES[j].replace("_", " ")]
        assert r["image1"] == f"{NAMES[i]}.png" and r["image2"] == f"{NAMES[j]}.png"
        assert (out / "pairs" / name / "fused.png").is_file() and (out / "pairs" / name / "search.png").is_file()
    assert len({r["seed"] for r in reps.values()}) == 6

    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0].keys()) == batch.COLUMNS
    assert [int(r["pair"]) for r in rows] == list(range(6))
    table = json.loads((out / "results.json").read_text())
    assert len(table["pairs"]) == 6
    by_pair = {r["pair"]: r for r in reps.values()}
    for row in rows:
        r = by_pair[int(row["pair"])]
        s = r["subscores"]
        assert float(row["S"]) == pytest.approx(r["score"], abs=1e-12)
        assert float(row["b_sim"]) == pytest.approx(r["b_sim"], abs=1e-12)
        assert r["b_sim"] == pytest.approx(float(score.b_sim(s["d1"], s["d2"], s["n1"], s["n2"])), abs=1e-6)
        # S = d1 + d2 + n1 + n2 - B_sim
        assert r["score"] == pytest.approx(s["d1"] + s["d2"] + s["n1"] + s["n2"] - r["b_sim"], abs=1e-5)
        assert int(row["calls"]) == r["calls"] and float(row["alpha"]) == pytest.approx(r["parameters"]["alpha"])
    agg = table["aggregate"]
    assert agg["pairs"] == 6
    assert agg["SS"] == pytest.approx(np.mean([r["score"] for r in reps.values()]), abs=1e-12)
    assert agg["B_sim"] == pytest.approx(np.mean([r["b_sim"] for r in reps.values()]), abs=1e-12)
    assert agg["calls_per_pair"] == pytest.approx(np.mean([r["calls"] for r in reps.values()]))


def test_unordered_pairs_reuse_per_pair_seeds(ordered, tmp_path, capsys):
    out = tmp_path / "unordered"
    assert main(["batch", str(ordered["imgs"]), "--out", str(out), "--unordered"] + RUN) == 0
    assert _counts(capsys.readouterr().out) == (3, 0)
    reps = _reports(out)
    assert sorted(reps) == ["000_001_apple__red_cup", "000_002_apple__zebra", "001_002_red_cup__zebra"]
    table = json.loads((out / "results.json").read_text())
    assert table["aggregate"]["pairs"] == 3
    assert table["aggregate"]["SS"] == pytest.approx(np.mean([r["score"] for r in reps.values()]), abs=1e-12)
    # a pair's seed depends on (seed, i, j) only: the same result as in the ordered run
    for name in reps:
        assert (out / "pairs" / name / "fused.png").read_bytes() == \
            (ordered["out"] / "pairs" / name / "fused.png").read_bytes()


def test_table_ignores_other_pairs_in_a_reused_out(ordered, tmp_path, capsys):
    """--unordered into the ordered run's folder: 3 pairs skipped, the table has those 3 only."""
    out = ordered["out"]
    assert main(["batch", str(ordered["imgs"]), "--out", str(out), "--unordered"] + RUN) == 0
    assert _counts(capsys.readouterr().out) == (0, 3)
    assert json.loads((out / "results.json").read_text())["aggregate"]["pairs"] == 3
    assert main(ordered["argv"]) == 0  # back to the 6-pair table
    capsys.readouterr()
    assert json.loads((out / "results.json").read_text())["aggregate"]["pairs"] == 6


@pytest.mark.parametrize("case", ["missing", "empty", "one_image", "not_images"])
def test_bad_folder_exits_2_with_one_line(case, tmp_path, capsys):
    folder = tmp_path / "imgs"
    if case == "empty":
        folder.mkdir()
    elif case == "one_image":
        _images(folder, ["apple"])
    elif case == "not_images":
        folder.mkdir()
        (folder / "a.txt").write_text("x")
        (folder / "b.json").write_text("{}")
    out = tmp_path / "out"
    code = main(["batch", str(folder), "--out", str(out)] + RUN)
    err = capsys.readouterr().err
    assert code == 2, err
    lines = [l for l in err.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("vmdiff: error:"), err
    assert str(folder) in lines[0]
    assert ("no such folder" in lines[0]) if case == "missing" else ("at least two images" in lines[0])
    assert not out.exists()  # nothing written


def test_pairs_spread_over_four_devices_equal_one_device(tmp_path):
    """With 4 (simulated) devices and one candidate per round, pairs run concurrently, one per
    device; every pair's outputs equal the single-device run's (seeds are per pair)."""
    import os
    import subprocess
    import sys

    from PIL import Image

    imgs = tmp_path / "imgs"
    imgs.mkdir()
    rng = np.random.default_rng(5)
    for name in ("cat", "teapot", "cactus"):
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(imgs / f"{name}.png")
    args = ["batch", str(imgs), "--demo-models", "--size", "64", "--steps", "4", "--tiny-search", "--locator", "whole",
            "--no-progress"]

    def run(out, devices):
        env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
        r = subprocess.run([sys.executable, "-m", "vmdiff_jax.cli"] + args + ["--out", str(out)], env=env,
                           capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr[-2000:]
        return r.stdout

    one = run(tmp_path / "one", 1)
    four = run(tmp_path / "four", 4)
    assert "(1 pair(s) at a time" in one and "(4 pair(s) at a time" in four
    for d in sorted((tmp_path / "one" / "pairs").iterdir()):
        other = tmp_path / "four" / "pairs" / d.name
        assert (d / "fused.png").read_bytes() == (other / "fused.png").read_bytes(), d.name
        a, b = (json.loads((x / "report.json").read_text()) for x in (d, other))
        assert a["score"] == b["score"] and a["parameters"] == b["parameters"]

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

from vmdiff_jax.app import batch
from vmdiff_jax.method import score
from vmdiff_jax.app.cli import main

RUN = ["--demo-models", "random", "--size", "64", "--steps", "4", "--tiny-search", "--no-progress", "--locator", "whole"]
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
    proc = subprocess.Popen([sys.executable, "-m", "vmdiff_jax.app.cli"] + argv, stdout=subprocess.PIPE,
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
    # the killed run's claims (its pid is gone) were taken over, once each
    takeovers = list((out / "claims").glob("*.takeover-*"))
    assert 1 <= len(takeovers) <= 6 - len(done)


def test_ordered_pairs_table_matches_reports(ordered):
    out = ordered["out"]
    reps = _reports(out)
    want = [(i, j) for i in range(3) for j in range(3) if i != j]
    images = batch.list_images(ordered["imgs"])
    assert sorted(reps) == [batch.pair_dir(out, images, i, j).name for i, j in want]
    assert all(name.startswith(f"{i:03d}_{j:03d}_{NAMES[i]}__{NAMES[j]}_") for (i, j), name in zip(want, sorted(reps)))
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
    assert [name.rsplit("_", 1)[0] for name in sorted(reps)] == ["000_001_apple__red_cup", "000_002_apple__zebra",
                                                               "001_002_red_cup__zebra"]
    table = json.loads((out / "results.json").read_text())
    assert table["aggregate"]["pairs"] == 3
    assert table["aggregate"]["SS"] == pytest.approx(np.mean([r["score"] for r in reps.values()]), abs=1e-12)
    # a pair's seed depends on (seed, i, j) only: the same result as in the ordered run (which
    # shared its calls with other pairs: the same choices, S within S_TOL)
    _same_choices(reps, {name: r for name, r in _reports(ordered["out"]).items() if name in reps})


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


def _best_round(report):
    """The outer round of the chosen candidate (the first trajectory entry with the best S)."""
    return next(t["round"] for t in report["trajectory"] if t["S"] == report["score"])


# A call of another size (other pairs, other padding) sums float32 GEMMs in another order
# (eps_b differs by ~2e-7 relative), which rounds a few pixels of a candidate's uint8 image the
# other way; on the random-weight demo models each flipped pixel moves S by ~3e-5 (measured: 2
# pixels, 6e-5 at 1 vs 8 slots; up to 2.4e-4 at 12 pairs per call). The choices stay identical.
S_TOL = 5e-4


def _same_choices(a, b, s_tol=S_TOL):
    """Two runs' reports of one pair: same chosen alpha, betas and round, S within s_tol; every
    candidate of the trajectory the same parameters, S within s_tol."""
    assert sorted(a) == sorted(b)
    for name in a:
        ra, rb = a[name], b[name]
        assert ra["parameters"] == rb["parameters"], name
        assert _best_round(ra) == _best_round(rb), name
        assert ra["calls"] == rb["calls"] and ra["rounds"] == rb["rounds"], name
        assert abs(ra["score"] - rb["score"]) <= s_tol, (name, ra["score"], rb["score"])
        assert len(ra["trajectory"]) == len(rb["trajectory"])
        for ta, tb in zip(ra["trajectory"], rb["trajectory"]):
            assert (ta["alpha"], ta["beta1"], ta["beta2"]) == (tb["alpha"], tb["beta1"], tb["beta2"])
            assert abs(ta["S"] - tb["S"]) <= s_tol


def test_pairs_per_call_does_not_change_results(ordered, tmp_path, capsys):
    """The ordered run shares calls among 4 pairs (--pairs-per-call auto = 4 on one CPU); one
    pair at a time gives every pair the same choices and S within S_TOL, in more calls."""
    out = tmp_path / "p1"
    assert main(["batch", str(ordered["imgs"]), "--out", str(out), "--pairs-per-call", "1"] + RUN) == 0
    assert _counts(capsys.readouterr().out) == (6, 0)
    _same_choices(_reports(out), _reports(ordered["out"]))
    one = json.loads((out / "results.json").read_text())["aggregate"]
    assert one["pairs_per_call"] == 1 and 0 < one["mean_occupancy"] <= 1.0
    # one pair at a time: every request of a pair is its own call
    assert one["sequential_calls"] == sum(r["rounds"] for r in _reports(out).values())


def test_aggregate_counts_calls_and_occupancy(ordered):
    agg = json.loads((ordered["out"] / "results.json").read_text())["aggregate"]
    assert agg["sequential_calls"] == 0 and agg["mean_occupancy"] is None  # the last run had nothing left to do
    assert agg["failed"] == 0 and json.loads((ordered["out"] / "results.json").read_text())["failed"] == []


def test_bad_image_fails_its_pairs_only(tmp_path, capsys):
    """A corrupt file among good images: its pairs are recorded as failed (image, reason) in
    results.json and the CSV, reported once on stderr, every other pair completes, exit 2;
    a rerun skips the completed pairs and fails the same ones again."""
    imgs = _images(tmp_path / "imgs", ["apple", "zebra"])
    (imgs / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    out = tmp_path / "out"
    argv = ["batch", str(imgs), "--out", str(out), "--pairs-per-call", "3"] + RUN
    assert main(argv) == 2
    captured = capsys.readouterr()
    errs = [l for l in captured.err.splitlines() if l.strip()]
    assert len(errs) == 1 and "broken.png" in errs[0] and errs[0].startswith("vmdiff: error:"), captured.err
    m = re.search(r"ran (\d+), skipped (\d+) already complete or claimed, failed (\d+)", captured.out)
    assert m and m.groups() == ("2", "0", "4"), captured.out
    table = json.loads((out / "results.json").read_text())
    assert table["aggregate"]["pairs"] == 2 and table["aggregate"]["failed"] == 4
    assert len(table["failed"]) == 4
    for f in table["failed"]:
        assert f["failed_image"] == "broken.png" and "broken.png" in f["reason"] and "broken.png" in (f["image1"], f["image2"])
    with open(out / "results.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 6 and sum(r["failed_image"] == "broken.png" for r in rows) == 4
    assert all(r["S"] == "" for r in rows if r["failed_image"]) and all(r["S"] for r in rows if not r["failed_image"])
    assert len(_reports(out)) == 2
    page = (out / "index.html").read_text(encoding="utf-8")  # the pair grid: 2 fused cells, 4 failed ones
    assert page.count("cell failed") == 4 and "not an image file" in page and page.count("data:image/jpeg;base64") >= 2
    # the two good pairs searched together: their requests shared calls
    assert table["aggregate"]["sequential_calls"] < sum(r["rounds"] for r in _reports(out).values())
    assert main(argv) == 2
    m = re.search(r"ran (\d+), skipped (\d+) already complete or claimed, failed (\d+)", capsys.readouterr().out)
    assert m.groups() == ("0", "2", "4")


def _cli(argv, env=None, **kw):
    return subprocess.Popen([sys.executable, "-m", "vmdiff_jax.app.cli"] + argv, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env, **kw)


def test_two_runs_on_one_out_compute_each_pair_once(ordered, tmp_path):
    """Two processes started together on one --out: every pair is computed by exactly one of
    them (claims), and together they complete all six."""
    out = tmp_path / "shared"
    procs = [_cli(["batch", str(ordered["imgs"]), "--out", str(out), "--pairs-per-call", str(p)] + RUN) for p in (1, 2)]
    logs = [p.communicate(timeout=600)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), logs
    counts = [_counts(log) for log in logs]
    assert sum(ran for ran, _ in counts) == 6, logs  # each pair computed exactly once
    assert all(ran + skipped == 6 for ran, skipped in counts), logs
    reps = _reports(out)
    assert len(reps) == 6
    assert sorted(p.name for p in (out / "claims").glob("*.claim")) == sorted(f"{n}.claim" for n in reps)
    _same_choices(reps, _reports(ordered["out"]))


def test_data_by_fsdp_on_eight_devices_equals_one_device(ordered, tmp_path):
    """8 simulated CPU devices as data 4 x fsdp 2 (candidate rows over 'data', parameters FSDP
    over 'fsdp'): the same choices as the one-device run, S within S_TOL (sharded reductions)."""
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    out = tmp_path / "eight"
    p = _cli(["batch", str(ordered["imgs"]), "--out", str(out), "--fsdp", "2", "--pairs-per-call", "2"] + RUN, env=env)
    log = p.communicate(timeout=600)[0]
    assert p.returncode == 0, log[-3000:]
    assert _counts(log) == (6, 0)
    reps = _reports(out)
    assert all(r["settings"]["devices"] == 8 for r in reps.values())
    _same_choices(reps, _reports(ordered["out"]))


def test_auto_pairs_per_call_from_memory_and_mesh(monkeypatch):
    """auto: 4 x 'data' without a memory figure (CPU); otherwise grows with the device memory left
    beside the parameters, within 1 .. 64."""
    from vmdiff_jax.engine import sharding
    from vmdiff_jax.engine.pipeline import VMDiff

    pipe = VMDiff.demo(random=True, num_steps=2, size=512, locator="whole")
    assert batch.auto_pairs_per_call(pipe) == 4 * pipe.data
    got = []
    for gib in (1, 4, 16, 80):
        monkeypatch.setattr(sharding, "device_memory_bytes", lambda device=None, g=gib: g * 2**30)
        got.append(batch.auto_pairs_per_call(pipe))
    assert got == sorted(got) and got[0] >= 1 and got[-1] == 64 and got[0] < got[-1], got

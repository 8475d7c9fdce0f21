"""`vmdiff batch` used as a hostile user would (issue 17): file names of any length and content,
reruns with other settings, an image fixed after it failed, an image changed under a finished
pair, every format `fuse` reads, and a broken environment. Nothing is silently wrong, stuck,
injected or decoded when it was refused."""

import contextlib
import csv
import io
import json
import os
import re
import subprocess
import sys
import urllib.parse
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from vmdiff_jax.app import batch, claims, gallery, image_pairs, pairs_table
from vmdiff_jax.app.cli import main
from vmdiff_jax.app.inputs import displayable

RUN = ["--demo-models", "random", "--size", "32", "--steps", "2", "--tiny-search", "--no-progress", "--locator", "whole"]
CONTROL = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")  # anything but \n

# file names (bytes: some are not UTF-8) covering every family of the issue
LONG_115 = b"l" * 115 + b".png"
LONG_200 = b"a" * 200 + b".png"
HOSTILE = [
    LONG_115, LONG_200,
    b"x" * 60 + b"_one.png", b"x" * 60 + b"_two.png",  # equal after truncation
    b"ctl\x1b[31mred\x07bell\x08.png", b"new\nline\rcr\ttab.png",  # control bytes
    b"=SUM(1+1).png", b"@cmd.png", b"+1.png", b"-2.png",  # spreadsheet formulas
    b"hash#pct%20q?amp&.png", b"quotes'\"`.png",
    b"<img src=x onerror=alert(1)>.png", b"<script>alert(1)<\\script>.png",  # HTML
    b"caf\xe9\xff.png", b"\xc3\x28bad.png",  # not UTF-8
    b"\xe2\x80\xaegnp.exe.png", b"emoji\xf0\x9f\x90\xbc.png", b"  spaced  .png", b"UPPER.PNG", b"upper.png",
]


def _names():
    return [os.fsdecode(n) for n in HOSTILE]


def test_pair_names_are_bounded_unique_and_safe(tmp_path):
    """Every ordered pair of the hostile names: a folder name of at most 120 bytes, of safe
    characters only, distinct from every other; its claim, takeover and temporary names fit
    the 255-byte limit and can be created."""
    images = [Path(n) for n in _names()]
    names = {image_pairs.pair_name(images, i, j) for i, j in image_pairs.pairs_of(len(images))}
    assert len(names) == len(images) * (len(images) - 1)
    for name in names:
        raw = name.encode("utf-8")
        assert len(raw) <= 120 and re.fullmatch(r"[\w+\-]+", name), name
        assert len(raw) + len(".claim.takeover-") + 32 <= 255 and len(raw) + len(".claim.") + 32 + len(".tmp") + 1 <= 255
    one = image_pairs.pair_dir(tmp_path, images, 0, 1)  # the 115-character pair: its folder and claim work on disk
    one.mkdir(parents=True)
    assert claims.acquire(tmp_path / "claims" / f"{one.name}.claim")
    # names equal after truncation still differ by their hash
    a, b = (image_pairs.pair_name(images, 2, k) for k in (0, 1))
    c, d = image_pairs.pair_name(images, 0, 2), image_pairs.pair_name(images, 0, 3)
    assert c.rsplit("_", 1)[0][8:] == d.rsplit("_", 1)[0][8:] and c != d and a != b


@pytest.mark.parametrize("name", _names())
def test_names_are_shown_escaped(name):
    shown = displayable(name)
    assert not CONTROL.search(shown) and "\n" not in shown, repr(shown)
    shown.encode("utf-8")  # valid UTF-8
    cell = pairs_table.spreadsheet_safe(name)
    assert not cell.startswith(pairs_table.FORMULA_STARTS), cell
    href = gallery.url(f"pairs/{name}/fused.png")
    assert not re.search(r"[#?\"'<>\s&]", href) and re.fullmatch(r"([^%]|%[0-9A-F]{2})*", href), href
    assert urllib.parse.unquote(href) == f"pairs/{displayable(name)}/fused.png"


def test_csv_cells_never_start_a_formula():
    rows = [{"pair": k, "image1": n, "image2": "b.png", "label1": n, "label2": "=1+1", "S": -1.5, "d1": 0, "d2": 0,
             "n1": 0, "n2": 0, "b_sim": 0, "alpha": 0.5, "beta1": 1, "beta2": 1, "calls": 1, "rounds": 1, "time_s": 0}
            for k, n in enumerate(_names())]
    failed = [{"pair": 99, "image1": "@x.png", "image2": "-y.png", "label1": "x", "label2": "y", "failed_image": "-y.png",
               "reason": "=HYPERLINK(\"http://evil\")"}]
    table = list(csv.DictReader(io.StringIO(pairs_table.csv_bytes(rows, failed).decode("utf-8"))))
    assert len(table) == len(rows) + 1
    for r in table:
        for k in pairs_table.TEXT_COLUMNS:
            assert not r[k].startswith(pairs_table.FORMULA_STARTS), (k, r[k])
        assert float(r["S"] or 0) in (-1.5, 0.0)  # numbers stay numbers (a negative S is not quoted)
    assert table[-1]["reason"] == "'=HYPERLINK(\"http://evil\")"


def _run(argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def _counts(stdout):
    m = re.search(r"process 0: ran (\d+), skipped (\d+) already complete or claimed, failed (\d+)", stdout)
    assert m, stdout
    return tuple(int(x) for x in m.groups())


def _animated_gif(path, colors):
    frames = [Image.new("RGB", (40, 40), c) for c in colors]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    """One batch over four hostile names in three formats (animated GIF, TIFF, PNG) with a text
    file and a hidden file beside them, unordered (6 pairs); then a rerun."""
    tmp = tmp_path_factory.mktemp("hostile")
    folder = tmp / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    raw = os.fsencode(folder)
    _animated_gif(os.fsdecode(raw + b"/" + LONG_200[:-4] + b".gif"), [(250, 30, 30), (30, 30, 250)])
    Image.fromarray(rng.integers(0, 255, (40, 44, 3), dtype=np.uint8)).save(
        os.fsdecode(raw + b"/=cmd" + b"x" * 60 + b"_one.tif"))
    Image.fromarray(rng.integers(0, 255, (44, 40, 3), dtype=np.uint8)).save(
        os.fsdecode(raw + b"/=cmd" + b"x" * 60 + b"_two.png"))
    weird = b"<img src=x onerror=alert(1)>caf\xe9 #%?&'\"\x1b[31m\x07\nline"
    Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(os.fsdecode(raw + b"/" + weird + b".png"),
                                                                          format="PNG")
    (folder / "notes.txt").write_text("not an image")
    Image.new("RGB", (40, 40)).save(folder / ".hidden.png")
    out = tmp / "out"
    argv = ["batch", str(folder), "--out", str(out), "--unordered"] + RUN
    first = _run(argv)
    second = _run(argv)
    return dict(folder=folder, out=out, argv=argv, first=first, second=second, weird=os.fsdecode(weird + b".png"))


def _reports(out):
    return {p.parent.name: json.loads(p.read_text(encoding="utf-8")) for p in sorted((out / "pairs").glob("*/report.json"))}


def test_hostile_batch_completes_every_pair(hostile):
    code, stdout, stderr = hostile["first"]
    assert code == 0, stderr
    assert _counts(stdout) == (6, 0, 0)
    reps = _reports(hostile["out"])
    assert len(reps) == 6 and all(len(n.encode()) <= 120 for n in reps)
    code2, stdout2, _ = hostile["second"]
    assert code2 == 0 and _counts(stdout2) == (0, 6, 0)  # the rerun has nothing left to do


def test_hostile_names_never_reach_the_terminal_raw(hostile):
    code, stdout, stderr = hostile["first"]
    for text in (stdout, stderr):
        assert not CONTROL.search(text), repr(CONTROL.search(text).group())
    assert "\\x1b[31m\\x07\\x0aline" in stderr  # the weird name, escaped, in its notices


def test_batch_reads_every_format_and_says_what_it_changed(hostile):
    _, _, stderr = hostile["first"]
    notices = [line for line in stderr.splitlines() if line.startswith("vmdiff: notice:")]
    assert any("2 file(s) skipped" in n and "notes.txt" in n and ".hidden.png" in n for n in notices), notices
    gif = [n for n in notices if "animated image (2 frames)" in n]
    assert len(gif) == 1 and ".gif" in gif[0]  # said once, though the GIF is in three pairs
    assert any("its label is" in n and "tokens in the score's CLIP text" in n for n in notices)
    assert any("the FLUX prompt is" in n for n in notices)
    table = json.loads((hostile["out"] / "results.json").read_text(encoding="utf-8"))
    names = {r["image1"] for r in table["pairs"]} | {r["image2"] for r in table["pairs"]}
    assert {Path(n).suffix for n in names} == {".gif", ".tif", ".png"}
    for r in _reports(hostile["out"]).values():  # the notices are in each pair's report too
        has_gif = r["image1"].endswith(".gif") or r["image2"].endswith(".gif")
        assert any("animated image" in n for n in r["notices"]) == has_gif, r["notices"]
        if has_gif:
            assert any("tokens in the score's CLIP text" in n for n in r["notices"])


def test_tables_keep_full_names_and_neutralise_formulas(hostile):
    out = hostile["out"]
    table = json.loads((out / "results.json").read_text(encoding="utf-8"))
    names = {r["image1"] for r in table["pairs"]} | {r["image2"] for r in table["pairs"]}
    assert "a" * 200 + ".gif" in names and displayable(hostile["weird"]) in names  # full names, shown safely
    assert table["settings"]["steps"] == 2 and table["settings"]["search"] == "tiny"
    with open(out / "results.csv", encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 6
    cells = [r[k] for r in rows for k in pairs_table.TEXT_COLUMNS]
    assert not [c for c in cells if c.startswith(pairs_table.FORMULA_STARTS)]
    assert any(c.startswith("'=cmd") for c in cells)  # the formula names, quoted
    assert not any(CONTROL.search(c) for c in cells)


def test_gallery_links_are_url_encoded_and_resolve(hostile):
    out = hostile["out"]
    page = (out / "index.html").read_text(encoding="utf-8")
    hrefs = re.findall(r'href="([^"]*)"', page)
    assert len(hrefs) == 6
    for h in hrefs:
        assert not re.search(r"[#?\s]", h), h
        assert (out / urllib.parse.unquote(h)).is_file(), h
    assert "<img src=x onerror" not in page and "&lt;img src=x onerror=alert(1)&gt;" in page
    assert page.count("data:image/jpeg;base64") >= 6 + 4  # every fused cell and every input header


def _snapshot(out):
    return {p: p.stat().st_mtime_ns for p in out.rglob("*")}


@pytest.mark.parametrize("flag", [["--steps", "3"], ["--seed", "1"], ["--size", "48"], ["--schedule", "authors"],
                                  ["--batch", "2"], ["--slerp", "lerp"], ["--score-text", "authors"],
                                  ["--locator", "dino"], ["--no-tiny-search"]], ids=lambda f: f[0])
def test_rerun_with_other_settings_is_refused_naming_the_setting(hostile, flag):
    """Refused in one line naming the differing flag, before any model is loaded; nothing in --out changes."""
    out = hostile["out"]
    before = _snapshot(out)
    argv = [a for a in hostile["argv"] if a != "--tiny-search"] if flag == ["--no-tiny-search"] else hostile["argv"] + flag
    code, stdout, stderr = _run(argv)
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("vmdiff: error:"), stderr
    named = "--tiny-search" if flag == ["--no-tiny-search"] else flag[0]
    assert f"({named}: " in lines[0] and "other settings" in lines[0], lines[0]
    assert _snapshot(out) == before and stdout == ""


def test_same_settings_other_pair_set_is_not_a_new_setting(hostile):
    """--pairs-per-call and --unordered change how and which pairs run, not a pair's result."""
    argv = hostile["argv"] + ["--pairs-per-call", "1"]
    code, stdout, _ = _run(argv)
    assert code == 0 and _counts(stdout) == (0, 6, 0)


def test_a_broken_batch_record_is_one_line(hostile, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "batch.json").write_text("{not json")
    code, _, stderr = _run(["batch", str(hostile["folder"]), "--out", str(out)] + RUN)
    assert code == 2 and stderr.count("\n") == 1 and "batch.json" in stderr and "not a vmdiff batch record" in stderr


def _folder(path, names, seed=0):
    path.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for k, name in enumerate(names):
        a = rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)
        a[..., k % 3] = 255
        Image.fromarray(a).save(path / name)
    return path


def test_fixed_image_is_retried_and_completes(tmp_path):
    """A broken image fails its pairs; once fixed, the next run computes them and replaces their
    failed.json by the result (before issue 17 it refused to write them, every time)."""
    imgs = _folder(tmp_path / "imgs", ["apple.png", "zebra.png"])
    (imgs / "cup.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    out = tmp_path / "out"
    argv = ["batch", str(imgs), "--out", str(out), "--unordered"] + RUN
    code, stdout, stderr = _run(argv)
    assert code == 2 and _counts(stdout) == (1, 0, 2) and "cup.png" in stderr
    failed = sorted(out.glob("pairs/*/failed.json"))
    assert len(failed) == 2
    Image.fromarray(np.full((40, 40, 3), 90, np.uint8)).save(imgs / "cup.png")
    code, stdout, stderr = _run(argv)
    assert code == 0 and _counts(stdout) == (2, 1, 0), stdout + stderr
    assert not list(out.glob("pairs/*/failed.json"))
    for f in failed:
        assert sorted(p.name for p in f.parent.iterdir()) == ["fused.png", "report.json", "search.png"]
    table = json.loads((out / "results.json").read_text())
    assert table["aggregate"]["pairs"] == 3 and table["aggregate"]["failed"] == 0 and table["failed"] == []
    assert "cell failed" not in (out / "index.html").read_text(encoding="utf-8")


def test_changed_image_and_stale_pair_are_computed_anew(tmp_path):
    """A pair is done only when its report carries this batch's settings and its inputs'
    digests: an image changed under a finished pair, or a report of other settings (left by an
    older run), is computed again, never reported as this run's result."""
    imgs = _folder(tmp_path / "imgs", ["apple.png", "zebra.png", "cup.png"])
    out = tmp_path / "out"
    argv = ["batch", str(imgs), "--out", str(out), "--unordered"] + RUN
    assert _run(argv)[0] == 0
    reps = _reports(out)
    images = batch.list_images(imgs)  # apple, cup, zebra
    Image.fromarray(np.full((40, 40, 3), 10, np.uint8)).save(imgs / "zebra.png")  # changed under its finished pairs
    stale = batch.pair_dir(out, images, 0, 1).name  # apple + cup: not touched by the change
    r = reps[stale]
    r["batch_settings"] = {**r["batch_settings"], "steps": 99}  # as if an older run wrote it
    (out / "pairs" / stale / "report.json").write_text(json.dumps(r))
    code, stdout, stderr = _run(argv)
    assert code == 0 and _counts(stdout) == (3, 0, 0), stdout + stderr  # 2 pairs with zebra + the stale one
    new = _reports(out)
    assert new[stale]["batch_settings"]["steps"] == 2
    z = [name for name, rep in new.items() if "zebra.png" in (rep["image1"], rep["image2"])]
    assert len(z) == 2 and all(new[n]["inputs"] != reps[n]["inputs"] for n in z)


ENV_CASES = [
    ({"VMDIFF_CLAIM_LEASE_S": "0"}, "VMDIFF_CLAIM_LEASE_S"),
    ({"VMDIFF_CLAIM_LEASE_S": "ten"}, "VMDIFF_CLAIM_LEASE_S"),
    ({"VMDIFF_CLAIM_LEASE_S": "nan"}, "VMDIFF_CLAIM_LEASE_S"),
    ({"VMDIFF_COORDINATOR": "127.0.0.1:1234"}, "VMDIFF_NUM_PROCESSES"),
    ({"VMDIFF_COORDINATOR": "127.0.0.1:1234", "VMDIFF_NUM_PROCESSES": "two", "VMDIFF_PROCESS_ID": "0"}, "integer"),
    ({"VMDIFF_COORDINATOR": "127.0.0.1:1234", "VMDIFF_NUM_PROCESSES": "2", "VMDIFF_PROCESS_ID": "2"}, "VMDIFF_PROCESS_ID"),
    ({"VMDIFF_COORDINATOR": "127.0.0.1:1234", "VMDIFF_NUM_PROCESSES": "0", "VMDIFF_PROCESS_ID": "0"}, "at least 1"),
    ({"VMDIFF_COORDINATOR": "localhost", "VMDIFF_NUM_PROCESSES": "2", "VMDIFF_PROCESS_ID": "0"}, "host:port"),
    ({"VMDIFF_COORDINATOR": "h:99999", "VMDIFF_NUM_PROCESSES": "2", "VMDIFF_PROCESS_ID": "0"}, "port"),
    ({"VMDIFF_NUM_PROCESSES": "2"}, "VMDIFF_COORDINATOR"),
    ({"VMDIFF_DISTRIBUTED": "yes"}, "VMDIFF_DISTRIBUTED"),
    ({"VMDIFF_DISTRIBUTED": "auto", "VMDIFF_COORDINATOR": "h:1"}, "use one of them"),
]


@pytest.mark.parametrize("env, needle", ENV_CASES, ids=[" ".join(f"{k}={v}" for k, v in e.items()) for e, _ in ENV_CASES])
def test_environment_mistakes_are_one_line_and_create_nothing(tmp_path, monkeypatch, env, needle):
    imgs = _folder(tmp_path / "imgs", ["apple.png", "zebra.png"])
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    out = tmp_path / "out"
    code, stdout, stderr = _run(["batch", str(imgs), "--out", str(out)] + RUN)
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("vmdiff: error:") and needle in lines[0], stderr
    assert not out.exists() and stdout == ""


def test_distributed_auto_off_a_cluster_is_one_line(tmp_path):
    imgs = _folder(tmp_path / "imgs", ["apple.png", "zebra.png"])
    out = tmp_path / "out"
    env = dict(os.environ, VMDIFF_DISTRIBUTED="auto", JAX_PLATFORMS="cpu")
    p = subprocess.run([sys.executable, "-m", "vmdiff_jax.app.cli", "batch", str(imgs), "--out", str(out)] + RUN,
                       env=env, capture_output=True, text=True, timeout=300)
    lines = [line for line in p.stderr.splitlines() if line.strip()]
    assert p.returncode == 2 and len(lines) == 1 and "VMDIFF_DISTRIBUTED=auto found no cluster" in lines[0], p.stderr
    assert not out.exists()


@pytest.mark.parametrize("out", ["", "   "])
@pytest.mark.parametrize("cmd", ["batch", "fuse"])
def test_empty_out_is_refused(tmp_path, monkeypatch, cmd, out):
    imgs = _folder(tmp_path / "imgs", ["apple.png", "zebra.png"])
    monkeypatch.chdir(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    args = [str(imgs)] if cmd == "batch" else [str(imgs / "apple.png"), str(imgs / "zebra.png")]
    code, _, stderr = _run([cmd, *args, "--out", out] + (RUN if cmd == "batch" else ["--steps", "2", "--size", "32"]))
    assert code == 2 and stderr.count("\n") == 1 and "--out is empty" in stderr, stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_out_that_is_a_file_is_refused_before_loading(tmp_path):
    imgs = _folder(tmp_path / "imgs", ["apple.png", "zebra.png"])
    (tmp_path / "out").write_text("x")
    code, _, stderr = _run(["batch", str(imgs), "--out", str(tmp_path / "out")] + RUN)
    assert code == 2 and "--out exists and is not a folder" in stderr and (tmp_path / "out").read_text() == "x"


def test_a_refused_image_is_never_decoded(tmp_path, monkeypatch):
    """The gallery's header thumbnails come from the images the run loaded, or through the
    loader's guards: a 81-megapixel PNG (0.3 MB) that the loader refuses is never decoded."""
    big = tmp_path / "big.png"
    Image.new("L", (9000, 9000), 128).save(big)
    small = _folder(tmp_path / "imgs", ["apple.png"]) / "apple.png"
    decoded = []
    real_load = ImageFile.ImageFile.load

    def load(im):
        decoded.append(Path(getattr(im, "filename", "") or "?").name)
        return real_load(im)

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)
    heads = batch.header_thumbnails([big, small], {})
    assert "big.png" not in decoded and "apple.png" in decoded
    assert set(heads) == {"apple.png"} and max(heads["apple.png"].shape[:2]) <= batch.HEADER_SIDE


def test_folder_listing_takes_every_format_and_names_what_it_skips(tmp_path):
    folder = _folder(tmp_path / "imgs", ["a.gif", "b.TIFF", "c.webp", "d.bmp", ".hidden.png"])
    (folder / "notes.txt").write_text("x")
    (folder / "dir.png").mkdir()
    os.mkfifo(folder / "fifo.png")
    os.symlink("/dev/zero", folder / "zero.jpg")
    notices = []
    assert [p.name for p in batch.list_images(folder, notices)] == ["a.gif", "b.TIFF", "c.webp", "d.bmp"]
    assert len(notices) == 1 and "5 file(s) skipped" in notices[0], notices
    for name in (".hidden.png", "dir.png", "fifo.png", "notes.txt"):
        assert repr(name) in notices[0] or "..." in notices[0]


def test_a_file_name_without_a_label_fails_its_pairs_said_once(tmp_path):
    imgs = _folder(tmp_path / "imgs", ["apple.png", "___.png", "-_-.png"])
    code, stdout, stderr = _run(["batch", str(imgs), "--out", str(tmp_path / "out")] + RUN)
    errors = [line for line in stderr.splitlines() if line.startswith("vmdiff: error:")]
    assert code == 2 and _counts(stdout) == (0, 0, 6), stdout
    assert len(errors) == 2 and all("gives no label" in e and "recorded as failed" in e for e in errors), stderr
    table = json.loads((tmp_path / "out" / "results.json").read_text())
    assert {f["failed_image"] for f in table["failed"]} == {"___.png", "-_-.png"}

"""K-object fusion end to end on the demo world's shipped models: VMDiff.fuse_many, its order
invariance through the real networks, K = 2 equal to fuse, the report and `vmdiff fuse` with
three images."""

import json

import jax
import numpy as np
import pytest
from PIL import Image

from vmdiff_jax.app.cli import main
from vmdiff_jax.engine.pipeline import VMDiff
from vmdiff_jax.method import search
from vmdiff_jax.world import objects, shipped

pytestmark = pytest.mark.skipif(not shipped.available(), reason="the demo world's weights are not shipped")

OBJS = [objects.WorldObject("circle", "red"), objects.WorldObject("square", "blue"),
        objects.WorldObject("triangle", "yellow"), objects.WorldObject("ring", "green")]


@pytest.fixture(scope="module")
def pipe():
    return VMDiff.demo(num_steps=8, eaa_cfg=search.EAAConfig.tiny())


def _inputs(idx):
    return [objects.draw(OBJS[i]) for i in idx], [OBJS[i].label for i in idx]


@pytest.mark.parametrize("k", [3, 4])
def test_the_stages_are_symmetric_in_the_objects(pipe, k):
    """BNoise of the SCat of K token sets and MDeNoise of their spherical mean through the world's
    FLUX and VAE: permuting the sets with their betas / weights changes nothing but float order."""
    images, labels = _inputs(range(k))
    cs = np.asarray(pipe.condition(np.stack(images)))
    y = np.asarray(pipe.pooled_prompt(*labels))[None]
    eps = np.asarray(pipe.noise(jax.random.key(1), 1))[None]
    betas = np.linspace(0.8, 1.6, k, dtype=np.float32)
    w = np.asarray(np.random.default_rng(k).dirichlet(np.full(k, 5.0)), np.float32)
    ref_b = np.asarray(pipe.bnoise(eps, cs[None], betas[None], y))
    ref_m = np.asarray(pipe.mdenoise(ref_b, cs[None], w[None], y))
    for perm in ([1, 2, 0] + list(range(3, k)), list(range(k))[::-1]):
        p = np.array(perm)
        assert pipe.pooled_prompt(*[labels[i] for i in p]).tolist() == y[0].tolist()  # the prompt lists them sorted
        got_b = np.asarray(pipe.bnoise(eps, cs[p][None], betas[p][None], y))
        np.testing.assert_allclose(got_b, ref_b, atol=2e-4)
        got_m = np.asarray(pipe.mdenoise(ref_b, cs[p][None], w[p][None], y))
        np.testing.assert_allclose(got_m, ref_m, atol=2e-4)
    # ... and they see all K objects: dropping one changes the context
    other = np.asarray(pipe.bnoise(eps, cs[None, :k - 1], betas[None, :k - 1], y))
    assert np.abs(other - ref_b).max() > 1e-2


def test_fuse_many_is_order_invariant(pipe):
    images, labels = _inputs([0, 1, 2])
    ref = pipe.fuse_many(images, labels, seed=3)
    assert ref.objects == 3 and ref.alpha is None and len(ref.weights) == 3 and len(ref.beta) == 3
    assert sum(ref.weights) == pytest.approx(1.0)
    per = {"weights": pipe.cfg.mdenoise_calls, "beta": pipe.cfg.mdenoise_calls + pipe.cfg.bnoise_calls}
    rounds = len({t["round"] for t in ref.trajectory})  # each round's BNoise at the base betas
    assert ref.calls == sum(per[t["stage"]] for t in ref.trajectory) + pipe.cfg.bnoise_calls * rounds
    perm = [2, 0, 1]
    got = pipe.fuse_many([images[i] for i in perm], [labels[i] for i in perm], seed=3)
    np.testing.assert_allclose(got.weights, np.asarray(ref.weights)[perm], atol=1e-9)
    np.testing.assert_allclose(got.beta, np.asarray(ref.beta)[perm], atol=1e-9)
    assert got.score == pytest.approx(ref.score, abs=1e-4) and got.calls == ref.calls
    assert np.abs(got.image.astype(int) - ref.image.astype(int)).max() <= 2
    for i, j in enumerate(perm):  # each input's sub-scores move with it
        assert got.subscores[f"d{i + 1}"] == pytest.approx(ref.subscores[f"d{j + 1}"], abs=1e-4)


def test_two_objects_through_fuse_many_is_fuse(pipe):
    images, labels = _inputs([0, 1])
    a = pipe.fuse_many(images, labels, seed=5)
    b = pipe.fuse(images[0], images[1], labels[0], labels[1], seed=5)
    assert np.array_equal(a.image, b.image) and a.alpha == b.alpha and a.trajectory == b.trajectory
    assert a.weights == (1 - b.alpha, b.alpha)


def test_fuse_many_checks_its_arguments(pipe):
    images, labels = _inputs([0, 1, 2])
    with pytest.raises(ValueError, match="one label per image"):
        pipe.fuse_many(images, labels[:2])
    with pytest.raises(ValueError, match="at least two images"):
        pipe.fuse_many(images[:1], labels[:1])
    with pytest.raises(ValueError, match="schedule 'paper'"):
        pipe.fuse_many(images, labels, schedule="authors")
    with pytest.raises(TypeError, match="labels must be a list"):
        pipe.fuse_many(images, "abc")


def test_vmdiff_fuse_with_three_images(tmp_path, capsys):
    paths = []
    for o in OBJS[:3]:
        paths.append(tmp_path / f"{o.label.replace(' ', '_')}.png")
        Image.fromarray(objects.draw(o)).save(paths[-1])
    out = tmp_path / "out"
    argv = ["fuse", *map(str, paths), "--labels", "red disc", "blue box", "yellow wedge", "--demo-models", "world",
            "--steps", "4", "--tiny-search", "--out", str(out), "--no-progress"]
    assert main(argv) == 0, capsys.readouterr().err
    said = capsys.readouterr().out
    assert "'red disc' + 'blue box' + 'yellow wedge'" in said and "weights " in said
    r = json.loads((out / "report.json").read_text())
    assert r["objects"] == 3 and r["labels"] == ["red disc", "blue box", "yellow wedge"]
    assert r["prompt"] == "A photo of blue box, red disc and yellow wedge creatively fused together."
    assert len(r["parameters"]["weights"]) == 3 and "alpha" not in r["parameters"]
    assert set(r["subscores"]) == {"S"} | {f"{k}{i}" for k in "dnc" for i in (1, 2, 3)}
    assert r["threshold"] == pytest.approx(r["settings"]["eaa"]["threshold"] * 1.5)
    assert r["accepted"] == (r["score"] > r["threshold"])
    d = [r["subscores"][f"d{i}"] for i in (1, 2, 3)]
    n = [r["subscores"][f"n{i}"] for i in (1, 2, 3)]
    spread = sum(abs(x - np.mean(d)) for x in d) + sum(abs(x - np.mean(n)) for x in n)
    assert r["b_sim"] == pytest.approx(spread, abs=1e-5) and r["score"] == pytest.approx(sum(d) + sum(n) - spread, abs=1e-4)
    fig = Image.open(out / "search.png")
    assert fig.size[0] >= 1000 and fig.size[1] > 500


@pytest.mark.parametrize("extra, needle", [
    (["--labels", "a", "b"], "--labels gives 2 labels for 3 images"),
    (["--schedule", "authors"], "--schedule authors follows the authors' two-object code"),
    (["--labels", "a", "b", "c", "--label1", "x"], "give --labels or --label1 / --label2"),
])
def test_vmdiff_fuse_bad_groups(tmp_path, capsys, extra, needle):
    paths = []
    for k, o in enumerate(OBJS[:3]):
        paths.append(tmp_path / f"{k}.png")
        Image.fromarray(objects.draw(o)).save(paths[-1])
    out = tmp_path / "out"
    assert main(["fuse", *map(str, paths), *extra, "--demo-models", "world", "--out", str(out)]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and needle in err[0] and "Traceback" not in err[0]
    assert not out.exists()
    assert main(["fuse", str(paths[0]), "--demo-models", "world", "--out", str(out)]) == 2
    assert "at least two images" in capsys.readouterr().err

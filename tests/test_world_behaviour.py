"""What the method does, on the demo world's shipped models (vmdiff_jax/assets/world): things
random weights could never show. Measured on pixels of the generated images (world/objects.py).

- conditioned generation (MDeNoise from plain noise with one object's Redux tokens) reproduces
  that object's color in most cases;
- fusing two objects of different colors gives one object whose color lies between theirs;
- the EAA search improves on alpha 0.5 / beta 1 of the same noise.
"""

import jax
import numpy as np
import pytest

from vmdiff_jax.engine.pipeline import VMDiff
from vmdiff_jax.nn import image_ops
from vmdiff_jax.world import objects, shipped

pytestmark = pytest.mark.skipif(not shipped.available(), reason="the demo world's weights are not shipped")

STEPS = 20


@pytest.fixture(scope="module")
def pipe():
    return VMDiff.demo(num_steps=STEPS, locator="dino")


def _generate(pipe, obj, seed):
    img = objects.draw(obj)[None]
    c = np.asarray(pipe.condition(img))
    y = np.asarray(pipe.pooled_prompt(obj.label, obj.label))[None]
    eps = np.asarray(pipe.noise(jax.random.key(seed), 1))[None]
    return np.asarray(image_ops.to_uint8(pipe.mdenoise(eps, np.stack([c, c], 1), np.array([[1.0, 0.0]], np.float32), y)))[0]


def _plain_fusion(pipe, a, b, seed):
    images = np.stack([objects.draw(a), objects.draw(b)])
    fused, sub = pipe.plain_fusion(images, a.label, b.label, jax.random.key(seed))  # float [0, 1]
    return fused, images, float(sub.S[0])


def _between(rgb, c1, c2):
    """(t, off): the projection of rgb on the segment c1 -> c2 (0 at c1, 1 at c2) and the distance
    from that line, as a fraction of |c2 - c1|."""
    c1, c2, rgb = (np.asarray(v, np.float64) for v in (c1, c2, rgb))
    d = c2 - c1
    t = float((rgb - c1) @ d / (d @ d))
    off = float(np.linalg.norm(rgb - (c1 + t * d)) / np.linalg.norm(d))
    return t, off


def test_the_shipped_world_is_the_scripts_recipe():
    """world.json: the recipe of world/train.py (so the script reproduces these weights), the
    threshold calibrated from the world's score distribution, and what each model took."""
    import dataclasses

    from vmdiff_jax.world import train

    info = shipped.read_info()
    assert info["steps"] == dataclasses.asdict(train.Steps()) and info["seed"] == 0
    assert np.isfinite(info["threshold"]) and info["threshold"] == info["calibration"]["S_p75"]
    assert info["calibration"]["S_p25"] < info["threshold"] < info["calibration"]["S_max"]
    assert set(info["train_seconds"]) == {"vae", "dinov2", "clip_bigg", "flux"}
    size = sum(p.stat().st_size for p in shipped.WORLD_DIR.rglob("*") if p.is_file())
    assert size < 20e6  # the budget for the shipped weights


def test_conditioned_generation_reproduces_the_color(pipe):
    objs = [objects.WorldObject(s, c) for s, c in zip(objects.SHAPES * 2, objects.COLORS)]  # every color once
    hits = []
    for k, obj in enumerate(objs):
        im = _generate(pipe, obj, seed=k)
        rgb = objects.object_color(im)
        hits.append(rgb is not None and objects.nearest_color(rgb) == obj.color)
    assert sum(hits) >= 6, hits  # most of 8


@pytest.mark.parametrize("a, b", [(("circle", "red"), ("square", "blue")), (("triangle", "yellow"), ("ring", "blue")),
                                  (("square", "green"), ("star", "pink"))])
def test_fusion_is_one_object_between_the_two_colors(pipe, a, b):
    a, b = objects.WorldObject(*a), objects.WorldObject(*b)
    fused, _, _ = _plain_fusion(pipe, a, b, seed=0)
    fused = np.asarray(image_ops.to_uint8(fused))
    mask = objects.foreground(fused)
    assert objects.components(mask) == 1, "not one object"
    t, off = _between(objects.object_color(fused), a.rgb, b.rgb)
    assert 0.0 < t < 1.0 and off < 0.5, (t, off)


def test_search_improves_on_alpha_half_beta_one(pipe):
    a, b = objects.EXAMPLE_PAIR
    _, images, s_plain = _plain_fusion(pipe, a, b, seed=0)
    result = pipe.fuse(images[0], images[1], a.label, b.label, seed=0)
    assert result.score >= s_plain - 1e-5, (result.score, s_plain)
    assert result.threshold == shipped.read_info()["threshold"]


def test_commands_run_on_the_world(tmp_path, capsys):
    """vmdiff demo fuses the example pair on the world's models and states the world's threshold;
    vmdiff fuse A B --demo-models does the same for any two images of the world."""
    import json

    from vmdiff_jax.app.cli import main

    assert main(["demo", "--out", str(tmp_path / "demo"), "--steps", "4", "--tiny-search", "--no-progress"]) == 0
    rep = json.loads((tmp_path / "demo" / "report.json").read_text())
    assert rep["settings"]["models"] == "demo world (trained tiny models)" and rep["settings"]["size"] == 64
    assert rep["settings"]["eaa"]["threshold"] == shipped.read_info()["threshold"] == rep["threshold"]
    assert rep["labels"] == ["red circle", "blue square"]
    a, b = tmp_path / "yellow_ring.png", tmp_path / "green_star.png"
    from PIL import Image

    Image.fromarray(objects.draw(objects.WorldObject("ring", "yellow"))).save(a)
    Image.fromarray(objects.draw(objects.WorldObject("star", "green"))).save(b)
    assert main(["fuse", str(a), str(b), "--demo-models", "--out", str(tmp_path / "f"), "--steps", "4",
                 "--tiny-search", "--no-progress", "--threshold", "9"]) == 0
    rep = json.loads((tmp_path / "f" / "report.json").read_text())
    assert rep["labels"] == ["yellow ring", "green star"] and rep["settings"]["eaa"]["threshold"] == 9.0
    assert "demo world" in capsys.readouterr().out

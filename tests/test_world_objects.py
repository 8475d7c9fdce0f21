"""The demo world (world/objects.py): 5 shapes x 8 colors, seeded jitter, one object on a plain
light background, and the measurements the behaviour tests use."""

import numpy as np
import pytest

from vmdiff_jax.world import objects


def test_every_object_is_one_region_of_its_color_on_a_light_background():
    objs = objects.all_objects()
    assert len(objs) == 40 and len({o.label for o in objs}) == 40
    for o in objs:
        im = objects.draw(o)
        assert im.shape == (objects.SIZE, objects.SIZE, 3) and im.dtype == np.uint8
        assert objects.components(objects.foreground(im)) == 1, o.label
        assert objects.nearest_color(objects.object_color(im)) == o.color
        assert im[0, 0].min() >= 230  # near-white / light-gray corner


def test_shapes_differ():
    masks = {s: objects.foreground(objects.draw(objects.WorldObject(s, "red"))) for s in objects.SHAPES}
    areas = {s: int(m.sum()) for s, m in masks.items()}
    assert len(set(areas.values())) == len(objects.SHAPES), areas
    assert not masks["ring"][32, 32] and masks["circle"][32, 32]  # the ring's hole


def test_sample_is_seeded_and_jittered():
    a, oa = objects.sample(3, 8)
    b, ob = objects.sample(3, 8)
    c, _ = objects.sample(4, 8)
    assert np.array_equal(a, b) and oa == ob and not np.array_equal(a, c)
    assert len({o.center for o in oa}) == 8 and all(0.24 <= o.radius <= 0.34 for o in oa)


def test_labels_parse():
    assert objects.parse_label("red circle") == objects.WorldObject("circle", "red")
    with pytest.raises(ValueError, match="not a demo-world label"):
        objects.parse_label("apple")


def test_two_objects_are_two_regions():
    im = objects.draw(objects.WorldObject("circle", "red", radius=0.15, center=(0.25, 0.5)))
    im2 = objects.draw(objects.WorldObject("square", "blue", radius=0.15, center=(0.75, 0.5)))
    both = np.where(objects.foreground(im2)[..., None], im2, im)
    assert objects.components(objects.foreground(both)) == 2

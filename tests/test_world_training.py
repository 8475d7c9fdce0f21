"""The demo world's training loops (world/train.py): a few optax steps of each, seeded, lower
the loss; the data they draw is what the world promises."""

import numpy as np
import pytest

from vmdiff_jax.engine.demo import demo_tokenizer
from vmdiff_jax.world import objects, train
from vmdiff_jax.world.configs import WorldConfigs


@pytest.fixture(scope="module")
def setup():
    tok = demo_tokenizer()
    return WorldConfigs.default(tok.vocab_size), tok


def _drops(losses, k=4):
    assert all(np.isfinite(losses))
    return float(np.mean(losses[-k:])) < float(np.mean(losses[:k]))


def test_vae_loop_lowers_the_loss_and_sets_the_latent_scale(setup):
    cfg, _ = setup
    vae, losses = train.train_vae(cfg, 16, batch=8, seed=1)
    assert _drops(losses), losses
    assert vae.cfg.scale_factor > 0 and vae.cfg.scale_factor != cfg.vae.scale_factor


def test_scorer_loops_lower_the_loss(setup):
    cfg, tok = setup
    _, dino = train.train_dinov2(cfg, 16, batch=16, seed=1)
    _, clip = train.train_clip_bigg(cfg, tok, 24, batch=16, seed=1)
    assert _drops(dino), dino
    assert _drops(clip, 6), clip


def test_flux_loop_lowers_the_loss(setup):
    cfg, tok = setup
    vae, _ = train.train_vae(cfg, 2, batch=4, seed=1)
    gen, losses = train.train_flux(cfg, vae, tok, 16, batch=8, seed=1)
    assert _drops(losses), losses
    assert gen.flux.cfg == cfg.flux


def test_loops_are_reproducible(setup):
    cfg, _ = setup
    assert train.train_dinov2(cfg, 3, batch=4, seed=2)[1] == train.train_dinov2(cfg, 3, batch=4, seed=2)[1]


def test_views_are_two_renderings_of_one_object():
    rng = np.random.default_rng(0)
    a, b, cls = train.views(rng, 6, 64)
    assert a.shape == b.shape == (6, 64, 64, 3) and a.dtype == np.uint8
    for x, y, c in zip(a, b, cls):
        want = objects.COLORS[train.class_label(int(c)).split()[0]]
        for im in (x, y):
            assert objects.components(objects.foreground(im)) == 1
            assert objects.nearest_color(objects.object_color(im)) == train.class_label(int(c)).split()[0], want
        assert not np.array_equal(x, y)  # another size / place / background

"""Writing checkpoints in the real layouts (checkpoints/export.py): every rule's inverse, and the
round trip write -> ordinary loaders -> the same parameters and configs, exactly."""

import numpy as np
import pytest
from flax import nnx

from vmdiff_jax.checkpoints import encoders, export, rules
from vmdiff_jax.checkpoints import vae as vae_ckpt
from vmdiff_jax.checkpoints.files import CheckpointError
from vmdiff_jax.checkpoints.registry import load_vae
from vmdiff_jax.checkpoints.weights import find_weights
from vmdiff_jax.engine.demo import TOKENIZER_FOLDER, demo_tokenizer
from vmdiff_jax.engine.pipeline import load_models
from vmdiff_jax.nn.vae import AutoEncoder, VAEConfig
from vmdiff_jax.nn.vit import CLIP, VisionTransformer
from vmdiff_jax.world import shipped, train
from vmdiff_jax.world.configs import WorldConfigs


def _params(model) -> dict:
    return {".".join(map(str, k)): np.asarray(v.get_value()) for k, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


@pytest.mark.parametrize("make, shape", [
    (lambda: rules.same("a"), (3, 4)), (lambda: rules.linear("a"), (3, 5)), (lambda: rules.conv("a"), (2, 3, 4, 5)),
    (lambda: rules.conv1x1_as_linear("a"), (4, 6)), (lambda: rules.linear_cat(["q", "k", "v"]), (4, 9)),
    (lambda: rules.cat(["q", "k", "v"]), (12,)), (lambda: rules.reshaped("a", slice(-1, None), 2), (7,)),
    (lambda: rules.reshaped("a", slice(1, None), 1), (5, 7)),
    (lambda: rules.swap_halves(rules.linear("a")), (3, 8))])
def test_every_rule_inverts(make, shape):
    r = make()
    p = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    sources = r.inverse(np, p)
    assert len(sources) == len(r.sources)
    np.testing.assert_array_equal(r.fn(np, *sources), p)


def test_leading_unit_dims_restored():
    (cls,) = encoders.dinov2_rules(WorldConfigs.default().dinov2)["cls_token"].inverse(np, np.zeros(64, np.float32))
    assert cls.shape == (1, 1, 64)  # transformers' Dinov2 cls_token layout


def test_world_round_trip(tmp_path):
    """Random-init world models -> save_world -> find_weights + load_models: every parameter equal
    bit for bit, every config inferred back equal (heads, activations, eps, EOS, latent scale)."""
    tok = demo_tokenizer()
    cfg = WorldConfigs.default(tok.vocab_size)
    gen = train.Generator(cfg, 0)
    vae = AutoEncoder(cfg.vae, rngs=nnx.Rngs(1))
    vae.cfg = VAEConfig(**{**cfg.vae.__dict__, "scale_factor": 1.7, "shift_factor": 0.25})
    dino = VisionTransformer(cfg.dinov2, rngs=nnx.Rngs(2))
    clip = CLIP(cfg.clip_bigg_vision, cfg.clip_bigg_text, rngs=nnx.Rngs(3))
    shipped.save_world(tmp_path, cfg, vae=vae, flux=gen.flux, redux=gen.redux, clip_l=gen.clip_l, dinov2=dino,
                       clip_bigg=clip, tokenizer_folder=TOKENIZER_FOLDER, info={"threshold": 1.0})
    assert shipped.available(tmp_path) and shipped.read_info(tmp_path) == {"threshold": 1.0}
    import jax.numpy as jnp

    m = load_models(find_weights(tmp_path, use_hf_cache=False), jnp.float32, jnp.float32)
    for ours, back in [(gen.flux, m.flux), (vae, m.vae), (gen.clip_l, m.clip_l), (gen.redux, m.redux),
                       (dino, m.dinov2), (clip, m.clip_bigg)]:
        a, b = _params(ours), _params(back)
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert m.flux.cfg == cfg.flux and m.vae.cfg == vae.cfg and m.clip_l.cfg == cfg.clip_l
    assert m.redux.siglip.cfg == cfg.siglip and m.dinov2.cfg == cfg.dinov2
    assert m.clip_bigg.visual.cfg == cfg.clip_bigg_vision and m.clip_bigg.text.cfg == cfg.clip_bigg_text
    assert m.clip_l_tokenizer(["a red circle"]).tolist() == tok(["a red circle"]).tolist()


def test_vae_bfl_layout_round_trip(tmp_path):
    cfg = VAEConfig.tiny()
    vae = AutoEncoder(cfg, rngs=nnx.Rngs(0))
    path = export.save(tmp_path / "ae.safetensors", vae, vae_ckpt.bfl_rules(cfg, vae))
    back = load_vae(path, dtype=np.float32)
    a, b = _params(vae), _params(back)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_a_layout_without_inverse_is_refused():
    vae = AutoEncoder(VAEConfig.tiny(), rngs=nnx.Rngs(0))
    bad = {k: rules.Rule(r.sources, r.fn) for k, r in vae_ckpt.bfl_rules(vae.cfg, vae).items()}
    with pytest.raises(CheckpointError, match="no invertible rule"):
        export.tensors(vae, bad)

"""Full-size encoder structure: the real checkpoints' key/shape manifests (sparse files, no data)
are detected as their kind, map onto the real presets with no problem, and a mutated copy names
the broken keys. Output shapes of the full-size models from jax.eval_shape."""

import json

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from vmdiff_jax.nn import vit
from vmdiff_jax.checkpoints import encoders as enc
from vmdiff_jax.checkpoints.files import open_checkpoint, write_sparse
from vmdiff_jax.checkpoints.loader import check
from vmdiff_jax.checkpoints.registry import KINDS
from vmdiff_jax.nn.redux import ReduxEncoder

from helpers import MANIFESTS

# name: (manifest, keys the real file holds beyond the manifest, kind,
#        (key to drop, key to reshape, stray key) for the mutated copy)
CASES = {
    "siglip": ("siglip_so400m_patch14_384.vision.hub.json",
               {"text_model.embeddings.token_embedding.weight": (32000, 1152), "text_model.head.weight": (1152, 1152),
                "logit_scale": (1,), "logit_bias": (1,)},
               enc.SIGLIP,
               ("vision_model.encoder.layers.26.mlp.fc2.bias",
                "vision_model.encoder.layers.3.self_attn.k_proj.weight", "vision_model.stray.weight")),
    "redux": ("flux1_redux_image_encoder.json", {}, enc.REDUX,
              ("redux_up.bias", "redux_down.weight", "redux_mid.weight")),
    "clip_l": ("clip_vit_large_patch14.text.hub.json",
                  {"text_model.embeddings.position_ids": (1, 77), "text_projection.weight": (768, 768)},
                  enc.CLIP_L,
                  ("text_model.final_layer_norm.bias", "text_model.encoder.layers.11.self_attn.q_proj.weight",
                   "text_model.stray.weight")),
    "dinov2": ("dinov2_base.hub.json", {}, enc.DINOV2,
               ("encoder.layer.11.layer_scale2.lambda1", "embeddings.position_embeddings",
                "encoder.layer.12.norm1.weight")),
    "bigg": ("open_clip_vit_bigg_14.json", {}, enc.BIGG_OPENCLIP,
             ("visual.transformer.resblocks.47.attn.in_proj_bias", "transformer.resblocks.0.attn.in_proj_weight",
              "visual.attn_pool.query")),
}


def shapes_of(name: str) -> dict[str, tuple[int, ...]]:
    manifest, extra, _, _ = CASES[name]
    return {**{k: tuple(v) for k, v in json.loads((MANIFESTS / manifest).read_text()).items()}, **extra}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """name -> (checkpoint, Plan), each built once (bigG takes ~10 s)."""
    cache = {}

    def get(name):
        if name not in cache:
            path = tmp_path_factory.mktemp(name) / "model.safetensors"
            write_sparse(shapes_of(name), path)
            ckpt = open_checkpoint(path)
            cache[name] = (ckpt, CASES[name][2].build(ckpt, strict=False))
        return cache[name]

    return get


@pytest.mark.parametrize("name", list(CASES))
def test_real_layout_detected_and_checks_clean(built, name):
    ckpt, plan = built(name)
    model = plan.model
    keys = set(ckpt)
    assert [k.name for k in KINDS if k.detect(keys)] == [CASES[name][2].name]
    assert check(plan, ckpt) == []
    presets = {"siglip": vit.ViTConfig.siglip_so400m(), "dinov2": vit.ViTConfig.dinov2_base(), "clip_l": vit.ViTConfig.clip_l()}
    if name in presets:
        assert model.cfg == presets[name]
    elif name == "bigg":
        assert model.visual.cfg == vit.ViTConfig.clip_bigg_vision() and model.text.cfg == vit.ViTConfig.clip_bigg_text()
    else:
        assert (model.redux_up.in_features, model.redux_down.out_features) == (1152, 4096)


@pytest.mark.parametrize("name", list(CASES))
def test_mutated_copy_names_the_keys(built, tmp_path, name):
    _, plan = built(name)
    drop, reshape, stray = CASES[name][3]
    shapes = shapes_of(name)
    assert drop in shapes and reshape in shapes and stray not in shapes
    del shapes[drop]
    shapes[reshape] = (*shapes[reshape][:-1], shapes[reshape][-1] + 1)
    shapes[stray] = (4,)
    write_sparse(shapes, tmp_path / "bad.safetensors")
    problems = check(plan, open_checkpoint(tmp_path / "bad.safetensors"))
    assert len(problems) == 3, problems
    for key in (drop, reshape, stray):
        assert any(key in p for p in problems), (key, problems)


def _out_shapes(model, fn, *args):
    graphdef, state = nnx.split(model)
    return jax.eval_shape(lambda s, *a: fn(nnx.merge(graphdef, s), *a), state, *args)


def test_full_size_output_shapes(built):
    image = lambda n: jax.ShapeDtypeStruct((1, n, n, 3), jnp.float32)  # noqa: E731
    ids = jax.ShapeDtypeStruct((1, 77), jnp.int32)
    redux = ReduxEncoder(built("siglip")[1].model, built("redux")[1].model)
    assert _out_shapes(redux, lambda m, x: m(x), image(384)).shape == (1, 729, 4096)
    hidden, pooled = _out_shapes(built("siglip")[1].model, lambda m, x: m(x, pooled=True), image(384))
    assert (hidden.shape, pooled.shape) == ((1, 729, 1152), (1, 1152))
    dino = built("dinov2")[1].model
    assert _out_shapes(dino, vit.dinov2, image(224)).shape == (1, 257, 768)  # 37x37 positions resized to 16x16
    assert _out_shapes(dino, vit.dino_features, image(224)).shape == (1, 768)
    hidden, pooled = _out_shapes(built("clip_l")[1].model, lambda m, x: m(x), ids)
    assert (hidden.shape, pooled.shape) == ((1, 77, 768), (1, 768))
    bigg = built("bigg")[1].model
    img, txt = _out_shapes(bigg, lambda m, x, t: (m.encode_image(x, normalize=True), m.encode_text(t, normalize=True)),
                           image(224), ids)
    assert (img.shape, txt.shape) == ((1, 1280), (1, 1280))

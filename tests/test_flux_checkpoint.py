"""FLUX checkpoint structure: full-size headers from the real key manifests, and named errors.

The full-size files are sparse safetensors (real headers, a hole for the data), checked
against an abstract (`nnx.eval_shape`) FLUX.1 [dev]: nothing of the 12B is allocated.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from safetensors.numpy import save_file

from vmdiff_jax.checkpoints import CheckpointError, load_flux
from vmdiff_jax.checkpoints import files as st
from vmdiff_jax.checkpoints.flux import (
    FLUX_BFL,
    FLUX_DIFFUSERS,
    abstract_flux,
    bfl_rules,
    default_axes_dim,
    detect_layout,
    diffusers_rules,
    infer_config,
    rules_for,
)
from vmdiff_jax.checkpoints.loader import Plan, check
from vmdiff_jax.checkpoints.rules import param_paths
from vmdiff_jax.nn.flux import Flux, FluxConfig

from helpers import MANIFESTS, bfl_tensors as _bfl_tensors
LAYOUTS = ("bfl", "diffusers")


def _manifest(layout):
    shapes = json.loads((MANIFESTS / f"flux1_dev_transformer.{layout}.json").read_text())
    return {k: tuple(v) for k, v in shapes.items()}


@pytest.fixture(scope="module")
def full():
    """The abstract FLUX.1 [dev] (bf16) and its parameter count."""
    model = abstract_flux(FluxConfig.flux1_dev())
    leaves = jax.tree.leaves(nnx.state(model, nnx.Param))
    assert leaves and all(isinstance(x, jax.ShapeDtypeStruct) for x in leaves)  # nothing allocated
    return model, sum(int(np.prod(x.shape)) for x in leaves)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_full_size_manifest_checks_clean(full, layout, tmp_path):
    model, n_params = full
    assert n_params == 11_901_408_320  # the manifests' README count
    shapes = _manifest(layout)
    st.write_sparse(shapes, tmp_path / "flux.safetensors")
    ckpt = st.open_checkpoint(tmp_path / "flux.safetensors")
    assert detect_layout(ckpt) == layout
    assert infer_config(ckpt) == FluxConfig.flux1_dev()
    rules = rules_for(ckpt, FluxConfig.flux1_dev())
    assert set(rules) == set(param_paths(model))
    assert check(Plan(model, rules), ckpt) == []
    # every key is the source of some rule, exactly once
    sources = [k for r in rules.values() for k in r.sources]
    assert sorted(sources) == sorted(shapes)


def _mutations(shapes, layout):
    """(name, mutated shapes, key the problem must name)."""
    blk = "double_blocks.7.img_mlp.2.weight" if layout == "bfl" else "transformer_blocks.7.ff.net.2.weight"
    sgl = "single_blocks.20.linear1.weight" if layout == "bfl" else "single_transformer_blocks.20.attn.to_k.weight"
    renamed = dict(shapes)
    renamed[blk.replace(".7.", ".7.x")] = renamed.pop(blk)
    reshaped = dict(shapes)
    reshaped[sgl] = (shapes[sgl][0] - 1, shapes[sgl][1])
    removed = {k: v for k, v in shapes.items() if k != sgl}
    extra = dict(shapes, **{"double_blocks.0.img_attn.lora_up.weight": (4, 3072)})
    return [
        ("renamed", renamed, blk.replace(".7.", ".7.x")),
        ("reshaped", reshaped, sgl),
        ("removed", removed, sgl),
        ("extra", extra, "double_blocks.0.img_attn.lora_up.weight"),
    ]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_full_size_mutations_are_named(full, layout, tmp_path):
    model, _ = full
    for name, shapes, key in _mutations(_manifest(layout), layout):
        st.write_sparse(shapes, tmp_path / f"{name}.safetensors")
        ckpt = st.open_checkpoint(tmp_path / f"{name}.safetensors")
        problems = check(Plan(model, rules_for(ckpt, FluxConfig.flux1_dev())), ckpt)
        assert problems, name
        assert any(key in p for p in problems), (name, problems)
        if name == "renamed":  # the missing original and the unexpected new name
            assert any("missing key" in p for p in problems) and any("unexpected key" in p for p in problems)


def test_checkpoint_kinds_detect_and_build(tmp_path):
    keys_bfl, keys_dif = set(_manifest("bfl")), set(_manifest("diffusers"))
    assert FLUX_BFL.detect(keys_bfl) and not FLUX_BFL.detect(keys_dif)
    assert FLUX_DIFFUSERS.detect(keys_dif) and not FLUX_DIFFUSERS.detect(keys_bfl)
    assert not FLUX_BFL.detect({"encoder.conv_in.weight"}) and detect_layout({"a.weight"}) is None
    # build at a tiny size (the full-size build is covered by the check tests above)
    model = Flux(FluxConfig.tiny(), rngs=nnx.Rngs(0))
    save_file(_bfl_tensors(model), tmp_path / "tiny.safetensors")
    ckpt = st.open_checkpoint(tmp_path / "tiny.safetensors")
    assert check(FLUX_BFL.build(ckpt), ckpt) == []


def test_axes_rule_and_rules_cover_every_parameter():
    assert default_axes_dim(128) == (16, 56, 56) and default_axes_dim(16) == (4, 6, 6)
    for cfg in (FluxConfig.tiny(), FluxConfig.tiny(guidance_embed=False, depth=2, depth_single_blocks=3)):
        params = set(param_paths(abstract_flux(cfg, jnp.float32)))
        assert set(bfl_rules(cfg)) == params and set(diffusers_rules(cfg)) == params
    cfg = FluxConfig.tiny(qkv_bias=False)
    assert set(bfl_rules(cfg)) == set(param_paths(abstract_flux(cfg, jnp.float32)))


# --- tiny BFL files: exact round trip and bad checkpoints through load_flux -------------


@pytest.fixture(scope="module")
def tiny_bfl():
    model = Flux(FluxConfig.tiny(), rngs=nnx.Rngs(3))
    tensors = _bfl_tensors(model)
    rng = np.random.default_rng(0)
    return {k: (v + 0.1 * rng.standard_normal(v.shape)).astype(np.float32) for k, v in tensors.items()}


def test_bfl_round_trip_is_exact_with_and_without_prefix(tiny_bfl, tmp_path):
    for prefix in ("", "model.diffusion_model."):
        path = tmp_path / f"p{len(prefix)}.safetensors"
        save_file({prefix + k: v for k, v in tiny_bfl.items()}, path)
        model = load_flux(path, dtype=jnp.float32)
        assert model.cfg == FluxConfig.tiny()
        back = _bfl_tensors(model)
        assert set(back) == set(tiny_bfl)
        for k, v in tiny_bfl.items():
            np.testing.assert_array_equal(back[k], v, err_msg=k)


def _expect_error(path, *needles, **kw):
    with pytest.raises(CheckpointError) as e:
        load_flux(path, dtype=jnp.float32, **kw)
    msg = str(e.value)
    assert "\n" not in msg
    for n in needles:
        assert n in msg, msg


def test_bad_checkpoints_raise_named_errors(tiny_bfl, tmp_path):
    t = tiny_bfl
    k = "double_blocks.0.txt_mlp.2.weight"

    save_file({kk: v for kk, v in t.items() if kk != k}, tmp_path / "missing.safetensors")
    _expect_error(tmp_path / "missing.safetensors", "missing key", k)

    lora = {"single_blocks.0.lora.weight": np.zeros((2, 2), np.float32)}
    save_file(dict(t, **lora), tmp_path / "extra.safetensors")
    _expect_error(tmp_path / "extra.safetensors", "unexpected key", "single_blocks.0.lora.weight")

    save_file(dict(t, **{k: np.zeros((32, 100), np.float32)}), tmp_path / "shape.safetensors")
    _expect_error(tmp_path / "shape.safetensors", "wrong shape", k)

    # a key infer_config needs: named as well (with an explicit config the loader names it too)
    save_file({kk: v for kk, v in t.items() if kk != "final_layer.linear.weight"}, tmp_path / "nofinal.safetensors")
    _expect_error(tmp_path / "nofinal.safetensors", "final_layer.linear.weight")
    _expect_error(tmp_path / "nofinal.safetensors", "final_layer.linear.weight", config=FluxConfig.tiny())

    save_file(t, tmp_path / "trunc.safetensors")
    raw = (tmp_path / "trunc.safetensors").read_bytes()
    (tmp_path / "trunc.safetensors").write_bytes(raw[:-100])
    _expect_error(tmp_path / "trunc.safetensors", "truncated")

    for suffix in (".bin", ".pt"):
        torch.save({kk: torch.from_numpy(v) for kk, v in list(t.items())[:2]}, tmp_path / f"flux{suffix}")
        _expect_error(tmp_path / f"flux{suffix}", "pickle", f"flux{suffix}")

    save_file({"encoder.conv_in.weight": np.zeros((2, 2), np.float32)}, tmp_path / "vae.safetensors")
    _expect_error(tmp_path / "vae.safetensors", "not a FLUX transformer")


def test_metadata_axes_and_explicit_config(tiny_bfl, tmp_path):
    cfg = FluxConfig.tiny(axes_dim=(2, 8, 6))
    save_file(tiny_bfl, tmp_path / "meta.safetensors", metadata={"axes_dim": "[2, 8, 6]"})
    assert infer_config(st.open_checkpoint(tmp_path / "meta.safetensors")) == cfg
    assert load_flux(tmp_path / "meta.safetensors", dtype=jnp.float32, config=cfg).cfg == cfg
    save_file(tiny_bfl, tmp_path / "badmeta.safetensors", metadata={"axes_dim": "16 56 56"})
    _expect_error(tmp_path / "badmeta.safetensors", "axes_dim")

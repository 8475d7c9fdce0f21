"""FLUX blocks under a scan (`Flux(scan_blocks=True)`, the default) against the unrolled blocks.

The same weights give the same outputs (float32, fp8 included); the full-size abstract model
has the stacked shapes; one block is traced whatever the depth; the stacked checkpoint rules
and the FSDP rule keep the layer axis whole.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from helpers import flux_forward, rel, scanned
from vmdiff_jax.checkpoints.rules import Rule, Stacked, linear, param_paths, stack, unstacked_paths
from vmdiff_jax.engine.sharding import param_spec
from vmdiff_jax.nn.flux import Flux, FluxConfig, layer_axes

CFG = FluxConfig.tiny(depth=3, depth_single_blocks=2)


def _inputs(cfg, batch=2, n=12, txt=5, seed=0):
    rng = np.random.default_rng(seed)
    ids = np.zeros((1, n, 3), np.float32)
    ids[0, :, 1], ids[0, :, 2] = np.arange(n) // 4, np.arange(n) % 4
    return dict(img=jnp.asarray(rng.standard_normal((batch, n, cfg.in_channels)), jnp.float32), img_ids=jnp.asarray(ids),
                txt=jnp.asarray(rng.standard_normal((batch, txt, cfg.context_in_dim)), jnp.float32),
                txt_ids=jnp.zeros((1, txt, 3), jnp.float32), timesteps=jnp.asarray([0.3, 0.8], jnp.float32),
                y=jnp.asarray(rng.standard_normal((batch, cfg.vec_in_dim)), jnp.float32),
                guidance=jnp.asarray([3.5, 4.0], jnp.float32))


def _perturbed(model, seed=1):
    """Every parameter moved by N(0, 0.05^2): no zero / one init hides a misplaced layer."""
    rng = np.random.default_rng(seed)
    for _, v in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        x = v.get_value()
        v.set_value(x + jnp.asarray(0.05 * rng.standard_normal(x.shape), x.dtype))
    return model


def _flat(model):
    return {".".join(map(str, p)): np.asarray(v.get_value()) for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


@pytest.mark.parametrize("fp8", [False, True], ids=["float32", "fp8"])
def test_scanned_equals_unrolled_for_the_same_weights(fp8):
    unrolled = _perturbed(Flux(CFG, rngs=nnx.Rngs(0), scan_blocks=False))
    if fp8:
        from vmdiff_jax.nn.quant import to_fp8

        for block in list(unrolled.double_blocks) + list(unrolled.single_blocks):
            to_fp8(block)
        unrolled.fp8 = True
    stacked = scanned(unrolled)
    assert stacked.double_blocks.img_attn.qkv.kernel[...].shape == (CFG.depth, 32, 96)
    x = _inputs(CFG)
    want = flux_forward(unrolled, x)
    got = flux_forward(stacked, x)
    assert float(np.abs(want).max()) > 0.1
    err = rel(got, want)
    print(f"scanned vs unrolled ({'fp8' if fp8 else 'float32'}): rel {err:.1e}")
    assert err <= 1e-6


def test_same_rngs_give_the_same_parameters_stacked():
    """Flux(scan_blocks=True) draws what Flux(scan_blocks=False) draws, layer i at index i."""
    m = Flux(CFG, rngs=nnx.Rngs(3))
    a, b = _flat(m), _flat(Flux(CFG, rngs=nnx.Rngs(3), scan_blocks=False))
    assert m.layer_stacks == {"double_blocks": CFG.depth, "single_blocks": CFG.depth_single_blocks}
    assert set(unstacked_paths(param_paths(m), m.layer_stacks)) == set(b)
    for name, v in a.items():
        if layer_axes(name):
            head, rest = name.split(".", 1)
            assert len(v) == m.layer_stacks[head]
            for i in range(len(v)):
                np.testing.assert_array_equal(v[i], b[f"{head}.{i}.{rest}"], err_msg=name)
        else:
            np.testing.assert_array_equal(v, b[name], err_msg=name)


def test_full_size_abstract_model_has_stacked_shapes():
    cfg = FluxConfig.flux1_dev()
    p = param_paths(nnx.eval_shape(lambda: Flux(cfg, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16, rngs=nnx.Rngs(0))))
    assert sum(int(np.prod(s.shape)) for s in p.values()) == 11_901_408_320
    assert not any(k.split(".")[1].isdigit() for k in p if k.startswith(("double_blocks.", "single_blocks.")))
    want = {
        "double_blocks.img_attn.qkv.kernel": (19, 3072, 9216),
        "double_blocks.img_attn.qkv.bias": (19, 9216),
        "double_blocks.txt_attn.norm.query_norm.scale": (19, 128),
        "double_blocks.img_mod.lin.kernel": (19, 3072, 18432),
        "double_blocks.img_mlp.0.kernel": (19, 3072, 12288),
        "double_blocks.txt_mlp.2.kernel": (19, 12288, 3072),
        "single_blocks.linear1.kernel": (38, 3072, 21504),
        "single_blocks.linear2.kernel": (38, 15360, 3072),
        "single_blocks.modulation.lin.bias": (38, 9216),
        "img_in.kernel": (64, 3072),
        "final_layer.adaLN_modulation.1.kernel": (3072, 6144),
    }
    for k, shape in want.items():
        assert tuple(p[k].shape) == shape and p[k].dtype == jnp.bfloat16, (k, p[k])
    assert sum(1 for k in p if k.startswith("double_blocks.")) == 24 and sum(1 for k in p if k.startswith("single_blocks.")) == 8
    f8 = param_paths(nnx.eval_shape(lambda: Flux(cfg, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16, rngs=nnx.Rngs(0), fp8=True)))
    assert f8["double_blocks.img_attn.qkv.kernel"].shape == (19, 3072, 9216) and f8["double_blocks.img_attn.qkv.scale"].shape == (19, 9216)
    assert f8["single_blocks.linear1.scale"].shape == (38, 21504) and f8["single_blocks.linear1.scale"].dtype == jnp.float32


def test_one_block_is_traced_whatever_the_depth():
    def eqns(depth, single, scan_blocks):
        cfg = FluxConfig.tiny(depth=depth, depth_single_blocks=single)
        graphdef, state = nnx.split(nnx.eval_shape(lambda: Flux(cfg, rngs=nnx.Rngs(0), scan_blocks=scan_blocks)))
        jaxpr = jax.make_jaxpr(lambda s, x: nnx.merge(graphdef, s)(**x))(state, _inputs(cfg))
        return len(jaxpr.jaxpr.eqns)

    assert eqns(2, 3, True) == eqns(5, 7, True)
    assert eqns(5, 7, False) > 2 * eqns(2, 3, False)


def test_stack_rules_and_layer_axes():
    per_layer = {f"double_blocks.{i}.img_in.kernel": linear(f"double_blocks.{i}.img_in.weight") for i in range(3)}
    per_layer["img_in.kernel"] = linear("img_in.weight")
    rules = stack(per_layer, {"double_blocks": 3})
    assert set(rules) == {"double_blocks.img_in.kernel", "img_in.kernel"}
    r = rules["double_blocks.img_in.kernel"]
    assert isinstance(r, Stacked) and r.names[2] == "double_blocks.2.img_in.kernel"
    assert r.sources == tuple(f"double_blocks.{i}.img_in.weight" for i in range(3))
    ws = [np.full((4, 2), i, np.float32) for i in range(3)]
    assert r.fn(np, *ws).shape == (3, 2, 4) and (r.fn(np, *ws)[2] == 2).all()
    with pytest.raises(ValueError, match="layer 1"):
        stack({k: v for k, v in per_layer.items() if ".1." not in k}, {"double_blocks": 3})
    sd = {"double_blocks.a.kernel": jax.ShapeDtypeStruct((3, 4, 5), jnp.float32)}
    assert unstacked_paths(sd, {"double_blocks": 3})["double_blocks.2.a.kernel"].shape == (4, 5)
    assert isinstance(per_layer["img_in.kernel"], Rule)
    assert layer_axes("double_blocks.img_attn.qkv.kernel") == 1 and layer_axes("single_blocks.linear1.bias") == 1
    assert layer_axes("double_blocks.3.img_attn.qkv.kernel") == 0 and layer_axes("img_in.kernel") == 0
    # FSDP: the layer axis is never the one sharded, and a layer's size decides, as unrolled
    assert param_spec((8, 4, 4), 8, 0, skip=1) == jax.sharding.PartitionSpec()
    assert param_spec((8, 16, 4), 8, 0, skip=1) == jax.sharding.PartitionSpec(None, "fsdp", None)
    assert param_spec((38, 9216), 4, 2**18, skip=1) == jax.sharding.PartitionSpec()  # a bias: replicated


@pytest.mark.parametrize("host_bytes", [16 << 20, 0], ids=["host", "device_buffer"])
def test_stacked_parameters_load_layer_by_layer(tmp_path, monkeypatch, host_bytes):
    """Each layer of a stacked parameter is its checkpoint tensor, assembled on the host (small
    parameters) or written into the device buffer layer by layer (large: HOST_STACK_BYTES);
    the loaded model is the unrolled one's, stacked."""
    from safetensors.numpy import save_file

    from helpers import bfl_tensors
    from vmdiff_jax.checkpoints import load_flux, loader

    monkeypatch.setattr(loader, "HOST_STACK_BYTES", host_bytes)
    unrolled = _perturbed(Flux(CFG, rngs=nnx.Rngs(5), scan_blocks=False))
    tensors = bfl_tensors(unrolled)
    save_file(tensors, tmp_path / "flux.safetensors")
    loaded = load_flux(tmp_path / "flux.safetensors", dtype=jnp.float32)
    got, want = _flat(loaded), _flat(scanned(unrolled))
    assert got.keys() == want.keys()
    for k in got:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)
    np.testing.assert_array_equal(got["double_blocks.img_attn.qkv.kernel"][2], tensors["double_blocks.2.img_attn.qkv.weight"].T)
    np.testing.assert_array_equal(got["single_blocks.linear2.bias"][1], tensors["single_blocks.1.linear2.bias"])

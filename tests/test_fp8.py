"""fp8 weight storage (quant.py): quantize/dequantize properties, Fp8Linear, FLUX with fp8 blocks.

Checkpoint loading of fp8 files and the parity against diffusers are in test_fp8_loading.py.
"""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
import torch
from flax import nnx
from safetensors.numpy import save_file
from safetensors.torch import load_file as load_torch_file

from helpers import bfl_tensors, flux_forward, rel, scanned
from vmdiff_jax.engine.demo import random_params
from vmdiff_jax.nn.flux import Flux, FluxConfig
from vmdiff_jax.checkpoints.rules import param_paths
from vmdiff_jax.nn.quant import FP8, FP8_MAX, Fp8Linear, dequantize, quantize, to_fp8

ROOT = Path(__file__).resolve().parents[1]

# every finite non-negative float8_e4m3fn value (the grid)
GRID = np.unique(np.abs(np.arange(256, dtype=np.uint8).view(ml_dtypes.float8_e4m3fn).astype(np.float32)))
GRID = GRID[np.isfinite(GRID)]


def _weights(seed=0):
    """(in 64, out 7) kernel whose channels span 1e-6 .. 1e4, one all-zero channel, one outlier."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((64, 7)).astype(np.float32) * np.float32([1e-6, 1e-2, 1.0, 3.0, 1e4, 0.0, 0.05])
    w[3, 6] = 40.0  # an outlier in a small channel
    return w


def test_grid_is_e4m3fn():
    assert GRID.size == 127 and GRID.max() == FP8_MAX and GRID[1] == 2.0**-9  # 0, 7 subnormals, 119 normals


@pytest.mark.parametrize("xp", [np, jnp], ids=["numpy", "jax"])
def test_quantize_per_channel(xp):
    w = _weights()
    q, s = quantize(xp.asarray(w))
    assert isinstance(q, np.ndarray) == (xp is np)
    q, s = np.asarray(q), np.asarray(s)
    assert q.dtype == FP8 and q.shape == w.shape and s.dtype == np.float32 and s.shape == (7,)
    qf = q.astype(np.float32)
    assert np.isfinite(qf).all() and np.isin(np.abs(qf), GRID).all()
    # each nonzero channel's largest weight maps to the top of the range; the zero channel is zeros, scale 1
    np.testing.assert_array_equal(np.abs(qf).max(0)[[0, 1, 2, 3, 4, 6]], FP8_MAX)
    assert s[5] == 1.0 and (qf[:, 5] == 0).all()
    np.testing.assert_allclose(s, np.where(np.abs(w).max(0) > 0, np.abs(w).max(0) / FP8_MAX, 1.0), rtol=2e-7)
    # round to nearest: the error is at most half a grid step (relative 2^-4 for normals, 2^-10 x scale below)
    err = np.abs(dequantize(q, s, np.float32) - w)
    assert (err <= np.maximum(2.0**-4 * np.abs(w), 2.0**-10 * s) * (1 + 1e-6)).all()
    # and it is the nearest grid point: no grid value is closer to w / s
    x = np.abs(w / s).reshape(-1)
    best = np.abs(GRID[None, :] - x[:, None]).min(1)
    np.testing.assert_allclose(np.abs(np.abs(qf).reshape(-1) - x), best, atol=1e-6 * FP8_MAX)


def test_numpy_and_jax_quantize_bitwise_equal():
    w = _weights(1)
    qn, sn = quantize(w)
    qj, sj = quantize(jnp.asarray(w))
    np.testing.assert_array_equal(qn.view(np.uint8), np.asarray(qj).view(np.uint8))
    np.testing.assert_array_equal(sn, np.asarray(sj))


def test_quantize_exact_on_grid_times_power_of_two():
    """w = g * 2^k with g on the e4m3 grid and |g| reaching 448 per channel round-trips exactly."""
    rng = np.random.default_rng(2)
    g = rng.choice(GRID, (32, 5)) * rng.choice([-1.0, 1.0], (32, 5))
    g[0] = FP8_MAX
    k = np.float32([2.0**-12, 2.0**-3, 1.0, 2.0**5, 2.0**-20])
    w = (g * k).astype(np.float32)
    q, s = quantize(w)
    np.testing.assert_array_equal(s, k)
    np.testing.assert_array_equal(q.astype(np.float32), g)
    np.testing.assert_array_equal(dequantize(q, s, np.float32), w)


def test_per_tensor_and_huge_values():
    w = _weights() * np.float32(1e30)  # beyond float8 range before scaling: must not give NaN
    q, s = quantize(w, per_channel=False)
    assert s.shape == () and np.isfinite(q.astype(np.float32)).all() and np.abs(q.astype(np.float32)).max() == FP8_MAX
    np.testing.assert_allclose(s, np.abs(w).max() / FP8_MAX, rtol=2e-7)


def test_dequantize_bf16_is_the_float32_product_rounded():
    q, s = quantize(_weights(3))
    d = dequantize(jnp.asarray(q), jnp.asarray(s), jnp.bfloat16)
    assert d.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(d), (q.astype(np.float32) * s).astype(ml_dtypes.bfloat16))
    assert dequantize(q, np.float32(2.0), np.float32).dtype == np.float32  # a per-tensor scale broadcasts


def test_fp8_linear_is_linear_with_dequantized_kernel():
    lin = nnx.Linear(24, 10, rngs=nnx.Rngs(0))
    lin.bias[...] = jnp.arange(10.0)
    f8 = Fp8Linear.from_linear(lin)
    assert f8.kernel[...].dtype == FP8 and f8.scale[...].shape == (10,) and f8.bias[...].dtype == jnp.float32
    ref = nnx.Linear(24, 10, rngs=nnx.Rngs(0))
    ref.bias[...] = lin.bias[...]
    ref.kernel[...] = dequantize(f8.kernel[...], f8.scale[...], jnp.float32)
    x = jax.random.normal(jax.random.key(0), (3, 5, 24))
    np.testing.assert_array_equal(f8(x), ref(x))


def _inputs(cfg, seed=0, batch=2, grid=(4, 6), txt_len=5):
    rng = np.random.default_rng(seed)
    h, w = grid
    ids = np.zeros((h, w, 3), np.float32)
    ids[..., 1], ids[..., 2] = np.arange(h)[:, None], np.arange(w)[None, :]
    return dict(
        img=jnp.asarray(rng.standard_normal((batch, h * w, cfg.in_channels)), jnp.float32),
        img_ids=jnp.asarray(ids.reshape(1, h * w, 3)),
        txt=jnp.asarray(rng.standard_normal((batch, txt_len, cfg.context_in_dim)), jnp.float32),
        txt_ids=jnp.zeros((1, txt_len, 3), jnp.float32),
        timesteps=jnp.asarray(rng.uniform(0.1, 1.0, batch), jnp.float32),
        y=jnp.asarray(rng.standard_normal((batch, cfg.vec_in_dim)), jnp.float32),
        guidance=jnp.full((batch,), 3.5, jnp.float32),
    )


def _fp8_of(model):
    q = nnx.clone(model)
    to_fp8(q.double_blocks)
    to_fp8(q.single_blocks)
    return q


def _dequantized(model, q):
    """`model` (float32) with every kernel that is float8 in `q` replaced by its dequantized value."""
    ref = nnx.clone(model)
    flat = dict(nnx.to_flat_state(nnx.state(q, nnx.Param)))
    for path, var in nnx.to_flat_state(nnx.state(ref, nnx.Param)):
        if path[-1] == "kernel" and flat[path][...].dtype == FP8:
            var[...] = dequantize(flat[path][...], flat[path[:-1] + ("scale",)][...], jnp.float32)
    return ref


CFG = FluxConfig.tiny(depth=2, depth_single_blocks=2)


def _as(src, dtype, fp8):
    """Flux(CFG, dtype, fp8) holding src's parameters cast to its parameter dtypes (float8
    kernels and float32 scales carried over as they are)."""
    graphdef, abstract = nnx.split(nnx.eval_shape(lambda: Flux(CFG, dtype=dtype, param_dtype=dtype, rngs=nnx.Rngs(0), fp8=fp8)))
    values = {p: v[...] for p, v in nnx.to_flat_state(nnx.state(src, nnx.Param))}
    new = [(p, v.replace(jnp.asarray(values[p], v.dtype))) for p, v in nnx.to_flat_state(abstract)]
    return nnx.merge(graphdef, nnx.from_flat_state(new))


@pytest.fixture(scope="module")
def models():
    # drawn unrolled (random_params' fan-in is a 2-D kernel's), then stacked as Flux(CFG) holds them
    m = scanned(random_params(nnx.eval_shape(lambda: Flux(CFG, rngs=nnx.Rngs(0), scan_blocks=False)), 1))
    q = _fp8_of(m)
    return m, q


def test_fp8_flux_structure():
    m = nnx.eval_shape(lambda: Flux(CFG, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16, rngs=nnx.Rngs(0), fp8=True))
    paths = param_paths(m)
    f8 = {p for p, s in paths.items() if s.dtype == FP8}
    # every block Linear (5 per stream in a double block, 3 per single block), stacked over
    # the layers, and nothing else
    assert len(f8) == 10 + 3
    assert all(p.startswith(("double_blocks.", "single_blocks.")) and p.endswith(".kernel") for p in f8)
    for p in f8:
        depth, _, out = paths[p].shape
        assert depth == (CFG.depth if p.startswith("double_blocks.") else CFG.depth_single_blocks)
        assert paths[p[: -len("kernel")] + "scale"] == jax.ShapeDtypeStruct((depth, out), jnp.float32)
    assert "double_blocks.img_attn.qkv.kernel" in f8 and "single_blocks.linear1.kernel" in f8
    rest = {p: s.dtype for p, s in paths.items() if p not in f8 and not p.endswith(".scale") or "norm" in p}
    assert set(rest.values()) == {jnp.dtype(jnp.bfloat16)}  # embedders, final layer, norms, biases
    assert paths["img_in.kernel"].dtype == jnp.bfloat16 and paths["final_layer.linear.kernel"].dtype == jnp.bfloat16


def test_fp8_flux_float32_equals_dequantized_float32(models):
    m, q = models
    inputs = _inputs(CFG)
    ours, ref = flux_forward(q, inputs), flux_forward(_dequantized(m, q), inputs)
    err = rel(ours, ref)
    print(f"fp8-stored FLUX (float32 compute) vs float32 FLUX with the dequantized weights: rel {err:.1e}")
    assert err <= 1e-4
    assert rel(ours, flux_forward(m, inputs)) > 1e-4  # the weights did change: the comparison above is not vacuous


def test_fp8_bf16_activations_error_next_to_bf16(models):
    """fp8 weights with bf16 activations against the float32 model, next to the bf16 model's error."""
    m, q = models
    inputs = _inputs(CFG)
    ref = flux_forward(m, inputs)

    b, f = _as(m, jnp.bfloat16, fp8=False), _as(q, jnp.bfloat16, fp8=True)
    assert f.double_blocks.img_attn.qkv.scale[...].dtype == jnp.float32 and f.img_in.kernel[...].dtype == jnp.bfloat16
    bf16, fp8 = flux_forward(b, inputs), flux_forward(f, inputs)
    e_bf16, e_fp8 = rel(bf16, ref), rel(fp8, ref)
    print(f"against the float32 model: bf16 weights+activations rel {e_bf16:.2e}, fp8 weights + bf16 activations rel {e_fp8:.2e}")
    assert e_bf16 < 0.03 and e_fp8 < 0.15


def _tool(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "convert" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _write_bfl(model, path, dtype=ml_dtypes.bfloat16):
    """Our parameters as a BFL single file (kernel -> weight, transposed to torch's (out, in))."""
    tensors = bfl_tensors(model, dtype)
    save_file(tensors, str(path), metadata={"axes_dim": "[4, 6, 6]"})
    return tensors


def test_convert_writes_scaled_fp8_bfl_file(models, tmp_path):
    m, _ = models
    src = _write_bfl(m, tmp_path / "flux-bf16.safetensors")
    n = _tool("flux_to_fp8").convert(tmp_path / "flux-bf16.safetensors", tmp_path / "flux-fp8.safetensors")
    assert n == 10 * CFG.depth + 3 * CFG.depth_single_blocks
    # read back with the reference implementation (torch + safetensors), as ComfyUI would
    out = load_torch_file(str(tmp_path / "flux-fp8.safetensors"))
    assert out.pop("scaled_fp8").dtype == torch.float8_e4m3fn
    scales = {k[: -len(".scale_weight")]: out.pop(k) for k in list(out) if k.endswith(".scale_weight")}
    assert set(out) == set(src) and len(scales) == n
    for key, w in src.items():
        got = out[key]
        layer = key[: -len(".weight")]
        if layer in scales:
            assert got.dtype == torch.float8_e4m3fn and scales[layer].dtype == torch.float32 and scales[layer].shape == ()
            assert key.startswith(("double_blocks.", "single_blocks."))
            w32 = w.astype(np.float32)
            assert float(scales[layer]) == np.float32(np.abs(w32).max() * np.float32(1 / FP8_MAX))  # per tensor
            deq = (got.float() * scales[layer]).numpy()
            assert (np.abs(deq - w32) <= np.maximum(2.0**-4 * np.abs(w32), 2.0**-10 * float(scales[layer])) * (1 + 1e-6)).all()
        else:  # embedders, final layer, norms, biases: bf16 as they were
            assert got.dtype == torch.bfloat16
            np.testing.assert_array_equal(got.float().numpy(), w.astype(np.float32))
    r = subprocess.run([sys.executable, str(ROOT / "convert" / "flux_to_fp8.py"), str(tmp_path / "nope"), str(tmp_path / "o.safetensors")],
                       capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 2 and r.stderr.startswith("flux_to_fp8: error:") and "Traceback" not in r.stderr
    assert not (tmp_path / "o.safetensors").exists()


@pytest.mark.parametrize("scan_blocks", [True, False], ids=["scanned", "unrolled"])
def test_dequantized_kernels_live_one_layer_at_a_time(scan_blocks):
    """XLA's buffer assignment of a 5-step sampling loop over an fp8 FLUX (blocks under a scan or
    unrolled): the temporaries hold a few layers' dequantized kernels, not all of them (hoisted out of
    the loop or computed first), nor the float8 stacks upcast whole (XLA:CPU's f16).
    The barriers that order them are kept through scheduling, as the GPU and TPU compilers do."""
    cfg = FluxConfig.tiny(hidden_size=256, num_heads=2, axes_dim=(16, 56, 56), depth=2, depth_single_blocks=2)
    graphdef, state = nnx.split(nnx.eval_shape(lambda: Flux(cfg, rngs=nnx.Rngs(0), fp8=True, scan_blocks=scan_blocks)))

    def sample(state, x):
        model = nnx.merge(graphdef, state)

        def step(x, t):
            v = model(x, jnp.zeros((1, 4, 3)), jnp.ones((1, 2, cfg.context_in_dim)), jnp.zeros((1, 2, 3)), t[None],
                      jnp.ones((1, cfg.vec_in_dim)), jnp.ones((1,)))
            return x + 0.1 * v, None

        return jax.lax.scan(step, x, jnp.linspace(1.0, 0.0, 5))[0]

    lowered = jax.jit(sample).lower(state, jax.ShapeDtypeStruct((1, 4, cfg.in_channels), jnp.float32))
    temp = lowered.compile(compiler_options={"xla_disable_hlo_passes": "cse_barrier_expander"}).memory_analysis().temp_size_in_bytes
    kernels = [s for s in param_paths(nnx.merge(graphdef, state)).values() if s.dtype == FP8]
    all_f32 = sum(4 * s.size for s in kernels)
    largest = max(4 * s.shape[-2] * s.shape[-1] for s in kernels)  # one layer's kernel (stacked: (depth, in, out))
    print(f"temp {temp / 1e6:.2f} MB; all kernels in float32 {all_f32 / 1e6:.2f} MB, the largest {largest / 1e6:.2f} MB")
    assert temp <= 2.5 * largest < 0.25 * all_f32

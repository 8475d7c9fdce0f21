"""Attention implementations (math.ATTENTION_IMPLS) against a float64 reference attention at FLUX's
sequence lengths (1753 MDeNoise, 2482 BNoise) and head dim 128; FLUX calls and a short denoise
with each implementation against the XLA path; the availability check the CLI uses."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vmdiff_jax.nn import math as vmath
from vmdiff_jax.method import sampling
from vmdiff_jax.nn.flux import Flux, FluxConfig

ON_NVIDIA = vmath._is_nvidia_gpu()
ON_TPU = jax.default_backend() == "tpu"
F32_TOL = 1e-5


def reference_attention(q, k, v, mask=None, is_causal=False):
    """softmax(q k^T / sqrt(D)) v in float64: q (B, Lq, H, D), k/v (B, Lk, H, D) -> (B, Lq, H, D)."""
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    s = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(q.shape[-1])
    keep = np.ones(s.shape, bool)
    if mask is not None:
        keep &= np.broadcast_to(mask, s.shape)
    if is_causal:
        keep &= np.tril(np.ones(s.shape[-2:], bool))
    s = np.where(keep, s, -np.inf)
    p = np.exp(s - s.max(-1, keepdims=True))
    return np.einsum("bhqk,bkhd->bqhd", p / p.sum(-1, keepdims=True), v)


def qkv(t, heads=2, d=128, batch=1, seed=0, dtype=jnp.float32):
    rng = np.random.default_rng(seed)
    return tuple(jnp.asarray(rng.standard_normal((batch, t, heads, d)), dtype) for _ in range(3))


@pytest.mark.parametrize("t", [1753, 2482])
@pytest.mark.parametrize("impl", ["xla", "chunked", "splash", "auto", "cudnn"])
def test_implementation_matches_reference(impl, t):
    if impl == "cudnn" and not ON_NVIDIA:
        pytest.skip("cuDNN flash attention needs an NVIDIA GPU")
    # cuDNN runs bf16/fp16 only: compare it in bf16 at bf16's tolerance.
    dtype, tol = (jnp.bfloat16, 2e-2) if impl == "cudnn" else (jnp.float32, F32_TOL)
    q, k, v = qkv(t, dtype=dtype)
    want = reference_attention(q, k, v)
    got = jax.jit(lambda q, k, v: vmath.attention(q, k, v, implementation=impl))(q, k, v)
    assert got.shape == (1, t, 2 * 128) and got.dtype == dtype
    err = float(np.abs(np.asarray(got, np.float64).reshape(want.shape) - want).max())
    print(f"\n{impl} (runs {vmath.resolve_attention_impl(impl, dtype, t, 128)}) T={t}: max |err| {err:.2e}")
    assert err < tol


def test_chunked_pads_queries_and_handles_masks():
    """Lq = 300 (one full block + 44 padded rows), Lk = 333; causal, per-query and per-key masks."""
    rng = np.random.default_rng(1)
    q = jnp.asarray(rng.standard_normal((2, 300, 2, 32)), jnp.float32)
    k, v = (jnp.asarray(rng.standard_normal((2, 333, 2, 32)), jnp.float32) for _ in range(2))
    cases = [
        dict(),
        dict(is_causal=True),
        dict(mask=rng.random((2, 1, 300, 333)) > 0.3),
        dict(mask=rng.random((333,)) > 0.5),
    ]
    for kw in cases:
        got = vmath.chunked_attention(q, k, v, **kw)
        assert got.shape == q.shape
        assert float(np.abs(np.asarray(got) - reference_attention(q, k, v, **kw)).max()) < F32_TOL, kw


def test_chunked_bfloat16_close_to_xla():
    """bf16 inputs (accelerators' dtype): logits and softmax in float32 like the XLA path."""
    q, k, v = qkv(600, heads=2, d=64, dtype=jnp.bfloat16)
    got = vmath.chunked_attention(q, k, v)
    want = jax.nn.dot_product_attention(q, k, v, implementation="xla")
    assert got.dtype == jnp.bfloat16
    assert float(jnp.abs(got.astype(jnp.float32) - want.astype(jnp.float32)).max()) < 1e-2


def test_splash_with_cross_lengths():
    """Queries and keys of different, unaligned lengths (both padded, padded keys masked out)."""
    q = qkv(200, heads=2, d=128, batch=2)[0]
    _, k, v = qkv(333, heads=2, d=128, batch=2, seed=3)
    got = vmath.splash_attention(q, k, v, interpret=True)
    assert float(np.abs(np.asarray(got) - reference_attention(q, k, v)).max()) < F32_TOL


def test_auto_picks_a_runnable_kernel():
    shapes = [(1753, 128, jnp.float32), (1753, 128, jnp.bfloat16), (100, 16, jnp.float32), (4096, 512, jnp.float32)]
    for lq, d, dtype in shapes:
        impl = vmath.resolve_attention_impl("auto", dtype, lq, d)
        assert impl in vmath.ATTENTION_IMPLS and impl != "auto"
        assert vmath.check_attention_impl(impl) == impl  # never a kernel this machine cannot run
    assert vmath.resolve_attention_impl(None, jnp.float32, 1753, 128) == vmath.resolve_attention_impl(
        "auto", jnp.float32, 1753, 128
    )
    if jax.default_backend() == "cpu":
        assert vmath.resolve_attention_impl("auto", jnp.float32, 1753, 128) == "chunked"
        assert vmath.resolve_attention_impl("auto", jnp.float32, 77, 64) == "xla"  # one block: nothing to chunk


def test_check_attention_impl_messages():
    for name in ("auto", "xla", "chunked", None):
        assert vmath.check_attention_impl(name) == (name or "auto")
    with pytest.raises(vmath.AttentionUnavailable, match="unknown attention implementation 'flash'"):
        vmath.check_attention_impl("flash")
    assert issubclass(vmath.AttentionUnavailable, ValueError)
    if not ON_NVIDIA:
        with pytest.raises(vmath.AttentionUnavailable, match="'cudnn' needs an NVIDIA GPU") as e:
            vmath.check_attention_impl("cudnn")
        assert "\n" not in str(e.value)
    else:
        with pytest.raises(vmath.AttentionUnavailable, match="bfloat16 or float16"):
            vmath.check_attention_impl("cudnn", jnp.float32)
    if not ON_TPU:
        with pytest.raises(vmath.AttentionUnavailable, match="'splash' needs a TPU"):
            vmath.check_attention_impl("splash")
    with pytest.raises(vmath.AttentionUnavailable, match="unknown attention"):
        Flux(FluxConfig.tiny(), rngs=nnx.Rngs(0), attention_impl="flash")


# ------------------------------------------------------------------ FLUX with each implementation

CFG = FluxConfig.tiny()
LAT_H = LAT_W = 32  # packed 16 x 16 = 256 image tokens + 80 context tokens = 336 (not a block multiple)
N_TXT = 80


@pytest.fixture(scope="module")
def flux_inputs():
    rng = np.random.default_rng(0)
    img_ids, txt_ids = sampling.prepare_ids(1, LAT_H, LAT_W, N_TXT)
    n = (LAT_H // 2) * (LAT_W // 2)
    return dict(
        img=jnp.asarray(rng.standard_normal((1, n, CFG.in_channels)), jnp.float32),
        img_ids=jnp.asarray(img_ids),
        txt=jnp.asarray(rng.standard_normal((1, N_TXT, CFG.context_in_dim)), jnp.float32),
        txt_ids=jnp.asarray(txt_ids),
        y=jnp.asarray(rng.standard_normal((1, CFG.vec_in_dim)), jnp.float32),
    )


def flux_with(impl, state):
    graphdef, _ = nnx.split(nnx.eval_shape(lambda: Flux(CFG, rngs=nnx.Rngs(0), attention_impl=impl)))
    return nnx.merge(graphdef, state)


@pytest.fixture(scope="module")
def flux_state():
    """Random weights (numpy, no initialiser): kernels ~ N(0, 1/fan_in), biases ~ N(0, 0.05^2), norm scales ~ 1."""
    rng = np.random.default_rng(1)
    _, abstract = nnx.split(nnx.eval_shape(lambda: Flux(CFG, rngs=nnx.Rngs(0))))

    def draw(path, a):
        x = rng.standard_normal(a.shape).astype(np.float32)
        name = jax.tree_util.keystr(path)
        x = x / np.sqrt(a.shape[-2]) if "kernel" in name else (1 + 0.05 * x if "scale" in name else 0.05 * x)
        return jnp.asarray(x, a.dtype)

    return jax.tree.map_with_path(draw, abstract)


@jax.jit
def _call(graphdef, state, x):
    model = nnx.merge(graphdef, state)
    return model(x["img"], x["img_ids"], x["txt"], x["txt_ids"], jnp.full((1,), 0.6, jnp.float32), x["y"],
                 jnp.full((1,), 4.0, jnp.float32))


@jax.jit
def _denoise(graphdef, state, x):
    """3 of 4 Euler steps from the packed latents x (guidance 4)."""
    fn = sampling.flux_velocity(nnx.merge(graphdef, state), x["txt"], x["txt_ids"], x["img_ids"], x["y"], 4.0)
    return sampling.denoise(fn, x["img"], sampling.flux_sigmas(4, x["img"].shape[1]), 0, 3)


@pytest.mark.parametrize("impl", ["chunked", "splash"])  # auto = chunked on CPU
def test_flux_call_and_denoise_equal_xla(impl, flux_state, flux_inputs):
    ref_model, model = flux_with("xla", flux_state), flux_with(impl, flux_state)
    want = _call(*nnx.split(ref_model), flux_inputs)
    got = _call(*nnx.split(model), flux_inputs)
    assert float(jnp.abs(want).max()) > 0.1
    assert float(jnp.abs(got - want).max()) < F32_TOL

    x_ref = _denoise(*nnx.split(ref_model), flux_inputs)
    x_got = _denoise(*nnx.split(model), flux_inputs)
    assert float(jnp.abs(x_ref - flux_inputs["img"]).max()) > 1e-2  # the loop moved the latents
    assert float(jnp.abs(x_got - x_ref).max()) < F32_TOL

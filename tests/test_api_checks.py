"""The library validates its inputs (nn/checks.py): the public functions of `vmdiff_jax` and
`VMDiff.fuse` / `fuse_sequence` raise TypeError / ValueError naming the argument, before any
JAX work, for wrong dtypes, ranges, shapes, label types, seeds and keys."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import vmdiff_jax
from vmdiff_jax import FluxConfig, denoise, eaa, flux_sigmas, golden_section, invert, load_flux, load_vae, scat, slerp
from vmdiff_jax.method.search import EAAConfig
from vmdiff_jax.nn import checks

U8 = np.zeros((32, 32, 3), np.uint8)


@pytest.fixture(scope="module")
def pipe():
    from vmdiff_jax.engine.pipeline import VMDiff

    return VMDiff.demo(random=True, num_steps=2, size=32, locator="whole")


@pytest.fixture()
def no_jax_work(pipe, monkeypatch):
    """Every stage of the pipeline fails the test if it is reached."""
    for name in ("condition", "pooled_prompt", "text_embeddings", "bnoise", "mdenoise", "features", "noise"):
        monkeypatch.setattr(pipe, name, lambda *a, _n=name, **k: pytest.fail(f"{_n} ran before the arguments were checked"))
    return pipe


FUSE_CASES = [
    ("float image in 0..255", dict(img1=U8.astype(np.float32) + 200), ValueError, "img1", "[0, 1]"),
    ("int image above 255", dict(img1=U8.astype(np.int64) + 300), ValueError, "img1", "0..255"),
    ("negative ints", dict(img2=U8.astype(np.int16) - 1), ValueError, "img2", "0..255"),
    ("bool image", dict(img1=U8.astype(bool)), TypeError, "img1", "dtype bool"),
    ("RGBA", dict(img1=np.zeros((32, 32, 4), np.uint8)), ValueError, "img1", "alpha"),
    ("gray", dict(img2=np.zeros((32, 32), np.uint8)), ValueError, "img2", "(32, 32, 3)"),
    ("other size", dict(img1=np.zeros((64, 64, 3), np.uint8)), ValueError, "img1", "(32, 32, 3)"),
    ("NaN", dict(img1=np.full((32, 32, 3), np.nan, np.float32)), ValueError, "img1", "NaN"),
    ("a path", dict(img1="apple.png"), TypeError, "img1", "load_image"),
    ("complex", dict(img1=U8.astype(np.complex64)), TypeError, "img1", "dtype"),
    ("label None", dict(label1=None), TypeError, "label1", "str"),
    ("label empty", dict(label2="   "), ValueError, "label2", "empty"),
    ("label bytes", dict(label2=b"duck"), TypeError, "label2", "bytes"),
    ("label int", dict(label1=3), TypeError, "label1", "int"),
    ("seed 2^40 as key", dict(key=2**40), ValueError, "key", "4294967295"),
    ("seed 2^32", dict(seed=2**32), ValueError, "seed", "4294967295"),
    ("seed -1", dict(seed=-1), ValueError, "seed", "from 0"),
    ("seed float", dict(seed=1.0), TypeError, "seed", "integer"),
    ("seed bool", dict(key=True), TypeError, "key", "bool"),
    ("key and seed", dict(key=jax.random.key(0), seed=1), ValueError, "key or seed", "not both"),
    ("array of keys", dict(key=jax.random.split(jax.random.key(0), 3)), ValueError, "key", "(3,)"),
    ("float key", dict(key=jnp.zeros(2)), TypeError, "key", "float32"),
    ("string key", dict(key="0"), TypeError, "key", "str"),
    ("batch 0", dict(batch=0), ValueError, "batch", ">= 1"),
    ("batch float", dict(batch=2.0), TypeError, "batch", "integer"),
    ("schedule", dict(schedule="fast"), ValueError, "schedule", "'paper'"),
]


@pytest.mark.parametrize("name, kw, exc, arg, needle", FUSE_CASES, ids=[c[0] for c in FUSE_CASES])
def test_fuse_refuses_bad_arguments_naming_them(no_jax_work, name, kw, exc, arg, needle):
    args = {**dict(img1=U8, img2=U8, label1="apple", label2="duck"), **kw}
    with pytest.raises(exc) as e:
        no_jax_work.fuse(**args)
    assert arg in str(e.value) and needle in str(e.value), str(e.value)


@pytest.mark.parametrize("call, exc, needle", [
    (lambda p: p.fuse_sequence([U8], ["a"]), ValueError, "at least two images"),
    (lambda p: p.fuse_sequence([U8, U8], ["a"]), ValueError, "one label per image"),
    (lambda p: p.fuse_sequence([U8, U8], ["a", 3]), TypeError, "labels[1]"),
    (lambda p: p.fuse_sequence([U8, U8.astype(np.float32) + 9], ["a", "b"]), ValueError, "images[1]"),
    (lambda p: p.fuse_sequence([U8, U8, U8], ["a", "b", "c"], seed=2**32 - 1), ValueError, "seed"),
    (lambda p: p.fuse_sequence(U8, "ab"), TypeError, "images"),
    (lambda p: p.fuse_sequence([U8, U8], "ab"), TypeError, "labels"),
    (lambda p: p.fuse_sequence([U8, U8], ["a", "b"], key=jax.random.key(0)), TypeError, "seed= only"),
])
def test_fuse_sequence_refuses_bad_arguments(no_jax_work, call, exc, needle):
    with pytest.raises(exc) as e:
        call(no_jax_work)
    assert needle in str(e.value), str(e.value)


def test_images_dtypes_taken():
    """uint8 as is; ints 0..255 as uint8; floats in [0, 1] as round(255 x)."""
    assert checks.image("x", U8) is U8
    ints = np.arange(32 * 32 * 3).reshape(32, 32, 3) % 256
    assert np.array_equal(checks.image("x", ints), ints.astype(np.uint8))
    f = np.linspace(0, 1, 32 * 32 * 3, dtype=np.float32).reshape(32, 32, 3)
    got = checks.image("x", f)
    assert got.dtype == np.uint8 and np.array_equal(got, np.round(f.astype(np.float64) * 255).astype(np.uint8))
    assert checks.image("x", jnp.asarray(f, jnp.bfloat16)).dtype == np.uint8
    assert got.max() == 255 and got.min() == 0


def test_fuse_takes_a_float_image_and_a_legacy_key(pipe):
    """A float image in [0, 1] gives the result of the same image as uint8."""
    half = np.full((32, 32, 3), 0.5, np.float32)
    a = pipe.fuse(half, U8, "apple", "duck", key=jax.random.PRNGKey(3), batch=2)
    b = pipe.fuse(np.full((32, 32, 3), 128, np.uint8), U8, "apple", "duck", key=jax.random.PRNGKey(3), batch=2)
    assert a.seed is None and np.array_equal(a.image, b.image) and a.score == b.score


C1, C2 = jnp.ones((4, 8)), jnp.ones((5, 8))


@pytest.mark.parametrize("call, exc, needle", [
    (lambda: scat(C1, jnp.ones((4, 7))), ValueError, "c1 and c2"),
    (lambda: scat(np.ones(8, np.float32), C2), ValueError, "c1"),
    (lambda: scat(C1, C2, b1="a"), TypeError, "b1"),
    (lambda: scat(C1, C2, b2=float("inf")), ValueError, "b2"),
    (lambda: scat(C1, C2, b1=np.ones(2)), ValueError, "b1"),
    (lambda: scat(C1.astype(jnp.int32), C2), TypeError, "c1"),
    (lambda: scat(jnp.ones((2, 4, 8)), jnp.ones((3, 5, 8))), ValueError, "leading"),
    (lambda: slerp(C1, C2, 0.5), ValueError, "c1 and c2"),
    (lambda: slerp(C1, C1, "half"), TypeError, "alpha"),
    (lambda: slerp(C1, C1, [0.1, float("nan")]), ValueError, "alpha"),
    (lambda: slerp(C1, C1, 0.5, method="cubic"), ValueError, "method"),
    (lambda: slerp([1.0, 2.0], C1, 0.5), TypeError, "c1"),
    (lambda: flux_sigmas(0, 1024), ValueError, "num_steps"),
    (lambda: flux_sigmas(20.0, 1024), TypeError, "num_steps"),
    (lambda: flux_sigmas(20, -4), ValueError, "image_seq_len"),
    (lambda: denoise("f", jnp.ones((1, 4, 8)), flux_sigmas(4, 16)), TypeError, "velocity_fn"),
    (lambda: denoise(lambda x, t: x, jnp.ones((1, 4, 8), jnp.int32), flux_sigmas(4, 16)), TypeError, "x"),
    (lambda: invert(lambda x, t: x, jnp.ones((1, 4, 8)), flux_sigmas(4, 16), 0, 9), ValueError, "stop"),
    (lambda: invert(lambda x, t: x, jnp.ones((1, 4, 8)), flux_sigmas(4, 16), 1.5), TypeError, "start"),
    (lambda: invert(lambda x, t: x, jnp.ones((1, 4, 8)), np.ones((2, 3)), 0), ValueError, "sigmas"),
    (lambda: golden_section(lambda x: x, 1.0, 0.0, 0.1, 5), ValueError, "lo < hi"),
    (lambda: golden_section(lambda x: x, 0.0, 1.0, 0.0, 5), ValueError, "tol"),
    (lambda: golden_section(lambda x: x, 0.0, 1.0, 0.1, 0), ValueError, "max_iter"),
    (lambda: golden_section(lambda x: x, 0.0, float("nan"), 0.1, 5), ValueError, "hi"),
    (lambda: golden_section(None, 0.0, 1.0, 0.1, 5), TypeError, "objective"),
    (lambda: golden_section(lambda x: x, 0.0, 1.0, 0.1, 5, batch=0), ValueError, "batch"),
    (lambda: eaa(object()), TypeError, "problem"),
    (lambda: eaa(_Problem(), cfg={"batch": 2}), TypeError, "cfg"),
    (lambda: eaa(_Problem(), EAAConfig(), schedule="fast"), ValueError, "schedule"),
    (lambda: load_flux(None), TypeError, "path"),
    (lambda: load_flux("weights/flux.safetensors", dtype="int8"), ValueError, "dtype"),
    (lambda: load_flux("weights/flux.safetensors", config={"depth": 1}), TypeError, "config"),
    (lambda: load_vae(3), TypeError, "path"),
    (lambda: load_vae("ae.safetensors", dtype="fp8"), ValueError, "dtype"),
    (lambda: FluxConfig.tiny(num_heads=5), ValueError, "num_heads"),
    (lambda: FluxConfig.tiny(depth=-1), ValueError, "depth"),
    (lambda: FluxConfig.tiny(hidden_size=32.0), TypeError, "hidden_size"),
    (lambda: FluxConfig.tiny(axes_dim=(4, 6, 7)), ValueError, "axes_dim"),
    (lambda: FluxConfig.tiny(mlp_ratio=float("nan")), ValueError, "mlp_ratio"),
    (lambda: vmdiff_jax.Flux({"depth": 1}, rngs=None), TypeError, "cfg"),
], ids=lambda v: v.__name__ if isinstance(v, type) else None)
def test_public_functions_refuse_bad_arguments(call, exc, needle):
    with pytest.raises(exc) as e:
        call()
    assert needle in str(e.value), str(e.value)


class _Problem:
    def noise(self, k):
        return k

    def blend(self, eps, betas):
        return [eps] * len(betas)

    def mix(self, eps_b, alphas):
        raise AssertionError("not reached")


def test_checked_functions_still_work_under_jit_and_vmap():
    assert scat(C1, C2, 0.5, 2).shape == (9, 8)
    assert jax.jit(lambda a, b: scat(C1, C2, a, b))(1.0, 2.0).shape == (9, 8)
    assert jax.vmap(lambda a: slerp(C1, C1, a))(jnp.ones(3)).shape == (3, 4, 8)
    assert slerp(C1, C1, jnp.array([0.1, 0.2])).shape == (2, 4, 8)
    x = jax.jit(lambda x: denoise(lambda x, t: -x, x, flux_sigmas(4, 16)))(jnp.ones((1, 4, 8)))
    assert x.shape == (1, 4, 8) and x.dtype == jnp.float32
    assert golden_section(lambda x: -(x - 0.3) ** 2, 0.0, 1.0, 0.01, 30).x == pytest.approx(0.3, abs=0.01)

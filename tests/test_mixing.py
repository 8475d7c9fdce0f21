"""Properties of SCat and the token-wise slerp / lerp / authors' interpolation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vmdiff_jax.method.mixing import scat, slerp


def rand(shape, seed):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def norms(x):
    return np.linalg.norm(np.asarray(x, np.float64), axis=-1)


def test_scat_concatenates_scaled_tokens():
    c1, c2 = rand((2, 5, 8), 0), rand((2, 3, 8), 1)
    out = scat(c1, c2, 0.5, 2.0)
    assert out.shape == (2, 8, 8)
    np.testing.assert_allclose(np.asarray(out[:, :5]), 0.5 * np.asarray(c1), rtol=1e-7)
    np.testing.assert_allclose(np.asarray(out[:, 5:]), 2.0 * np.asarray(c2), rtol=1e-7)
    # broadcasting of leading dims, vmap over betas
    assert scat(c1[0], c2, 1.0, 1.0).shape == (2, 8, 8)
    betas = jnp.asarray([0.5, 1.0, 1.5])
    vm = jax.vmap(lambda b: scat(c1, c2, 1.0, b))(betas)
    np.testing.assert_allclose(np.asarray(vm[2, :, 5:]), 1.5 * np.asarray(c2), rtol=1e-6)


@pytest.mark.parametrize("method", ["slerp", "lerp", "authors"])
def test_endpoints(method):
    c1, c2 = rand((7, 64), 2), rand((7, 64), 3)
    np.testing.assert_allclose(np.asarray(slerp(c1, c2, 0.0, method=method)), np.asarray(c1), atol=2e-6)
    np.testing.assert_allclose(np.asarray(slerp(c1, c2, 1.0, method=method)), np.asarray(c2), atol=2e-6)


@pytest.mark.parametrize("alpha", [0.1, 0.37, 0.5, 0.9])
def test_norm_is_interpolated_linearly(alpha):
    c1 = rand((11, 4096), 4) * 3.0
    c2 = rand((11, 4096), 5) * jnp.linspace(0.1, 5.0, 11)[:, None]
    out = slerp(c1, c2, alpha)
    want = (1 - alpha) * norms(c1) + alpha * norms(c2)
    np.testing.assert_allclose(norms(out), want, rtol=1e-5)


def test_orthonormal_midpoint():
    q, _ = np.linalg.qr(np.random.default_rng(6).standard_normal((32, 32)))
    a, b = jnp.asarray(q[:, 0], jnp.float32), jnp.asarray(q[:, 1], jnp.float32)
    mid = slerp(a[None], b[None], 0.5)[0]
    np.testing.assert_allclose(np.asarray(mid), np.asarray(a + b) / np.sqrt(2.0), atol=1e-6)
    # a quarter of the way: cos(pi/8) a + sin(pi/8) b (lerp would not be on the circle)
    quarter = slerp(a[None], b[None], 0.25)[0]
    np.testing.assert_allclose(np.asarray(quarter), np.cos(np.pi / 8) * a + np.sin(np.pi / 8) * b, atol=1e-6)
    assert np.max(np.abs(np.asarray(slerp(a[None], b[None], 0.25, method="lerp")[0] - quarter))) > 1e-2


def test_angle_is_interpolated_linearly():
    c1, c2 = rand((9, 48), 7), rand((9, 48), 8)
    u = lambda x: np.asarray(x, np.float64) / norms(x)[:, None]  # noqa: E731
    theta = np.arccos(np.sum(u(c1) * u(c2), -1))
    out = slerp(c1, c2, 0.3)
    np.testing.assert_allclose(np.arccos(np.clip(np.sum(u(out) * u(c1), -1), -1, 1)), 0.3 * theta, atol=1e-4)


def test_vmapped_alpha_equals_loop():
    c1, c2 = rand((2, 6, 16), 9), rand((2, 6, 16), 10)
    alphas = jnp.asarray([0.0, 0.25, 0.4, 0.6, 1.0])
    for method in ["slerp", "lerp", "authors"]:
        batched = slerp(c1, c2, alphas, method=method)
        assert batched.shape == (5, 2, 6, 16)
        looped = np.stack([np.asarray(slerp(c1, c2, float(a), method=method)) for a in alphas])
        np.testing.assert_allclose(np.asarray(batched), looped, atol=1e-6)
        vm = jax.jit(jax.vmap(lambda a: slerp(c1, c2, a, method=method)))(alphas)
        np.testing.assert_allclose(np.asarray(vm), looped, atol=1e-6)


def test_nearly_parallel_zero_and_antiparallel_tokens_are_finite():
    base = rand((1, 64), 11)
    eps = 1e-4 * rand((1, 64), 12)
    c1 = jnp.concatenate([base, base, jnp.zeros((1, 64)), base, jnp.zeros((1, 64)), base])
    c2 = jnp.concatenate([base + eps, 2.0 * base, base, -base, jnp.zeros((1, 64)), base])
    for alpha in [0.0, 0.3, 0.5, 1.0]:
        out = np.asarray(slerp(c1, c2, alpha))
        assert np.isfinite(out).all()
        lerp = (1 - alpha) * np.asarray(c1) + alpha * np.asarray(c2)
        # nearly parallel, parallel, one zero token, both zero, identical: lerp-like
        for i in [0, 1, 2, 4, 5]:
            np.testing.assert_allclose(out[i], lerp[i], atol=1e-4)
    grad = jax.grad(lambda a, x, y: jnp.sum(slerp(x, y, a) ** 2), argnums=(0, 1, 2))
    for g in grad(0.5, c1, c2):
        assert np.isfinite(np.asarray(g)).all()
    g2 = jax.grad(lambda a: jnp.sum(slerp(rand((3, 8), 13), rand((3, 8), 14), a)))(0.3)
    assert np.isfinite(float(g2))


def test_lerp_and_authors_methods():
    c1, c2 = rand((5, 32), 15), rand((5, 32), 16)
    np.testing.assert_allclose(np.asarray(slerp(c1, c2, 0.3, method="lerp")), 0.7 * np.asarray(c1) + 0.3 * np.asarray(c2), atol=1e-6)

    # 4096-d Redux-like tokens whose raw dot product is >> 1: the authors' code is a lerp there.
    x1 = rand((8, 4096), 17)
    x2 = x1 + 0.5 * rand((8, 4096), 18)
    assert np.all(np.sum(np.asarray(x1) * np.asarray(x2), -1) > 1000)
    for a in [0.4, 0.5, 0.6]:
        np.testing.assert_array_equal(np.asarray(slerp(x1, x2, a, method="authors")), np.asarray(slerp(x1, x2, a, method="lerp")))
        assert np.max(np.abs(np.asarray(slerp(x1, x2, a) - slerp(x1, x2, a, method="lerp")))) > 1e-3

    # small vectors with |raw dot| < 0.9995: the authors' formula applies to the raw vectors
    v1 = jnp.asarray([[0.6, 0.0]]); v2 = jnp.asarray([[0.0, 0.8]])  # noqa: E702 raw dot 0 -> theta = pi/2
    got = slerp(v1, v2, 0.5, method="authors")
    np.testing.assert_allclose(np.asarray(got), np.sqrt(0.5) * np.asarray(v1 + v2), atol=1e-6)
    v3 = jnp.asarray([[3.0, 0.0]]); v4 = jnp.asarray([[3.0, 0.3]])  # noqa: E702 raw dot 9 -> lerp
    np.testing.assert_allclose(np.asarray(slerp(v3, v4, 0.5, method="authors")), [[3.0, 0.15]], atol=1e-6)
    with pytest.raises(ValueError):
        slerp(c1, c2, 0.5, method="nope")


def test_dtype_kept_math_in_float32():
    c1, c2 = rand((4, 16), 19).astype(jnp.bfloat16), rand((4, 16), 20).astype(jnp.bfloat16)
    out = slerp(c1, c2, 0.5)
    assert out.dtype == jnp.bfloat16
    ref = slerp(c1.astype(jnp.float32), c2.astype(jnp.float32), 0.5)
    np.testing.assert_allclose(np.asarray(out, np.float32), np.asarray(ref), atol=3e-2)

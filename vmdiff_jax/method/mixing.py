"""Mixing image-condition contexts c (..., L, D) (Redux tokens): SCat and SInp of VMDiff, for
two objects and for N.

scat: concat(b1*c1, b2*c2) along the token axis (BNoise's context); scat_many: the same for N
token sets, concat_i(b_i c_i).
slerp: token-by-token interpolation (MDeNoise's context), three methods:
  "slerp"   (default) a true spherical interpolation: the angle between the normalized tokens,
            the direction slerped on the unit sphere, the norm interpolated linearly;
  "lerp"    (1 - a) c1 + a c2;
  "authors" the authors' code: angle from the raw dot product of the unnormalized tokens, lerp
            wherever |dot| > 0.9995 or arccos is NaN (almost everywhere for 4096-d Redux tokens).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from vmdiff_jax.nn import checks

KARCHER_ITERATIONS = 12  # fixed-point steps of the N > 2 mean (the error shrinks ~10x a step for Redux tokens)
DOT_THRESHOLD = 0.9995  # |cos| above which slerp falls back to lerp (as the authors' code)
_TINY_SQ = 1e-24  # squared norm below which a token counts as the zero vector

METHODS = ("slerp", "lerp", "authors")


def scat(c1: jax.Array, c2: jax.Array, b1=1.0, b2=1.0) -> jax.Array:
    """Scale concatenation: (..., L1, D), (..., L2, D) -> (..., L1 + L2, D) = concat(b1*c1, b2*c2).

    b1, b2: scalars (Python or 0-d arrays; vmap for batches). Leading dims broadcast.
    """
    checks.array("c1", c1, min_ndim=2, floating=True)
    checks.array("c2", c2, min_ndim=2, floating=True)
    if c1.shape[-1] != c2.shape[-1]:
        raise ValueError(f"c1 and c2 must have the same token width (last axis), got shapes {tuple(c1.shape)} "
                         f"and {tuple(c2.shape)}")
    checks.broadcastable("c1 and c2 (leading axes)", c1.shape[:-2], c2.shape[:-2])
    checks.number("b1", b1)
    checks.number("b2", b2)
    lead = jnp.broadcast_shapes(c1.shape[:-2], c2.shape[:-2])
    x1 = jnp.broadcast_to(b1 * c1, lead + c1.shape[-2:])
    x2 = jnp.broadcast_to(b2 * c2, lead + c2.shape[-2:])
    return jnp.concatenate([x1, x2], axis=-2)


def slerp(c1: jax.Array, c2: jax.Array, alpha, *, method: str = "slerp") -> jax.Array:
    """Token-by-token interpolation of c1, c2 (..., L, D) at alpha (0 -> c1, 1 -> c2).

    Broadcasting: alpha of shape A (() for a scalar, (n,) for a sweep) gives a result of shape
    A + broadcast(c1.shape, c2.shape), i.e. slerp(c1, c2, jnp.array([a1, a2, a3])) is the stack
    of the three contexts. Math in float32; the result has the inputs' (promoted) dtype.
    No NaN for zero or (anti)parallel tokens; gradients stay finite.
    """
    checks.choice("method", method, METHODS)
    checks.array("c1", c1, min_ndim=1, floating=True)
    checks.array("c2", c2, min_ndim=1, floating=True)
    checks.broadcastable("c1 and c2", c1.shape, c2.shape)
    checks.reals("alpha", alpha)
    out_dtype = jnp.result_type(c1.dtype, c2.dtype)
    x1 = jnp.asarray(c1, jnp.float32)
    x2 = jnp.asarray(c2, jnp.float32)
    alpha = jnp.asarray(alpha, jnp.float32)
    nd = max(x1.ndim, x2.ndim)
    a = alpha.reshape(alpha.shape + (1,) * nd)
    if method == "lerp":
        out = (1.0 - a) * x1 + a * x2
    elif method == "authors":
        out = _authors_slerp(x1, x2, a)
    else:
        out = _true_slerp(x1, x2, a)
    return out.astype(out_dtype)


def _safe_norm(x, tiny_sq=_TINY_SQ):
    """|x| over the last axis (keepdims) and whether it is nonzero; finite gradient at 0."""
    sq = jnp.sum(x * x, axis=-1, keepdims=True)
    nonzero = sq > tiny_sq
    n = jnp.sqrt(jnp.where(nonzero, sq, 1.0))
    return jnp.where(nonzero, n, 0.0), n, nonzero  # norm, safe divisor, mask


def _true_slerp(x1, x2, a):
    n1, d1, ok1 = _safe_norm(x1)
    n2, d2, ok2 = _safe_norm(x2)
    u1 = jnp.where(ok1, x1 / d1, 0.0)
    u2 = jnp.where(ok2, x2 / d2, 0.0)
    cos = jnp.clip(jnp.sum(u1 * u2, axis=-1, keepdims=True), -1.0, 1.0)
    fallback = (jnp.abs(cos) > DOT_THRESHOLD) | ~ok1 | ~ok2
    # Spherical branch, evaluated at a harmless angle where it is not used (finite gradients).
    theta = jnp.arccos(jnp.where(fallback, 0.0, cos))
    sin_theta = jnp.sin(theta)
    dir_s = (jnp.sin((1.0 - a) * theta) * u1 + jnp.sin(a * theta) * u2) / sin_theta
    # Nearly (anti)parallel or zero tokens: lerp of the directions, renormalized where it can be.
    lerp = (1.0 - a) * u1 + a * u2
    _, dl, okl = _safe_norm(lerp, tiny_sq=1e-12)
    dir_l = jnp.where(okl, lerp / dl, lerp)
    direction = jnp.where(fallback, dir_l, dir_s)
    return ((1.0 - a) * n1 + a * n2) * direction


def _authors_slerp(x1, x2, a):
    dot = jnp.sum(x1 * x2, axis=-1, keepdims=True)  # raw, unnormalized
    fallback = ~(jnp.abs(dot) <= DOT_THRESHOLD)  # also where arccos(dot) is NaN (|dot| > 1, NaN input)
    theta_0 = jnp.arccos(jnp.where(fallback, 0.0, dot))
    sin_theta_0 = jnp.sin(theta_0)
    theta_t = theta_0 * a
    s0 = jnp.sin(theta_0 - theta_t) / sin_theta_0
    s1 = jnp.sin(theta_t) / sin_theta_0
    return jnp.where(fallback, (1.0 - a) * x1 + a * x2, s0 * x1 + s1 * x2)


def scat_many(cs: jax.Array, betas) -> jax.Array:
    """SCat of N token sets: cs (..., N, L, D), betas (..., N) -> (..., N L, D) = concat_i(b_i c_i)
    (for N = 2 the same numbers as `scat(c_1, c_2, b_1, b_2)`)."""
    checks.array("cs", cs, min_ndim=3, floating=True)
    betas = jnp.asarray(betas)
    if betas.shape[-1:] != cs.shape[-3:-2]:
        raise ValueError(f"betas must have one weight per token set ({cs.shape[-3]}), got shape {tuple(betas.shape)}")
    x = betas[..., None, None] * cs
    return x.reshape(x.shape[:-3] + (x.shape[-3] * x.shape[-2], x.shape[-1]))


def spherical_mean(cs: jax.Array, weights, *, method: str = "slerp", iterations: int = KARCHER_ITERATIONS) -> jax.Array:
    """Token-by-token weighted mean of N token sets cs (N, ..., D) with weights (N,) (on the
    simplex) -> (..., D) in the inputs' dtype (math in float32).

    method "slerp": the spherical mean of the module doc (N = 2: `slerp`); "lerp": sum_i w_i c_i
    (N = 2: `slerp(..., method="lerp")`); "authors": the authors' two-object slerp, N = 2 only.
    """
    checks.choice("method", method, METHODS)
    checks.array("cs", cs, min_ndim=2, floating=True)
    w = jnp.asarray(weights, jnp.float32)
    n = cs.shape[0]
    if w.shape != (n,):
        raise ValueError(f"weights must have shape ({n},), one per token set, got {tuple(w.shape)}")
    if n == 2:
        return slerp(cs[0], cs[1], w[1], method=method)
    if method == "authors":
        raise ValueError(f"the authors' slerp mixes two token sets, got {n}; use method 'slerp' or 'lerp'")
    x = jnp.asarray(cs, jnp.float32)
    wb = w.reshape((n,) + (1,) * (x.ndim - 1))
    if method == "lerp":
        return jnp.sum(wb * x, axis=0).astype(cs.dtype)
    norms, safe, ok = _safe_norm(x)
    u = jnp.where(ok, x / safe, 0.0)
    direction = _karcher(u, wb, iterations)
    return (jnp.sum(wb * norms, axis=0) * direction).astype(cs.dtype)


def _karcher(u, wb, iterations: int):
    """Weighted Karcher mean on the unit sphere of unit vectors u (N, ..., D) (zero rows carry no
    direction), weights wb (N, 1, ..., 1): m <- exp_m(sum_i w_i log_m(u_i)) from the normalized
    weighted average. Angles by atan2 (accurate for small ones); finite everywhere."""
    m0 = jnp.sum(wb * u, axis=0)
    _, d0, ok0 = _safe_norm(m0, tiny_sq=1e-12)
    m0 = jnp.where(ok0, m0 / d0, u[jnp.argmax(wb.reshape(-1))])  # opposite tokens cancel: start at the heaviest

    def step(_, m):
        cos = jnp.sum(u * m, axis=-1, keepdims=True)
        perp = u - cos * m
        sin, dp, okp = _safe_norm(perp, tiny_sq=1e-30)
        theta = jnp.arctan2(sin, cos)
        v = jnp.sum(wb * jnp.where(okp, theta * perp / dp, 0.0), axis=0)  # sum_i w_i log_m(u_i)
        t, dt, okt = _safe_norm(v, tiny_sq=1e-30)
        moved = jnp.cos(t) * m + jnp.sin(t) * v / dt
        _, dm, _ = _safe_norm(moved, tiny_sq=1e-30)
        return jnp.where(okt, moved / dm, m)

    return jax.lax.fori_loop(0, iterations, step, m0)

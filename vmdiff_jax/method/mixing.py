"""Mixing two image-condition contexts c (..., L, D) (Redux tokens): SCat and SInp of VMDiff.

scat: concat(b1*c1, b2*c2) along the token axis (BNoise's context).
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

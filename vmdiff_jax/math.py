"""Pure numerical pieces shared by the models: attention, rotary embeddings, timestep embeddings."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np


def attention(q, k, v, *, mask=None, is_causal: bool = False, implementation: str | None = None):
    """Scaled dot-product attention. q (B, Lq, H, D), k/v (B, Lk, H, D) -> (B, Lq, H*D).

    mask: optional boolean, broadcastable to (B, H, Lq, Lk), True = attend.
    implementation: None (XLA) or 'cudnn' on GPUs (jax.nn.dot_product_attention).
    """
    b, lq, h, d = q.shape
    out = jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=is_causal, implementation=implementation)
    return out.reshape(b, lq, h * d)


def rope(pos, dim: int, theta: int = 10_000):
    """Rotary angles of one position axis as 2x2 rotations (BFL `rope`), in float32.

    pos (..., N) float -> (..., N, dim/2, 2, 2) with [[cos, -sin], [sin, cos]] of pos * omega_j,
    omega_j = theta^(-2j/dim). The frequencies are computed in float64 on the host (static),
    the angles in float32 (positions are dynamic inputs).
    """
    if dim % 2:
        raise ValueError(f"rope dim must be even, got {dim}")
    omega = 1.0 / (float(theta) ** (np.arange(0, dim, 2, dtype=np.float64) / dim))
    angles = pos.astype(jnp.float32)[..., None] * jnp.asarray(omega, jnp.float32)
    cos, sin = jnp.cos(angles), jnp.sin(angles)
    out = jnp.stack([cos, -sin, sin, cos], axis=-1)
    return out.reshape(*angles.shape, 2, 2)


def apply_rope(x, freqs):
    """Rotate consecutive channel pairs of x (B, L, H, D) by freqs (B, L, D/2, 2, 2) -> x's shape and dtype.

    Computed in float32 (BFL `apply_rope`, diffusers `apply_rotary_emb` with interleaved pairs).
    """
    x_ = x.astype(jnp.float32).reshape(*x.shape[:-1], -1, 1, 2)  # (B, L, H, D/2, 1, 2)
    f = freqs[:, :, None]  # (B, L, 1, D/2, 2, 2)
    out = f[..., 0] * x_[..., 0] + f[..., 1] * x_[..., 1]  # (B, L, H, D/2, 2)
    return out.reshape(x.shape).astype(x.dtype)


def timestep_embedding(t, dim: int, max_period: int = 10_000, time_factor: float = 1000.0):
    """Sinusoidal embedding of t (B,) -> (B, dim) float32, [cos | sin] of time_factor * t * freqs.

    freqs_j = max_period^(-j / (dim/2)) (BFL `timestep_embedding`; diffusers `Timesteps` with
    flip_sin_to_cos=True, downscale_freq_shift=0 applied to 1000 * t).
    """
    half = dim // 2
    # Static frequencies on the host, the exponent rounded to float32 exactly as both
    # references compute it: arguments reach 1000 rad, so one ulp of a frequency moves them
    # by ~6e-5, which the trained time_in weights amplify.
    exponent = (np.float32(-math.log(max_period)) * np.arange(half, dtype=np.float32)) / np.float32(half)
    freqs = np.exp(exponent.astype(np.float64)).astype(np.float32)
    args = (time_factor * t.astype(jnp.float32))[:, None] * jnp.asarray(freqs)[None]
    emb = jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)
    if dim % 2:
        emb = jnp.pad(emb, ((0, 0), (0, 1)))
    return emb

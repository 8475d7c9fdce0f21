"""FLUX rectified-flow sampling: the shifted sigma schedule, latent packing, position ids,
and the Euler denoise / inversion loops (pure, `jax.lax.scan`, usable under jit and vmap).

Conventions: latents are NHWC `(B, H, W, C)` (H, W: latent size, 1/8 of the image);
packed latents are `(B, H*W/4, 4C)`, identical to diffusers' FluxPipeline packing of the
NCHW tensor. The model sees time as sigma in [0, 1] (diffusers passes `timestep / 1000`).
"""

from __future__ import annotations

import math
from typing import Callable

import einops
import jax
import jax.numpy as jnp
import numpy as np

from vmdiff_jax.nn import checks

# FluxPipeline / FlowMatchEulerDiscreteScheduler constants (pinned: they drift silently).
BASE_SEQ_LEN = 256
MAX_SEQ_LEN = 4096
BASE_SHIFT = 0.5
MAX_SHIFT = 1.15

VelocityFn = Callable[..., jax.Array]


# ----------------------------------------------------------------------------- schedule


def calculate_shift(
    image_seq_len: int,
    base_seq_len: int = BASE_SEQ_LEN,
    max_seq_len: int = MAX_SEQ_LEN,
    base_shift: float = BASE_SHIFT,
    max_shift: float = MAX_SHIFT,
) -> float:
    """mu of the exponential time shift: linear in the packed image sequence length."""
    m = (max_shift - base_shift) / (max_seq_len - base_seq_len)
    b = base_shift - m * base_seq_len
    return image_seq_len * m + b


def flux_sigmas(
    num_steps: int,
    image_seq_len: int,
    base_shift: float = BASE_SHIFT,
    max_shift: float = MAX_SHIFT,
    base_seq_len: int = BASE_SEQ_LEN,
    max_seq_len: int = MAX_SEQ_LEN,
) -> np.ndarray:
    """FLUX sigmas, (num_steps + 1,) float32, from 1 down to a final 0.

    As FluxPipeline sets FlowMatchEulerDiscreteScheduler up: base sigmas
    linspace(1, 1/num_steps, num_steps) (cast to float32), shifted by
    sigma' = e^mu / (e^mu + 1/sigma - 1) with mu = calculate_shift(image_seq_len), then 0 appended.
    Host-side numpy (the schedule is static).
    """
    checks.integer("num_steps", num_steps, 1)
    checks.integer("image_seq_len", image_seq_len, 1)
    for name, v in (("base_shift", base_shift), ("max_shift", max_shift)):
        checks.number(name, v)
    checks.integer("base_seq_len", base_seq_len, 1)
    checks.integer("max_seq_len", max_seq_len, base_seq_len + 1)
    mu = calculate_shift(image_seq_len, base_seq_len, max_seq_len, base_shift, max_shift)
    base = np.linspace(1.0, 1.0 / num_steps, num_steps).astype(np.float32).astype(np.float64)
    shifted = math.exp(mu) / (math.exp(mu) + (1.0 / base - 1.0))
    return np.concatenate([shifted, [0.0]]).astype(np.float32)


# ------------------------------------------------------------------------------ packing


def pack(latents: jax.Array) -> jax.Array:
    """(B, H, W, C) -> (B, H/2 * W/2, 4C): 2x2 patches, channel order (c, dy, dx) as diffusers and BFL."""
    return einops.rearrange(latents, "b (h dy) (w dx) c -> b (h w) (c dy dx)", dy=2, dx=2)


def unpack(packed: jax.Array, height: int, width: int) -> jax.Array:
    """(B, H/2 * W/2, 4C) -> (B, H, W, C); height, width: the latent size (inverse of `pack`)."""
    return einops.rearrange(packed, "b (h w) (c dy dx) -> b (h dy) (w dx) c", h=height // 2, w=width // 2, dy=2, dx=2)


def image_ids(height: int, width: int) -> np.ndarray:
    """Position ids of the packed tokens of an (height, width) latent: (H/2 * W/2, 3) float32
    rows (0, row, col), row-major (diffusers' _prepare_latent_image_ids(height // 2, width // 2))."""
    h, w = height // 2, width // 2
    ids = np.zeros((h, w, 3), np.float32)
    ids[..., 1] = np.arange(h, dtype=np.float32)[:, None]
    ids[..., 2] = np.arange(w, dtype=np.float32)[None, :]
    return ids.reshape(h * w, 3)


def prepare_ids(batch: int, height: int, width: int, context_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Batched ids for the transformer: img_ids (B, H/2 * W/2, 3), txt_ids (B, context_len, 3)."""
    img = np.broadcast_to(image_ids(height, width), (batch, (height // 2) * (width // 2), 3))
    txt = np.zeros((batch, context_len, 3), np.float32)
    return np.ascontiguousarray(img), txt


# ------------------------------------------------------------------------- Euler loops


def _step_sigmas(sigmas, start: int, stop: int | None):
    """(s[start:stop], s[start+1:stop+1]) in float32 after checking 0 <= start <= stop <= len - 1 (static ints)."""
    checks.array("sigmas", sigmas if hasattr(sigmas, "shape") else np.asarray(sigmas), ndim=1)
    sigmas = jnp.asarray(sigmas, jnp.float32)
    n = sigmas.shape[0] - 1
    start = checks.integer("start", start)
    stop = checks.integer("stop", n if stop is None else stop)
    if not 0 <= start <= stop <= n:
        raise ValueError(f"need 0 <= start <= stop <= {n} (len(sigmas) - 1), got start={start}, stop={stop}")
    return sigmas[start:stop], sigmas[start + 1 : stop + 1]


def denoise(
    velocity_fn: VelocityFn,
    x: jax.Array,
    sigmas,
    start: int = 0,
    stop: int | None = None,
    *,
    unroll: int = 1,
    **kw,
) -> jax.Array:
    """Euler steps i = start .. stop-1: x <- x + (s[i+1] - s[i]) * v(x, s[i]).

    velocity_fn(x, t, **kw) with t a float32 scalar in [0, 1]; x is carried in float32 (v is
    cast to float32, as diffusers' scheduler step upcasts). start/stop are static ints
    (stop=None: to the end); extra keywords go to every velocity_fn call; unroll: lax.scan's.
    Returns float32 x of the input shape.
    """
    _check_loop(velocity_fn, x, unroll)
    t, t_next = _step_sigmas(sigmas, start, stop)
    return _euler_scan(velocity_fn, x, t, t_next - t, unroll, kw)


def invert(
    velocity_fn: VelocityFn,
    x: jax.Array,
    sigmas,
    start: int = 0,
    stop: int | None = None,
    *,
    unroll: int = 1,
    **kw,
) -> jax.Array:
    """Inversion k = stop-1 down to start: x <- x + (s[k] - s[k+1]) * v(x, s[k]).

    Takes x from sigma s[stop] back to s[start]; same conventions as `denoise`.
    """
    _check_loop(velocity_fn, x, unroll)
    t, t_next = _step_sigmas(sigmas, start, stop)
    return _euler_scan(velocity_fn, x, t[::-1], (t - t_next)[::-1], unroll, kw)


def _check_loop(velocity_fn, x, unroll) -> None:
    checks.function("velocity_fn", velocity_fn)
    checks.array("x", x, min_ndim=1, floating=True)
    checks.integer("unroll", unroll, 1)


def _euler_scan(velocity_fn, x, ts, dts, unroll, kw):
    """x <- x + dts[j] * v(x, ts[j]) for j in order, in float32, as one lax.scan."""

    def step(x, inp):
        t, dt = inp
        v = velocity_fn(x, t, **kw).astype(jnp.float32)
        return x + dt * v, None

    x, _ = jax.lax.scan(step, jnp.asarray(x, jnp.float32), (ts, dts), unroll=unroll)
    return x


def flux_velocity(model, txt, txt_ids, img_ids, y, guidance=None) -> VelocityFn:
    """velocity_fn(x, t) for a FLUX model `model(img, img_ids, txt, txt_ids, timesteps, y, guidance)`.

    x (B, N, 4C) packed latents; txt (B, L, D) context; txt_ids (B, L, 3); img_ids (B, N, 3);
    y (B, 768) pooled vector; guidance: raw value (scalar or (B,)), or None for models without
    guidance embedding. t is broadcast to timesteps (B,) float32.
    """

    def velocity_fn(x, t):
        b = x.shape[0]
        timesteps = jnp.full((b,), t, jnp.float32)
        g = None if guidance is None else jnp.broadcast_to(jnp.asarray(guidance, jnp.float32), (b,))
        return model(x, img_ids, txt, txt_ids, timesteps, y, g)

    return velocity_fn

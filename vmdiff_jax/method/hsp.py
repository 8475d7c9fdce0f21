"""The Hybrid Sampling Process: BNoise (SCat context, denoise then invert) and MDeNoise
(slerp context, denoise, decode), as pure functions of the models, per candidate and batched
over candidates with `jax.vmap` (every candidate row brings its own eps, token sets and y, so
a batch may hold candidates of several pairs).

Shapes: eps (N, C) packed noise of one image (N = (h/2)^2 tokens of an h x h latent, C =
FLUX's in_channels = 4 x the VAE's latent channels); c1, c2 (L, D) Redux tokens, or cs (K, L, D)
for K objects (`bnoise_many` / `mdenoise_many`: SCat of K sets, K L context tokens; the K-way
spherical mean); y (Dy,) pooled CLIP-L vector of the guidance prompt. The latent size, the sigma
schedule's shift and the decoded size follow from N and from the VAE's own config (downsample
factor, scale, shift).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from vmdiff_jax.method.mixing import scat_many, spherical_mean
from vmdiff_jax.method.sampling import denoise, flux_sigmas, flux_velocity, image_ids, invert, unpack
from vmdiff_jax.nn.vae import unscale_latents

DEN_FRACTION = 11 / 20  # BNoise denoises steps i = 0..10 of 20 (t_den = 652 at 512 x 512), then inverts


@dataclasses.dataclass(frozen=True)
class HSPConfig:
    """Hyperparameters of BNoise / MDeNoise (REFERENCE.md); size: the working image side in pixels."""

    num_steps: int = 20
    size: int = 512
    den_guidance: float = 5.0
    inv_guidance: float = 0.0
    gen_guidance: float = 4.0
    slerp_method: str = "slerp"

    def sigmas(self, seq_len: int) -> np.ndarray:
        """The FLUX schedule of num_steps steps for seq_len packed tokens (its shift depends on them)."""
        return flux_sigmas(self.num_steps, seq_len)

    @property
    def den_stop(self) -> int:
        """Guided denoising steps of BNoise: i = 0 .. den_stop-1, i.e. 11 of 20 (t = 1000 .. 652.5 at
        512 x 512, "t_den = 652"); the same fraction of the trajectory for other step counts."""
        return max(1, min(self.num_steps - 1, round(self.num_steps * DEN_FRACTION)))

    @property
    def bnoise_calls(self) -> int:
        """FLUX calls of one BNoise candidate: den_stop denoising + den_stop inversion steps (22)."""
        return 2 * self.den_stop

    @property
    def mdenoise_calls(self) -> int:
        """FLUX calls of one MDeNoise candidate: num_steps (20)."""
        return self.num_steps


def latent_side(seq_len: int) -> int:
    """Side h of the square latent whose packed 2 x 2 patches are seq_len tokens."""
    half = math.isqrt(seq_len)
    if half * half != seq_len:
        raise ValueError(f"{seq_len} packed tokens are not a square latent")
    return 2 * half


def seq_len(size: int, downsample: int) -> int:
    """Packed tokens of a size x size image for a VAE downsampling `downsample` times per side."""
    if size % (2 * downsample):
        raise ValueError(f"size {size} is not a multiple of {2 * downsample}")
    return (size // downsample // 2) ** 2


def _velocity(flux, ctx, y, guidance, h: int):
    """velocity_fn(x (1, N, C), t) of FLUX with context ctx (L, D), zero txt ids, pooled y, h x h latent."""
    img_ids = jnp.asarray(image_ids(h, h))[None]
    txt_ids = jnp.zeros((1, ctx.shape[0], 3), jnp.float32)
    return flux_velocity(flux, ctx[None], txt_ids, img_ids, y[None], guidance)


def bnoise(flux, cfg: HSPConfig, eps, c1, c2, b1, b2, y):
    """eps_b (N, C): guided denoising i < den_stop at den_guidance with SCat(c1, c2; b1, b2),
    then inversion k = den_stop-1 .. 0 at inv_guidance. 2 * den_stop model calls."""
    return bnoise_many(flux, cfg, eps, jnp.stack([c1, c2]), jnp.stack([jnp.asarray(b1, jnp.float32),
                                                                         jnp.asarray(b2, jnp.float32)]), y)


def bnoise_many(flux, cfg: HSPConfig, eps, cs, betas, y):
    """BNoise of K objects: eps_b (N, C) from eps (N, C) with SCat of cs (K, L, D) under betas (K,)
    (K L context tokens): guided denoising i < den_stop at den_guidance, then inversion
    k = den_stop-1 .. 0 at inv_guidance. 2 * den_stop model calls."""
    n = eps.shape[0]
    ctx = scat_many(cs, betas).astype(cs.dtype)
    sig = cfg.sigmas(n)
    h = latent_side(n)
    x = denoise(_velocity(flux, ctx, y, cfg.den_guidance, h), eps[None], sig, 0, cfg.den_stop)
    x = invert(_velocity(flux, ctx, y, cfg.inv_guidance, h), x, sig, 0, cfg.den_stop)
    return x[0]


def mdenoise_latents(flux, cfg: HSPConfig, eps_b, cs, weights, y):
    """Packed clean latents (N, C): num_steps Euler steps at gen_guidance from eps_b with the
    spherical mean of cs (K, L, D) under weights (K,) (K = 2: slerp(c1, c2, w2))."""
    n = eps_b.shape[0]
    ctx = spherical_mean(cs, weights, method=cfg.slerp_method)
    x = denoise(_velocity(flux, ctx, y, cfg.gen_guidance, latent_side(n)), eps_b[None], cfg.sigmas(n), 0, cfg.num_steps)
    return x[0]


def decode(vae, packed):
    """Packed latents (N, C) -> image (h f, h f, 3) in [0, 1]: unpack to (h, h, C / 4), z / scale + shift
    with the VAE's own config (f = its downsample factor), VAE decode, (x + 1) / 2 clipped."""
    h = latent_side(packed.shape[0])
    z = unscale_latents(unpack(packed[None], h, h), vae.cfg)
    img = vae.decode(z)[0]
    return jnp.clip((img.astype(jnp.float32) + 1.0) / 2.0, 0.0, 1.0)


def mdenoise(flux, vae, cfg: HSPConfig, eps_b, c1, c2, alpha, y):
    """MDeNoise: image (size, size, 3) in [0, 1] from eps_b (N, C) with the slerp(c1, c2, alpha) context
    (num_steps model calls at gen_guidance), unpacked, unscaled and decoded."""
    alpha = jnp.asarray(alpha, jnp.float32)
    return mdenoise_many(flux, vae, cfg, eps_b, jnp.stack([c1, c2]), jnp.stack([1.0 - alpha, alpha]), y)


def mdenoise_many(flux, vae, cfg: HSPConfig, eps_b, cs, weights, y):
    """MDeNoise of K objects: image (size, size, 3) in [0, 1] from eps_b (N, C) with the spherical
    mean of cs (K, L, D) under weights (K,), decoded."""
    return decode(vae, mdenoise_latents(flux, cfg, eps_b, cs, weights, y))


def bnoise_candidates(flux, cfg: HSPConfig, eps, cs, betas, y):
    """BNoise of n candidates in one batch, each row its own: eps (n, N, C), cs (n, K, L, D),
    betas (n, K), y (n, Dy) -> eps_b (n, N, C)."""
    return jax.vmap(lambda e, c, b, v: bnoise_many(flux, cfg, e, c, b, v))(eps, cs, betas, y)


def mdenoise_candidates(flux, vae, cfg: HSPConfig, eps_b, cs, weights, y):
    """MDeNoise + decode of n candidates, each row its own: eps_b (n, N, C), cs (n, K, L, D),
    weights (n, K) (pairs: rows (1 - alpha, alpha)), y (n, Dy) -> images (n, H, W, 3) in [0, 1]."""
    return jax.vmap(lambda e, c, w, v: mdenoise_many(flux, vae, cfg, e, c, w, v))(eps_b, cs, weights, y)

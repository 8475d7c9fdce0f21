"""The Hybrid Sampling Process: BNoise (SCat context, denoise then invert) and MDeNoise
(slerp context, denoise, decode), as pure functions of the models, batched over candidates
with `jax.vmap` so that one compiled call renders a whole round of the search.

Shapes: eps (N, 64) packed noise of one image (N = (size/16)^2); c1, c2 (L, D) Redux
tokens; y (Dy,) pooled CLIP-L vector of the guidance prompt.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from vmdiff_jax.mixing import scat, slerp
from vmdiff_jax.sampling import denoise, flux_sigmas, flux_velocity, image_ids, invert, unpack
from vmdiff_jax.vae import unscale_latents

DEN_FRACTION = 11 / 20  # BNoise denoises steps i = 0..10 of 20 (t_den = 652 at 512 x 512), then inverts


@dataclasses.dataclass(frozen=True)
class HSPConfig:
    """Hyperparameters of BNoise / MDeNoise (REFERENCE.md)."""

    num_steps: int = 20
    size: int = 512
    den_guidance: float = 5.0
    inv_guidance: float = 0.0
    gen_guidance: float = 4.0
    slerp_method: str = "slerp"
    vae_factor: int = 8

    @property
    def latent_hw(self) -> int:
        return self.size // self.vae_factor

    @property
    def seq_len(self) -> int:
        return (self.latent_hw // 2) ** 2

    def sigmas(self) -> np.ndarray:
        return flux_sigmas(self.num_steps, self.seq_len)

    @property
    def den_stop(self) -> int:
        """Guided denoising steps of BNoise: i = 0 .. den_stop-1, i.e. 11 of 20 (t = 1000 .. 652.5 at
        512 x 512, "t_den = 652"); the same fraction of the trajectory for other step counts."""
        return max(1, min(self.num_steps - 1, round(self.num_steps * DEN_FRACTION)))


def _velocity(flux, cfg: HSPConfig, ctx, y, guidance):
    """velocity_fn(x (1, N, C), t) of FLUX with context ctx (L, D), zero txt ids, pooled y."""
    h = cfg.latent_hw
    img_ids = jnp.asarray(image_ids(h, h))[None]
    txt_ids = jnp.zeros((1, ctx.shape[0], 3), jnp.float32)
    return flux_velocity(flux, ctx[None], txt_ids, img_ids, y[None], guidance)


def bnoise(flux, cfg: HSPConfig, eps, c1, c2, b1, b2, y):
    """eps_b (N, 64): guided denoising i < den_stop at den_guidance with SCat(c1, c2; b1, b2),
    then inversion k = den_stop-1 .. 0 at inv_guidance. 2 * den_stop model calls."""
    ctx = scat(c1, c2, b1, b2).astype(c1.dtype)
    sig = cfg.sigmas()
    x = denoise(_velocity(flux, cfg, ctx, y, cfg.den_guidance), eps[None], sig, 0, cfg.den_stop)
    x = invert(_velocity(flux, cfg, ctx, y, cfg.inv_guidance), x, sig, 0, cfg.den_stop)
    return x[0]


def mdenoise_latents(flux, cfg: HSPConfig, eps_b, c1, c2, alpha, y):
    """Packed clean latents (N, 64): num_steps Euler steps at gen_guidance from eps_b with slerp(c1, c2, alpha)."""
    ctx = slerp(c1, c2, alpha, method=cfg.slerp_method)
    x = denoise(_velocity(flux, cfg, ctx, y, cfg.gen_guidance), eps_b[None], cfg.sigmas(), 0, cfg.num_steps)
    return x[0]


def decode(vae, cfg: HSPConfig, packed):
    """Packed latents (N, 64) -> image (size, size, 3) in [0, 1]: unpack, z / 0.3611 + 0.1159, VAE decode."""
    h = cfg.latent_hw
    z = unscale_latents(unpack(packed[None], h, h))
    img = vae.decode(z)[0]
    return jnp.clip((img.astype(jnp.float32) + 1.0) / 2.0, 0.0, 1.0)


def mdenoise(flux, vae, cfg: HSPConfig, eps_b, c1, c2, alpha, y):
    """MDeNoise: image (size, size, 3) in [0, 1] from eps_b (N, 64) with the slerp(c1, c2, alpha) context
    (num_steps model calls at gen_guidance), unpacked, unscaled and decoded."""
    return decode(vae, cfg, mdenoise_latents(flux, cfg, eps_b, c1, c2, alpha, y))


def blend_candidates(flux, cfg: HSPConfig, eps, c1, c2, betas, y):
    """BNoise for n beta pairs in one batch: betas (n, 2) -> eps_b (n, N, 64)."""
    one = functools.partial(bnoise, flux, cfg, eps)
    return jax.vmap(lambda b: one(c1, c2, b[0], b[1], y))(betas)


def mix_candidates(flux, vae, cfg: HSPConfig, eps_b, c1, c2, alphas, y):
    """MDeNoise + decode for n candidates: eps_b (n, N, 64) or (N, 64) shared, alphas (n,) -> images (n, H, W, 3) in [0, 1]."""

    in_axes = (0, 0) if eps_b.ndim == 3 else (None, 0)
    return jax.vmap(lambda e, a: mdenoise(flux, vae, cfg, e, c1, c2, a, y), in_axes=in_axes)(eps_b, alphas)

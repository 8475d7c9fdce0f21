"""The FLUX autoencoder (KL-VAE, 16 latent channels, 8x downsampling) in Flax NNX, NHWC.

The module tree is named like Black Forest Labs' `ae.safetensors` (`encoder.down.1.block.0.conv1`,
`decoder.mid.attn_1.q`, `decoder.up.3.upsample.conv` ...), so loading a BFL file is a transpose
rule per tensor (see `checkpoints/vae.py`). Numerics follow diffusers `AutoencoderKL` with
`use_quant_conv=False, use_post_quant_conv=False`: GroupNorm eps 1e-6 with float32 statistics,
SiLU, single-head mid-block attention with a residual, downsampling by zero-pad (0, 1, 0, 1)
then a stride-2 3x3 conv, upsampling by nearest x2 then a 3x3 conv.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from vmdiff_jax.nn import math as vmath


@dataclasses.dataclass(frozen=True)
class VAEConfig:
    """Hyperparameters of the autoencoder (BFL `AutoEncoderParams` names)."""

    in_channels: int = 3
    out_channels: int = 3
    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    z_channels: int = 16
    norm_groups: int = 32
    scale_factor: float = 0.3611
    shift_factor: float = 0.1159

    @classmethod
    def flux(cls) -> "VAEConfig":
        """The FLUX.1 VAE: 128 * (1, 2, 4, 4) channels, 2 res blocks, 16 latent channels."""
        return cls()

    @classmethod
    def tiny(cls) -> "VAEConfig":
        """A small VAE for tests and demos: 16 * (1, 2) channels, 2x downsampling, 16 latents."""
        return cls(ch=16, ch_mult=(1, 2), num_res_blocks=1, norm_groups=4)

    @property
    def downsample_factor(self) -> int:
        """Pixels per latent along each side (8 for FLUX)."""
        return 2 ** (len(self.ch_mult) - 1)


def unscale_latents(z, cfg: VAEConfig):
    """The denoiser's latents -> raw VAE latents for `decode`: z / cfg.scale_factor + cfg.shift_factor
    (the inverse of the encoder side's (z - shift) * scale)."""
    return z / cfg.scale_factor + cfg.shift_factor


class GroupNorm(nnx.Module):
    """GroupNorm over (H, W, C/G) of NHWC inputs, statistics and affine in float32 (torch eps 1e-6)."""

    def __init__(self, num_channels: int, num_groups: int, *, eps: float = 1e-6, dtype=jnp.float32,
                 param_dtype=jnp.float32, rngs: nnx.Rngs):
        if num_channels % num_groups:
            raise ValueError(f"GroupNorm: {num_channels} channels are not divisible into {num_groups} groups")
        self.num_groups = num_groups
        self.eps = eps
        self.dtype = dtype
        self.scale = nnx.Param(jnp.ones((num_channels,), param_dtype))
        self.bias = nnx.Param(jnp.zeros((num_channels,), param_dtype))

    def __call__(self, x):
        b, h, w, c = x.shape
        y = x.astype(jnp.float32).reshape(b, h, w, self.num_groups, c // self.num_groups)
        mean = jnp.mean(y, axis=(1, 2, 4), keepdims=True)
        var = jnp.mean(jnp.square(y - mean), axis=(1, 2, 4), keepdims=True)
        y = ((y - mean) * jax.lax.rsqrt(var + self.eps)).reshape(b, h, w, c)
        y = y * self.scale[...].astype(jnp.float32) + self.bias[...].astype(jnp.float32)
        return y.astype(self.dtype)


def _conv(cin: int, cout: int, k: int, *, dtype, param_dtype, rngs, stride: int = 1, padding=None) -> nnx.Conv:
    if padding is None:
        padding = ((k // 2, k // 2), (k // 2, k // 2))
    return nnx.Conv(cin, cout, kernel_size=(k, k), strides=(stride, stride), padding=padding,
                    dtype=dtype, param_dtype=param_dtype, rngs=rngs)


class ResnetBlock(nnx.Module):
    """x + conv2(silu(norm2(conv1(silu(norm1(x)))))), with a 1x1 `nin_shortcut` when widths differ."""

    def __init__(self, cin: int, cout: int, groups: int, *, dtype, param_dtype, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.norm1 = GroupNorm(cin, groups, **kw)
        self.conv1 = _conv(cin, cout, 3, **kw)
        self.norm2 = GroupNorm(cout, groups, **kw)
        self.conv2 = _conv(cout, cout, 3, **kw)
        self.nin_shortcut = _conv(cin, cout, 1, **kw) if cin != cout else None

    def __call__(self, x):
        h = self.conv1(nnx.silu(self.norm1(x)))
        h = self.conv2(nnx.silu(self.norm2(h)))
        if self.nin_shortcut is not None:
            x = self.nin_shortcut(x)
        return x + h


class AttnBlock(nnx.Module):
    """x + proj_out(attention(q, k, v)) over the H*W positions, one head of width C."""

    def __init__(self, c: int, groups: int, *, dtype, param_dtype, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.norm = GroupNorm(c, groups, **kw)
        self.q = nnx.Linear(c, c, **kw)
        self.k = nnx.Linear(c, c, **kw)
        self.v = nnx.Linear(c, c, **kw)
        self.proj_out = nnx.Linear(c, c, **kw)

    def __call__(self, x):
        b, h, w, c = x.shape
        t = self.norm(x).reshape(b, h * w, 1, c)
        # on a TPU XLA's own attention, not 'auto''s splash: the Mosaic kernel at this one head of
        # width 512 costs the TPU compiler ~80 s, nearly all of the decode's (BENCHMARKS.md, "VAE
        # decode compile"); elsewhere 'auto' as before (CPU: chunked; GPU: xla at this width)
        impl = "xla" if vmath.target_platform() == "tpu" else "auto"
        out = vmath.attention(self.q(t), self.k(t), self.v(t), implementation=impl)
        return x + self.proj_out(out).reshape(b, h, w, c)


class Downsample(nnx.Module):
    """Zero-pad right/bottom by one, then a stride-2 3x3 conv: (B, H, W, C) -> (B, H/2, W/2, C)."""

    def __init__(self, c: int, *, dtype, param_dtype, rngs: nnx.Rngs):
        self.conv = _conv(c, c, 3, stride=2, padding=((0, 1), (0, 1)), dtype=dtype, param_dtype=param_dtype,
                          rngs=rngs)

    def __call__(self, x):
        return self.conv(x)


class Upsample(nnx.Module):
    """Nearest-neighbour x2, then a 3x3 conv: (B, H, W, C) -> (B, 2H, 2W, C)."""

    def __init__(self, c: int, *, dtype, param_dtype, rngs: nnx.Rngs):
        self.conv = _conv(c, c, 3, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

    def __call__(self, x):
        b, h, w, c = x.shape
        x = jnp.broadcast_to(x[:, :, None, :, None, :], (b, h, 2, w, 2, c)).reshape(b, 2 * h, 2 * w, c)
        return self.conv(x)


class MidBlock(nnx.Module):
    """block_1 -> attn_1 -> block_2 at the lowest resolution."""

    def __init__(self, c: int, groups: int, *, dtype, param_dtype, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.block_1 = ResnetBlock(c, c, groups, **kw)
        self.attn_1 = AttnBlock(c, groups, **kw)
        self.block_2 = ResnetBlock(c, c, groups, **kw)

    def __call__(self, x):
        return self.block_2(self.attn_1(self.block_1(x)))


class Level(nnx.Module):
    """One resolution level: `block` (resnets) then an optional `downsample` / `upsample`."""

    def __init__(self, blocks: list[ResnetBlock], *, downsample: Downsample | None = None,
                 upsample: Upsample | None = None):
        self.block = nnx.List(blocks)
        self.downsample = downsample
        self.upsample = upsample

    def __call__(self, x):
        for blk in self.block:
            x = blk(x)
        if self.downsample is not None:
            x = self.downsample(x)
        if self.upsample is not None:
            x = self.upsample(x)
        return x


class Encoder(nnx.Module):
    """Images (B, H, W, in_channels) -> moments (B, H/f, W/f, 2 * z_channels) (mean, logvar)."""

    def __init__(self, cfg: VAEConfig, *, dtype, param_dtype, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        g = cfg.norm_groups
        widths = [cfg.ch * m for m in cfg.ch_mult]
        self.conv_in = _conv(cfg.in_channels, cfg.ch, 3, **kw)
        levels, cin = [], cfg.ch
        for i, cout in enumerate(widths):
            blocks = []
            for _ in range(cfg.num_res_blocks):
                blocks.append(ResnetBlock(cin, cout, g, **kw))
                cin = cout
            down = Downsample(cout, **kw) if i != len(widths) - 1 else None
            levels.append(Level(blocks, downsample=down))
        self.down = nnx.List(levels)
        self.mid = MidBlock(cin, g, **kw)
        self.norm_out = GroupNorm(cin, g, **kw)
        self.conv_out = _conv(cin, 2 * cfg.z_channels, 3, **kw)

    def __call__(self, x):
        h = self.conv_in(x)
        for level in self.down:
            h = level(h)
        h = self.mid(h)
        return self.conv_out(nnx.silu(self.norm_out(h)))


class Decoder(nnx.Module):
    """Latents (B, h, w, z_channels) -> images (B, h*f, w*f, out_channels).

    `up.{i}` is level i (same width as encoder `down.{i}`); they run from the last level to up.0,
    each with num_res_blocks + 1 resnets and an upsample except up.0.
    """

    def __init__(self, cfg: VAEConfig, *, dtype, param_dtype, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        g = cfg.norm_groups
        widths = [cfg.ch * m for m in cfg.ch_mult]
        cin = widths[-1]
        self.conv_in = _conv(cfg.z_channels, cin, 3, **kw)
        self.mid = MidBlock(cin, g, **kw)
        levels = [None] * len(widths)
        for i in reversed(range(len(widths))):
            cout = widths[i]
            blocks = []
            for _ in range(cfg.num_res_blocks + 1):
                blocks.append(ResnetBlock(cin, cout, g, **kw))
                cin = cout
            levels[i] = Level(blocks, upsample=Upsample(cout, **kw) if i != 0 else None)
        self.up = nnx.List(levels)
        self.norm_out = GroupNorm(cin, g, **kw)
        self.conv_out = _conv(cin, cfg.out_channels, 3, **kw)

    def __call__(self, z):
        h = self.mid(self.conv_in(z))
        for level in reversed(self.up):
            h = level(h)
        return self.conv_out(nnx.silu(self.norm_out(h)))


class AutoEncoder(nnx.Module):
    """The FLUX VAE. Images in [-1, 1], NHWC; latents raw (unscaled), NHWC with z_channels."""

    def __init__(self, cfg: VAEConfig, *, dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
        self.cfg = cfg
        self.dtype = dtype
        self.encoder = Encoder(cfg, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.decoder = Decoder(cfg, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

    def encode(self, images, key: jax.Array | None = None):
        """(B, H, W, 3) in [-1, 1] -> latent mean (B, H/f, W/f, z), or mean + std * N(0, 1) given `key`.

        H and W must be multiples of f = cfg.downsample_factor.
        """
        f = self.cfg.downsample_factor
        if images.shape[1] % f or images.shape[2] % f:
            raise ValueError(f"encode: image size {images.shape[1:3]} is not a multiple of {f}")
        moments = self.encoder(images.astype(self.dtype))
        mean, logvar = jnp.split(moments, 2, axis=-1)
        if key is None:
            return mean
        logvar = jnp.clip(logvar.astype(jnp.float32), -30.0, 20.0)
        noise = jax.random.normal(key, mean.shape, jnp.float32)
        return (mean.astype(jnp.float32) + jnp.exp(0.5 * logvar) * noise).astype(mean.dtype)

    def decode(self, latents):
        """Raw latents (B, h, w, z) -> images (B, h*f, w*f, 3), about [-1, 1] (not clipped)."""
        return self.decoder(latents.astype(self.dtype))

"""FLUX building blocks (BFL `flux/modules/layers.py`), named like BFL's state dict.

Activations are (B, L, C); attention heads are laid out (B, L, H, D). Parameters live in
`param_dtype`, compute runs in `dtype`; norm statistics, rope and timestep embeddings are
float32 whatever `dtype` is.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from vmdiff_jax.nn.math import apply_rope, attention, rope


def layer_norm(x, eps: float = 1e-6):
    """LayerNorm over the last axis without affine parameters, statistics in float32."""
    x32 = x.astype(jnp.float32)
    mean = jnp.mean(x32, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
    return ((x32 - mean) * jax.lax.rsqrt(var + eps)).astype(x.dtype)


def _linear(din, dout, *, bias=True, dtype, param_dtype, rngs):
    return nnx.Linear(din, dout, use_bias=bias, dtype=dtype, param_dtype=param_dtype, rngs=rngs)


def embed_nd(ids, axes_dim: tuple[int, ...], theta: int):
    """Rope of multi-axis positions (BFL `EmbedND`): ids (B, L, n_axes) -> (B, L, sum(axes_dim)/2, 2, 2) float32."""
    return jnp.concatenate([rope(ids[..., i], d, theta) for i, d in enumerate(axes_dim)], axis=-3)


class MLPEmbedder(nnx.Module):
    """in_layer -> SiLU -> out_layer: (B, in_dim) -> (B, hidden)."""

    def __init__(self, in_dim: int, hidden_dim: int, *, dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.in_layer = _linear(in_dim, hidden_dim, **kw)
        self.out_layer = _linear(hidden_dim, hidden_dim, **kw)

    def __call__(self, x):
        return self.out_layer(jax.nn.silu(self.in_layer(x)))


class RMSNorm(nnx.Module):
    """x * rsqrt(mean(x^2) + 1e-6) * scale over the last axis; statistics in float32, output in dtype."""

    def __init__(self, dim: int, *, dtype=jnp.float32, param_dtype=jnp.float32):
        self.scale = nnx.Param(jnp.ones((dim,), param_dtype))
        self.dtype = dtype

    def __call__(self, x):
        x32 = x.astype(jnp.float32)
        rrms = jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + 1e-6)
        return (x32 * rrms).astype(self.dtype) * self.scale[...].astype(self.dtype)


class QKNorm(nnx.Module):
    """Separate RMSNorms of queries and keys over the head dim."""

    def __init__(self, dim: int, *, dtype=jnp.float32, param_dtype=jnp.float32):
        self.query_norm = RMSNorm(dim, dtype=dtype, param_dtype=param_dtype)
        self.key_norm = RMSNorm(dim, dtype=dtype, param_dtype=param_dtype)

    def __call__(self, q, k):
        return self.query_norm(q), self.key_norm(k)


class SelfAttention(nnx.Module):
    """Holds qkv, norm and proj of one stream; the joint attention runs in the blocks."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool, *, dtype, param_dtype, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.num_heads = num_heads
        self.qkv = _linear(dim, 3 * dim, bias=qkv_bias, **kw)
        self.norm = QKNorm(dim // num_heads, dtype=dtype, param_dtype=param_dtype)
        self.proj = _linear(dim, dim, **kw)

    def qkv_heads(self, x):
        """x (B, L, C) -> normed q, k and v, each (B, L, H, D)."""
        b, l, c = x.shape
        q, k, v = jnp.moveaxis(self.qkv(x).reshape(b, l, 3, self.num_heads, c // self.num_heads), 2, 0)
        q, k = self.norm(q, k)
        return q, k, v


class ModulationOut(NamedTuple):
    shift: jax.Array
    scale: jax.Array
    gate: jax.Array


class Modulation(nnx.Module):
    """lin(SiLU(vec)) split into (shift, scale, gate) once or twice, each (B, 1, C)."""

    def __init__(self, dim: int, double: bool, *, dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
        self.multiplier = 6 if double else 3
        self.lin = _linear(dim, self.multiplier * dim, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

    def __call__(self, vec):
        out = jnp.split(self.lin(jax.nn.silu(vec))[:, None, :], self.multiplier, axis=-1)
        first = ModulationOut(*out[:3])
        return first, (ModulationOut(*out[3:]) if self.multiplier == 6 else None)


def _modulate(x, mod: ModulationOut):
    return (1 + mod.scale) * layer_norm(x) + mod.shift


def _joint_attention(q, k, v, pe, implementation):
    """Rope on q and k (B, L, H, D), then attention -> (B, L, H*D)."""
    return attention(apply_rope(q, pe), apply_rope(k, pe), v, implementation=implementation)


class DoubleStreamBlock(nnx.Module):
    """MMDiT block: separate weights for image and text tokens, one joint attention (text first)."""

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        mlp_ratio: float,
        qkv_bias: bool = False,
        *,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
        attention_impl: str | None = None,
    ):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        mlp_hidden = int(hidden_size * mlp_ratio)
        self.attention_impl = attention_impl
        self.img_mod = Modulation(hidden_size, double=True, **kw)
        self.img_attn = SelfAttention(hidden_size, num_heads, qkv_bias, **kw)
        self.img_mlp = nnx.List([_linear(hidden_size, mlp_hidden, **kw), None, _linear(mlp_hidden, hidden_size, **kw)])
        self.txt_mod = Modulation(hidden_size, double=True, **kw)
        self.txt_attn = SelfAttention(hidden_size, num_heads, qkv_bias, **kw)
        self.txt_mlp = nnx.List([_linear(hidden_size, mlp_hidden, **kw), None, _linear(mlp_hidden, hidden_size, **kw)])

    @staticmethod
    def _mlp(mlp, x):
        return mlp[2](jax.nn.gelu(mlp[0](x), approximate=True))

    def __call__(self, img, txt, vec, pe):
        """img (B, N, C), txt (B, L, C), vec (B, C), pe (B, L+N, D/2, 2, 2) -> (img, txt)."""
        img_mod1, img_mod2 = self.img_mod(vec)
        txt_mod1, txt_mod2 = self.txt_mod(vec)
        img_q, img_k, img_v = self.img_attn.qkv_heads(_modulate(img, img_mod1))
        txt_q, txt_k, txt_v = self.txt_attn.qkv_heads(_modulate(txt, txt_mod1))
        q = jnp.concatenate([txt_q, img_q], axis=1)
        k = jnp.concatenate([txt_k, img_k], axis=1)
        v = jnp.concatenate([txt_v, img_v], axis=1)
        attn = _joint_attention(q, k, v, pe, self.attention_impl)
        txt_attn, img_attn = attn[:, : txt.shape[1]], attn[:, txt.shape[1] :]

        img = img + img_mod1.gate * self.img_attn.proj(img_attn)
        img = img + img_mod2.gate * self._mlp(self.img_mlp, _modulate(img, img_mod2))
        txt = txt + txt_mod1.gate * self.txt_attn.proj(txt_attn)
        txt = txt + txt_mod2.gate * self._mlp(self.txt_mlp, _modulate(txt, txt_mod2))
        return img, txt


class SingleStreamBlock(nnx.Module):
    """Parallel attention + MLP on the joint sequence: linear1 = [q | k | v | mlp_in], linear2 = out."""

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        *,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
        attention_impl: str | None = None,
    ):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.hidden_size = hidden_size
        self.num_heads = num_heads
        self.mlp_hidden = int(hidden_size * mlp_ratio)
        self.attention_impl = attention_impl
        self.linear1 = _linear(hidden_size, 3 * hidden_size + self.mlp_hidden, **kw)
        self.linear2 = _linear(hidden_size + self.mlp_hidden, hidden_size, **kw)
        self.norm = QKNorm(hidden_size // num_heads, dtype=dtype, param_dtype=param_dtype)
        self.modulation = Modulation(hidden_size, double=False, **kw)

    def __call__(self, x, vec, pe):
        """x (B, L, C), vec (B, C), pe (B, L, D/2, 2, 2) -> (B, L, C)."""
        mod, _ = self.modulation(vec)
        h = self.linear1(_modulate(x, mod))
        qkv, mlp = h[..., : 3 * self.hidden_size], h[..., 3 * self.hidden_size :]
        b, l, _ = x.shape
        q, k, v = jnp.moveaxis(qkv.reshape(b, l, 3, self.num_heads, -1), 2, 0)
        q, k = self.norm(q, k)
        attn = _joint_attention(q, k, v, pe, self.attention_impl)
        out = self.linear2(jnp.concatenate([attn, jax.nn.gelu(mlp, approximate=True)], axis=-1))
        return x + mod.gate * out


class LastLayer(nnx.Module):
    """adaLN (shift, scale) from vec, LayerNorm, then linear: (B, N, C) -> (B, N, out_channels)."""

    def __init__(
        self, hidden_size: int, out_channels: int, *, dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs
    ):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.linear = _linear(hidden_size, out_channels, **kw)
        self.adaLN_modulation = nnx.List([None, _linear(hidden_size, 2 * hidden_size, **kw)])

    def __call__(self, x, vec):
        shift, scale = jnp.split(self.adaLN_modulation[1](jax.nn.silu(vec)), 2, axis=-1)
        x = (1 + scale[:, None, :]) * layer_norm(x) + shift[:, None, :]
        return self.linear(x)

"""One transformer encoder for every image/text tower VMDiff uses.

SigLIP so400m (Redux's image condition), DINOv2-base (visual similarity), CLIP ViT-L/14 text
(FLUX's pooled vector) and open_clip ViT-bigG-14 (both towers, text similarity) differ only
in switches of `ViTConfig` (vit_config.py): one `Block`, one `Encoder`, two embedding front ends (patches or
tokens) and a few poolings.

Parameter paths (`checkpoints/encoders.py` maps each checkpoint layout onto these):

    patch_embed.kernel (p, p, 3, W), patch_embed.bias (W,)   vision; bias only if patch_bias
    cls_token (W,)                                         class_token
    token_embed.embedding (V, W)                           text
    pos_embed (N, W)                                       learned; the class position first
    norm_pre.{scale,bias}                                  pre_norm (CLIP vision ln_pre)
    encoder.blocks.{i}.norm1 / attn.qkv (W, 3W) fused q|k|v / attn.out / norm2 /
        mlp.fc1 / mlp.fc2 / ls1, ls2 (W,)                  ls* only if layer_scale (DINOv2)
    norm.{scale,bias}                                      final norm
    head.probe (W,) / head.attn.qkv / head.attn.out / head.norm / head.mlp.fc1 / head.mlp.fc2
                                                           pool == 'map' (SigLIP)
    proj.kernel (W, E)                                     proj_dim (CLIP), used as x @ kernel

Layer norms compute their statistics in float32 whatever the parameter dtype.
"""

from __future__ import annotations


import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vmdiff_jax.nn.math import attention
from vmdiff_jax.nn.vit_config import ViTConfig

ACTIVATIONS = {
    "gelu_tanh": lambda x: jax.nn.gelu(x, approximate=True),  # transformers gelu_pytorch_tanh
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),  # exact (erf): DINOv2, open_clip
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),  # OpenAI CLIP
}


# ----------------------------------------------------------------------------- layers


def _layer_norm(width: int, eps: float, param_dtype, rngs) -> nnx.LayerNorm:
    """LayerNorm with float32 two-pass statistics (torch's numerics); cast back by the caller."""
    return nnx.LayerNorm(width, epsilon=eps, dtype=jnp.float32, param_dtype=param_dtype,
                         use_fast_variance=False, rngs=rngs)


def _normal(rngs, shape, param_dtype, std=0.02):
    return nnx.Param(std * jax.random.normal(rngs.params(), shape, jnp.float32).astype(param_dtype))


class Attention(nnx.Module):
    """Multi-head attention with fused q|k|v. x (B, L, W) -> (B, L, W).

    With `context` (B, S, W), x gives the queries and context the keys/values (the MAP head).
    """

    def __init__(self, width: int, heads: int, *, dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
        self.heads = heads
        self.qkv = nnx.Linear(width, 3 * width, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.out = nnx.Linear(width, width, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

    def __call__(self, x, *, context=None, is_causal: bool = False):
        q, k, v = jnp.split(self.qkv(x), 3, axis=-1)
        if context is not None:
            _, k, v = jnp.split(self.qkv(context), 3, axis=-1)
        heads = lambda t: t.reshape(*t.shape[:2], self.heads, -1)  # noqa: E731
        return self.out(attention(heads(q), heads(k), heads(v), is_causal=is_causal))


class MLP(nnx.Module):
    """fc1 -> activation -> fc2."""

    def __init__(self, width: int, hidden: int, activation: str, *, dtype=jnp.float32, param_dtype=jnp.float32,
                 rngs: nnx.Rngs):
        self.activation = activation
        self.fc1 = nnx.Linear(width, hidden, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.fc2 = nnx.Linear(hidden, width, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

    def __call__(self, x):
        return self.fc2(ACTIVATIONS[self.activation](self.fc1(x)))


class Block(nnx.Module):
    """Pre-norm transformer block: x + [ls1 *] attn(norm1 x), then x + [ls2 *] mlp(norm2 x)."""

    def __init__(self, cfg: ViTConfig, *, dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
        c = cfg
        self.causal = c.causal
        self.norm1 = _layer_norm(c.width, c.norm_eps, param_dtype, rngs)
        self.attn = Attention(c.width, c.heads, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.norm2 = _layer_norm(c.width, c.norm_eps, param_dtype, rngs)
        self.mlp = MLP(c.width, c.mlp_dim, c.activation, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.ls1 = nnx.Param(jnp.ones((c.width,), param_dtype)) if c.layer_scale else None
        self.ls2 = nnx.Param(jnp.ones((c.width,), param_dtype)) if c.layer_scale else None

    def __call__(self, x):
        h = self.attn(self.norm1(x).astype(x.dtype), is_causal=self.causal)
        x = x + (h * self.ls1[...].astype(x.dtype) if self.ls1 is not None else h)
        h = self.mlp(self.norm2(x).astype(x.dtype))
        return x + (h * self.ls2[...].astype(x.dtype) if self.ls2 is not None else h)


class Encoder(nnx.Module):
    """`depth` Blocks in sequence. (B, L, W) -> (B, L, W)."""

    def __init__(self, cfg: ViTConfig, *, dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
        self.blocks = nnx.List([Block(cfg, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
                                for _ in range(cfg.depth)])

    def __call__(self, x):
        for block in self.blocks:
            x = block(x)
        return x


class PatchEmbed(nnx.Module):
    """Non-overlapping p x p patches -> W, as a matmul. (B, H, W, 3) -> (B, gh * gw, W), (gh, gw).

    Rows/columns beyond a multiple of p are dropped, as torch's strided conv does.
    """

    def __init__(self, patch: int, width: int, *, bias: bool, dtype=jnp.float32, param_dtype=jnp.float32,
                 rngs: nnx.Rngs):
        self.patch, self.dtype = patch, dtype
        init = jax.nn.initializers.lecun_normal()
        self.kernel = nnx.Param(init(rngs.params(), (patch, patch, 3, width), param_dtype))
        self.bias = nnx.Param(jnp.zeros((width,), param_dtype)) if bias else None

    def __call__(self, images):
        b, h, w, c = images.shape
        p = self.patch
        gh, gw = h // p, w // p
        x = images[:, : gh * p, : gw * p].astype(self.dtype)
        x = x.reshape(b, gh, p, gw, p, c).transpose(0, 1, 3, 2, 4, 5).reshape(b, gh * gw, p * p * c)
        x = x @ self.kernel[...].astype(self.dtype).reshape(p * p * c, -1)
        if self.bias is not None:
            x = x + self.bias[...].astype(self.dtype)
        return x, (gh, gw)


def bicubic_matrix(in_size: int, out_size: int) -> np.ndarray:
    """(out, in) float32 matrix of torch's bicubic resize along one axis (align_corners=False,
    no antialias, size given): source x = (i + 0.5) * in/out - 0.5, cubic kernel a = -0.75,
    taps clamped to the border (aten upsample_bicubic2d)."""
    a = -0.75
    scale = np.float32(in_size / out_size)
    src = (np.arange(out_size, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5)
    idx = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    t = np.clip(src - idx, 0.0, 1.0).astype(np.float32)

    def near(x):  # |x| <= 1
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x):  # 1 < |x| < 2
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    weights = np.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], axis=1).astype(np.float32)
    m = np.zeros((out_size, in_size), np.float32)
    for j in range(4):
        np.add.at(m, (np.arange(out_size), np.clip(idx - 1 + j, 0, in_size - 1)), weights[:, j])
    return m


def resize_positions(pos, grid_in: int, out_hw: tuple[int, int]):
    """Learned grid positions (grid_in**2, W) -> (gh * gw, W), bicubic in float32 (as transformers'
    Dinov2Embeddings.interpolate_pos_encoding), returned in pos's dtype."""
    gh, gw = out_hw
    if (gh, gw) == (grid_in, grid_in):
        return pos
    g = pos.astype(jnp.float32).reshape(grid_in, grid_in, -1)
    mh, mw = jnp.asarray(bicubic_matrix(grid_in, gh)), jnp.asarray(bicubic_matrix(grid_in, gw))
    out = jnp.einsum("oi,pj,ijd->opd", mh, mw, g, precision=jax.lax.Precision.HIGHEST)
    return out.reshape(gh * gw, -1).astype(pos.dtype)


class MAPHead(nnx.Module):
    """SigLIP multihead attention pooling: a learned probe attends to the tokens, then a
    residual MLP. (B, L, W) -> (B, W)."""

    def __init__(self, cfg: ViTConfig, *, dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
        c = cfg
        self.probe = _normal(rngs, (c.width,), param_dtype, std=1.0)
        self.attn = Attention(c.width, c.heads, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.norm = _layer_norm(c.width, c.norm_eps, param_dtype, rngs)
        self.mlp = MLP(c.width, c.mlp_dim, c.activation, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

    def __call__(self, x):
        probe = jnp.broadcast_to(self.probe[...].astype(x.dtype), (x.shape[0], 1, x.shape[-1]))
        h = self.attn(probe, context=x)
        h = h + self.mlp(self.norm(h).astype(x.dtype))
        return h[:, 0]


def _l2_normalize(x, eps: float = 1e-12):
    """x / max(||x||, eps) along the last axis (torch F.normalize), in float32."""
    x = x.astype(jnp.float32)
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


# ----------------------------------------------------------------------------- towers


class VisionTransformer(nnx.Module):
    """Image tower. images (B, H, W, 3), already normalized -> (hidden (B, N, W), pooled or None).

    hidden is transformers' last_hidden_state (after the final norm unless norm_after_pool);
    pooled per `cfg.pool` ((B, W), or (B, proj_dim) with a projection), None for 'none'
    or when pooled=False.
    """

    def __init__(self, cfg: ViTConfig, *, dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
        c = cfg
        if c.is_text:
            raise ValueError("VisionTransformer needs a vision config (patch_size set)")
        self.cfg = c
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.patch_embed = PatchEmbed(c.patch_size, c.width, bias=c.patch_bias, **kw)
        self.cls_token = _normal(rngs, (c.width,), param_dtype) if c.class_token else None
        self.pos_embed = _normal(rngs, (c.grid**2 + int(c.class_token), c.width), param_dtype)
        self.norm_pre = _layer_norm(c.width, c.norm_eps, param_dtype, rngs) if c.pre_norm else None
        self.encoder = Encoder(c, **kw)
        self.norm = _layer_norm(c.width, c.norm_eps, param_dtype, rngs)
        self.head = MAPHead(c, **kw) if c.pool == "map" else None
        self.proj = nnx.Linear(c.width, c.proj_dim, use_bias=False, **kw) if c.proj_dim else None

    def positions(self, grid_hw: tuple[int, int]):
        """Position embeddings for a gh x gw patch grid (+ the class position first)."""
        c = self.cfg
        pos = self.pos_embed[...]
        n_cls = int(c.class_token)
        if tuple(grid_hw) != (c.grid, c.grid) and not c.pos_interpolation:
            raise ValueError(f"input patch grid {grid_hw} != the model's {c.grid}x{c.grid} "
                             f"(image_size {c.image_size}) and pos_interpolation is off")
        return jnp.concatenate([pos[:n_cls], resize_positions(pos[n_cls:], c.grid, grid_hw)], axis=0)

    def __call__(self, images, *, pooled: bool = True):
        c = self.cfg
        x, grid_hw = self.patch_embed(images)
        if self.cls_token is not None:
            cls = jnp.broadcast_to(self.cls_token[...].astype(x.dtype), (x.shape[0], 1, x.shape[-1]))
            x = jnp.concatenate([cls, x], axis=1)
        x = x + self.positions(grid_hw).astype(x.dtype)
        if self.norm_pre is not None:
            x = self.norm_pre(x).astype(x.dtype)
        x = self.encoder(x)
        if not c.norm_after_pool:
            x = self.norm(x).astype(x.dtype)
        if not pooled or c.pool == "none":
            return x, None
        if c.pool == "map":
            p = self.head(x)
        elif c.pool == "mean_all":
            p = jnp.mean(x.astype(jnp.float32), axis=1).astype(x.dtype)
        elif c.pool == "cls":
            p = x[:, 0]
        else:
            raise ValueError(f"pool {c.pool!r} is for text towers")
        if c.norm_after_pool:
            p = self.norm(p).astype(x.dtype)
        if self.proj is not None:
            p = self.proj(p)
        return x, p


class TextTransformer(nnx.Module):
    """Text tower. ids (B, L <= context_length) int32 -> (hidden (B, L, W), pooled (B, W or proj_dim)).

    hidden is after the final norm (transformers' last_hidden_state); pooled is the hidden
    state at the end-of-text position (see ViTConfig.eos_token_id), projected when proj_dim.
    """

    def __init__(self, cfg: ViTConfig, *, dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
        c = cfg
        if not c.is_text:
            raise ValueError("TextTransformer needs a text config (vocab_size set)")
        self.cfg = c
        self.dtype = dtype
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.token_embed = nnx.Embed(c.vocab_size, c.width, **kw)
        self.pos_embed = _normal(rngs, (c.context_length, c.width), param_dtype, std=0.01)
        self.encoder = Encoder(c, **kw)
        self.norm = _layer_norm(c.width, c.norm_eps, param_dtype, rngs)
        self.proj = nnx.Linear(c.width, c.proj_dim, use_bias=False, **kw) if c.proj_dim else None

    def __call__(self, ids):
        c = self.cfg
        ids = jnp.asarray(ids, jnp.int32)
        if ids.shape[-1] > c.context_length:
            raise ValueError(f"{ids.shape[-1]} tokens > context_length {c.context_length}")
        x = self.token_embed(ids).astype(self.dtype) + self.pos_embed[: ids.shape[-1]].astype(self.dtype)
        x = self.norm(self.encoder(x)).astype(x.dtype)
        if c.eos_token_id is None:
            eos = jnp.argmax(ids, axis=-1)
        else:
            eos = jnp.argmax((ids == c.eos_token_id).astype(jnp.int32), axis=-1)
        p = jnp.take_along_axis(x, eos[:, None, None], axis=1)[:, 0]
        if self.proj is not None:
            p = self.proj(p)
        return x, p


class CLIP(nnx.Module):
    """Both towers of a CLIP model (ViT-bigG-14): `visual` and `text`."""

    def __init__(self, vision: ViTConfig, text: ViTConfig, *, dtype=jnp.float32, param_dtype=jnp.float32,
                 rngs: nnx.Rngs):
        if vision.proj_dim != text.proj_dim or not vision.proj_dim:
            raise ValueError(f"both towers need the same proj_dim, got {vision.proj_dim} and {text.proj_dim}")
        self.visual = VisionTransformer(vision, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.text = TextTransformer(text, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

    def encode_image(self, images, *, normalize: bool = False):
        """images (B, H, W, 3), CLIP-normalized -> (B, E); unit length (float32) if normalize."""
        e = self.visual(images)[1]
        return _l2_normalize(e) if normalize else e

    def encode_text(self, ids, *, normalize: bool = False):
        """ids (B, 77) int32 -> (B, E); unit length (float32) if normalize."""
        e = self.text(ids)[1]
        return _l2_normalize(e) if normalize else e


# ----------------------------------------------------------------------------- public callables


def dinov2(model: VisionTransformer, images):
    """DINOv2: images (B, 224, 224, 3) normalized -> last_hidden_state (B, 1 + 256, 768), after layernorm."""
    return model(images, pooled=False)[0]


def dino_features(model: VisionTransformer, images):
    """DINOv2 feature: mean over ALL tokens (class token included) of last_hidden_state -> (B, 768)."""
    return jnp.mean(dinov2(model, images).astype(jnp.float32), axis=1)

"""The FLUX.1 transformer (BFL `flux/model.py`): embeddings, double- and single-stream blocks.

The NNX parameter tree is BFL's state dict with `weight` -> `kernel` for Linear layers
(`double_blocks.3.img_attn.qkv.kernel` <- `double_blocks.3.img_attn.qkv.weight`). With
`fp8=True` the blocks' Linear kernels are float8 with a float32 `scale` beside them (quant.py).
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
from flax import nnx

from vmdiff_jax.nn import checks
from vmdiff_jax.nn.layers import DoubleStreamBlock, LastLayer, MLPEmbedder, SingleStreamBlock, _linear, embed_nd
from vmdiff_jax.nn.math import normalize_attention_impl, timestep_embedding
from vmdiff_jax.nn.quant import tie, to_fp8


@dataclasses.dataclass(frozen=True)
class FluxConfig:
    """Hyperparameters of BFL's `FluxParams` (defaults: FLUX.1 [dev])."""

    in_channels: int = 64
    out_channels: int = 64
    vec_in_dim: int = 768
    context_in_dim: int = 4096
    hidden_size: int = 3072
    mlp_ratio: float = 4.0
    num_heads: int = 24
    depth: int = 19
    depth_single_blocks: int = 38
    axes_dim: tuple[int, ...] = (16, 56, 56)
    theta: int = 10_000
    qkv_bias: bool = True
    guidance_embed: bool = True

    def __post_init__(self):
        """Every field checked (checks.py): sizes positive ints (block counts >= 0), heads dividing
        the width, rope axes summing to the head dim."""
        for name in ("in_channels", "out_channels", "vec_in_dim", "context_in_dim", "hidden_size", "num_heads", "theta"):
            checks.integer(name, getattr(self, name), 1)
        for name in ("depth", "depth_single_blocks"):
            checks.integer(name, getattr(self, name), 0)
        checks.number("mlp_ratio", self.mlp_ratio, above=0.0)
        if not isinstance(self.axes_dim, (tuple, list)) or not self.axes_dim:
            raise TypeError(f"axes_dim must be a tuple of positive ints, got {self.axes_dim!r}")
        for k, a in enumerate(self.axes_dim):
            checks.integer(f"axes_dim[{k}]", a, 1)
        for name in ("qkv_bias", "guidance_embed"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be a bool, got {getattr(self, name)!r}")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not a multiple of num_heads {self.num_heads}")
        if sum(self.axes_dim) != self.head_dim:
            raise ValueError(f"sum(axes_dim) = {sum(self.axes_dim)} must equal the head dim "
                             f"hidden_size / num_heads = {self.head_dim}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @classmethod
    def flux1_dev(cls) -> "FluxConfig":
        """FLUX.1 [dev] and FLUX.1 Krea [dev] (same architecture): 11.9B parameters."""
        return cls()

    @classmethod
    def tiny(cls, **overrides) -> "FluxConfig":
        """2 heads of 16, one double and one single block, axes (4, 6, 6): for tests and demos."""
        base = dict(
            in_channels=16,
            out_channels=16,
            vec_in_dim=16,
            context_in_dim=32,
            hidden_size=32,
            num_heads=2,
            depth=1,
            depth_single_blocks=1,
            axes_dim=(4, 6, 6),
        )
        return cls(**{**base, **overrides})


class Flux(nnx.Module):
    """FLUX transformer: velocity (B, N, out_channels) of packed latents given text/image conditioning.

    attention_impl: one of math.ATTENTION_IMPLS for the joint attention (None = 'auto': the
    backend's kernel, see math.resolve_attention_impl).
    """

    def __init__(
        self,
        cfg: FluxConfig,
        *,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
        attention_impl: str | None = None,
        fp8: bool = False,
    ):
        """fp8: the Linear layers of the double and single blocks (99.5% of FLUX.1's weights)
        store float8_e4m3fn kernels with per-output-channel float32 scales, dequantized to
        `dtype` at use; embedders, final layer, norms and biases stay in `param_dtype`."""
        checks.instance("cfg", cfg, FluxConfig)
        if cfg.hidden_size % cfg.num_heads:
            raise ValueError(f"hidden_size {cfg.hidden_size} is not a multiple of num_heads {cfg.num_heads}")
        if sum(cfg.axes_dim) != cfg.head_dim:
            raise ValueError(f"sum(axes_dim) = {sum(cfg.axes_dim)} must equal the head dim {cfg.head_dim}")
        self.cfg = cfg
        self.fp8 = fp8
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        blk = dict(kw, attention_impl=normalize_attention_impl(attention_impl))
        h = cfg.hidden_size
        self.img_in = _linear(cfg.in_channels, h, **kw)
        self.time_in = MLPEmbedder(256, h, **kw)
        self.vector_in = MLPEmbedder(cfg.vec_in_dim, h, **kw)
        self.guidance_in = MLPEmbedder(256, h, **kw) if cfg.guidance_embed else None
        self.txt_in = _linear(cfg.context_in_dim, h, **kw)
        self.double_blocks = nnx.List(
            [DoubleStreamBlock(h, cfg.num_heads, cfg.mlp_ratio, cfg.qkv_bias, **blk) for _ in range(cfg.depth)]
        )
        self.single_blocks = nnx.List(
            [SingleStreamBlock(h, cfg.num_heads, cfg.mlp_ratio, **blk) for _ in range(cfg.depth_single_blocks)]
        )
        self.final_layer = LastLayer(h, cfg.out_channels, **kw)
        if fp8:
            to_fp8(self.double_blocks)
            to_fp8(self.single_blocks)

    def __call__(self, img, img_ids, txt, txt_ids, timesteps, y, guidance=None):
        """One velocity evaluation (BFL `Flux.forward`).

        img (B, N, in_channels) packed latents, img_ids (B, N, 3), txt (B, L, context_in_dim),
        txt_ids (B, L, 3) (both ids may have batch 1, shared by the batch), timesteps (B,) in
        [0, 1] (embedded as 1000 * t), y (B, vec_in_dim) pooled vector, guidance (B,) the raw
        guidance value (e.g. 4.0; embedded as 1000 * g; required iff cfg.guidance_embed).
        Returns (B, N, out_channels).
        """
        cfg = self.cfg
        if cfg.guidance_embed and guidance is None:
            raise ValueError("this FLUX model is guidance-distilled: pass `guidance`")
        img = self.img_in(img)
        vec = self.time_in(timestep_embedding(timesteps, 256))
        if self.guidance_in is not None:
            vec = vec + self.guidance_in(timestep_embedding(guidance, 256))
        vec = vec + self.vector_in(y)
        txt = self.txt_in(txt)

        ids = jnp.concatenate([txt_ids, img_ids], axis=1)
        pe = embed_nd(ids, cfg.axes_dim, cfg.theta)

        # fp8: each block's modulation sees vec tied to the block's input (quant.tie), so its
        # kernels are dequantized when the block runs, not all at once
        order = tie if self.fp8 else (lambda *a: a)
        for block in self.double_blocks:
            vec_i, img = order(vec, img)
            img, txt = block(img, txt, vec_i, pe)
        x = jnp.concatenate([txt, img], axis=1)
        for block in self.single_blocks:
            vec_i, x = order(vec, x)
            x = block(x, vec_i, pe)
        return self.final_layer(x[:, txt.shape[1] :], vec)

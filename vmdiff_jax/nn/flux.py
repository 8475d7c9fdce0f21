"""The FLUX.1 transformer (BFL `flux/model.py`): embeddings, double- and single-stream blocks.

The NNX parameter tree is BFL's state dict with `weight` -> `kernel` for Linear layers. With
`fp8=True` the blocks' Linear kernels are float8 with a float32 `scale` beside them (quant.py).

Blocks under a scan (`scan_blocks=True`, the default): `double_blocks` is ONE DoubleStreamBlock
whose every parameter is its 19 layers' stacked along a new leading axis, and the forward runs
it with `jax.lax.scan` (one block traced and compiled, not 57 unrolled: minutes of compilation
at full size become seconds). Its paths are the block's own with the layer axis in front:
`double_blocks.img_attn.qkv.kernel` (depth, in, out) is layer i's
`double_blocks.{i}.img_attn.qkv.kernel` at index i (BFL `double_blocks.{i}.img_attn.qkv.weight`,
transposed); likewise `single_blocks.linear1.kernel` (depth_single_blocks, in, out), and fp8
scales (depth, out). Checkpoints keep BFL's per-layer names; the loaders stack them
(checkpoints/rules.py `Stacked`). `scan_blocks=False` keeps the unrolled `nnx.List` of blocks
(`double_blocks.3.img_attn.qkv.kernel`), for comparisons and the per-tensor converters. Both
draw the same initial parameters from the same `rngs`, and compute the same function.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from vmdiff_jax.nn import checks
from vmdiff_jax.nn.layers import DoubleStreamBlock, LastLayer, MLPEmbedder, SingleStreamBlock, _linear, embed_nd
from vmdiff_jax.nn.math import normalize_attention_impl, timestep_embedding
from vmdiff_jax.nn.quant import select_layer, tie, to_fp8


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


STACKED = ("double_blocks", "single_blocks")  # the module paths stacked when scan_blocks


def layer_axes(path: str) -> int:
    """1 for a parameter of stacked blocks (`double_blocks.img_attn.qkv.kernel`: axis 0 is the
    layer), else 0 (`double_blocks.3.img_attn.qkv.kernel`, `img_in.kernel`)."""
    head, _, rest = path.partition(".")
    return int(head in STACKED and bool(rest) and not rest.split(".", 1)[0].isdigit())


def stack_layers(layers: Sequence[nnx.Module]) -> nnx.Module:
    """One module of the layers' (identical) structure whose every variable is theirs stacked
    along a new leading axis (layer i at index i); works on abstract (eval_shape) modules."""
    graphdef, _ = nnx.split(layers[0])
    return nnx.merge(graphdef, jax.tree.map(lambda *xs: jnp.stack(xs), *[nnx.state(m) for m in layers]))


def run_layers(blocks: nnx.Module | None, carry, step: Callable):
    """carry after step(layer, carry) -> carry for every layer of `blocks` in order: a Python
    loop over an nnx.List, a `jax.lax.scan` over a stacked module (stack_layers), where the
    body sees one layer (its slices of the stacked parameters) as an ordinary module.

    float8 stacks (Fp8Linear kernels) are not scanned over: each Fp8Linear of the body holds
    its whole stack and slices its layer at use, tied to its input (quant.select_layer), so
    a backend that computes float8 in a wider type (XLA:CPU: f16) converts one layer's
    kernel when it runs instead of upcasting every stack before the loop.
    """
    if blocks is None:
        return carry
    if isinstance(blocks, nnx.List):
        for block in blocks:
            carry = step(block, carry)
        return carry
    graphdef, state = nnx.split(blocks)
    leaves, treedef = jax.tree.flatten(state)
    whole = [jnp.issubdtype(a.dtype, jnp.floating) and jnp.dtype(a.dtype).itemsize == 1 for a in leaves]

    def body(c, xs):
        i, sliced = xs
        rest = iter(sliced)
        layer = nnx.merge(graphdef, jax.tree.unflatten(treedef, [a if w else next(rest) for a, w in zip(leaves, whole)]))
        select_layer(layer, i)
        return step(layer, c), None

    scanned = [a for a, w in zip(leaves, whole) if not w]
    return jax.lax.scan(body, carry, (jnp.arange(leaves[0].shape[0]), scanned))[0]


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
        scan_blocks: bool = True,
    ):
        """fp8: the Linear layers of the double and single blocks (99.5% of FLUX.1's weights)
        store float8_e4m3fn kernels with per-output-channel float32 scales, dequantized to
        `dtype` at use, layer by layer; embedders, final layer, norms and biases stay in
        `param_dtype`. scan_blocks: stacked blocks run under a scan (module docstring), else
        an unrolled nnx.List of blocks."""
        checks.instance("cfg", cfg, FluxConfig)
        if cfg.hidden_size % cfg.num_heads:
            raise ValueError(f"hidden_size {cfg.hidden_size} is not a multiple of num_heads {cfg.num_heads}")
        if sum(cfg.axes_dim) != cfg.head_dim:
            raise ValueError(f"sum(axes_dim) = {sum(cfg.axes_dim)} must equal the head dim {cfg.head_dim}")
        self.cfg = cfg
        self.fp8 = fp8
        self.scan_blocks = scan_blocks
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        blk = dict(kw, attention_impl=normalize_attention_impl(attention_impl))
        h = cfg.hidden_size
        self.img_in = _linear(cfg.in_channels, h, **kw)
        self.time_in = MLPEmbedder(256, h, **kw)
        self.vector_in = MLPEmbedder(cfg.vec_in_dim, h, **kw)
        self.guidance_in = MLPEmbedder(256, h, **kw) if cfg.guidance_embed else None
        self.txt_in = _linear(cfg.context_in_dim, h, **kw)
        double = [DoubleStreamBlock(h, cfg.num_heads, cfg.mlp_ratio, cfg.qkv_bias, **blk) for _ in range(cfg.depth)]
        single = [SingleStreamBlock(h, cfg.num_heads, cfg.mlp_ratio, **blk) for _ in range(cfg.depth_single_blocks)]
        self.final_layer = LastLayer(h, cfg.out_channels, **kw)
        if fp8:  # per layer, before stacking: each layer's kernels get their own scales
            for block in double + single:
                to_fp8(block)
        if scan_blocks:
            self.double_blocks = stack_layers(double) if double else None
            self.single_blocks = stack_layers(single) if single else None
        else:
            self.double_blocks, self.single_blocks = nnx.List(double), nnx.List(single)

    @property
    def layer_stacks(self) -> dict[str, int]:
        """{module path: number of layers} of the stacked blocks ({} when unrolled)."""
        return stacks(self.cfg, self.scan_blocks)

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
        # kernels are dequantized when the block runs (inside the scan body), not all at once
        order = tie if self.fp8 else (lambda *a: a)

        def double(block, carry):
            vec_i, img = order(vec, carry[0])
            return block(img, carry[1], vec_i, pe)

        def single(block, x):
            vec_i, x = order(vec, x)
            return block(x, vec_i, pe)

        img, txt = run_layers(self.double_blocks, (img, txt), double)
        x = run_layers(self.single_blocks, jnp.concatenate([txt, img], axis=1), single)
        return self.final_layer(x[:, txt.shape[1] :], vec)


def stacks(cfg: FluxConfig, scan_blocks: bool = True) -> dict[str, int]:
    """{module path: number of layers} of the blocks a Flux(cfg, scan_blocks=...) stacks."""
    if not scan_blocks:
        return {}
    return {k: n for k, n in zip(STACKED, (cfg.depth, cfg.depth_single_blocks)) if n}

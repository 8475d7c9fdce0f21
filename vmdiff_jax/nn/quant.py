"""float8 weight storage: float8_e4m3fn kernels with float32 scales, dequantized at use.

A quantized kernel is the pair (q, scale) with w ~= q * scale: q float8_e4m3fn in the
kernel's layout (in, out), scale float32 of shape (out,) (one per output channel). We
quantize per output channel (scale = absmax / 448, so each channel's largest weight maps to
448, the top of e4m3's range); per-tensor scales (scaled fp8 checkpoints) and plain fp8
files (scale 1) are the same pair with a constant scale. `Fp8Linear` dequantizes its kernel
to the compute dtype inside the jitted call, layer by layer, then runs an ordinary matmul;
`to_fp8` swaps the `nnx.Linear` layers of a module for it. Kernels of stacked layers
(L, in, out) (FLUX blocks under a scan) quantize layer by layer: scale (L, out) (or (L,)),
and in the scan body `Fp8Linear` slices its layer from the stack and dequantizes it, tied to
its input like any kernel (`select_layer`).

Works with numpy (checkpoint streaming, on the host) and jax.numpy (inside jit) alike.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from flax import nnx

FP8 = np.dtype(ml_dtypes.float8_e4m3fn)
FP8_MAX = 448.0  # largest finite float8_e4m3fn; casting beyond it gives NaN (e4m3fn has no inf)


def _xp(a):
    return np if isinstance(a, np.ndarray) else jnp


def quantize(w, per_channel: bool = True):
    """(q, scale) of a kernel w (..., in, out) (leading axes: stacked layers, each quantized on
    its own): q float8_e4m3fn like w, scale float32 (..., out) (per_channel) or (...) (one
    per layer's tensor). scale = absmax / 448 (1 for an all-zero channel), q =
    round-to-nearest(w / scale). numpy in -> numpy out, jax in -> jax out."""
    xp = _xp(w)
    w = xp.asarray(w, xp.float32)
    absmax = xp.max(xp.abs(w), axis=-2 if per_channel else (-2, -1), keepdims=True)
    # times float32(1/448) rather than / 448: XLA rewrites division by a constant so, numpy does not
    scale = xp.where(absmax > 0, absmax * xp.float32(1 / FP8_MAX), xp.float32(1.0)).astype(xp.float32)
    q = xp.clip(w / scale, -FP8_MAX, FP8_MAX).astype(FP8)
    return q, (xp.squeeze(scale, -2) if per_channel else xp.squeeze(scale, (-2, -1)))


def dequantize(q, scale, dtype=jnp.bfloat16):
    """q * scale computed in float32 (q (..., in, out) float8, scale (..., out) per channel or
    () for the tensor), cast to `dtype`."""
    xp = _xp(q)
    scale = xp.asarray(scale, xp.float32)
    if scale.ndim and scale.ndim == q.ndim - 1:  # per output channel (of each stacked layer)
        scale = xp.expand_dims(scale, -2)
    return (q.astype(xp.float32) * scale).astype(dtype)


def tie(a, x):
    """(a, x) unchanged, but through `jax.lax.optimization_barrier`: XLA must treat `a` as
    computed together with `x`, so nothing made from the returned `a` runs before `x` exists.

    Fp8Linear dequantizes its kernel tied to the layer's input: otherwise XLA hoists the
    dequantization of every kernel out of a sampling loop (lax.scan) or schedules all of them
    first, holding the whole model in the compute dtype at once (benchmarks/memory_fullsize.py).
    Both results must be used (an unused one is dropped from the barrier).
    """
    return jax.lax.optimization_barrier((a, x))


class Fp8Linear(nnx.Module):
    """y = x @ dequantize(kernel, scale) + bias in `dtype`: kernel (in, out) float8_e4m3fn,
    scale (out,) float32, bias (out,) in `param_dtype`. Parameter names `kernel`/`bias` as
    nnx.Linear's (BFL keys), plus `scale` (a scaled checkpoint's `scale_weight`)."""

    def __init__(self, kernel, scale, bias=None, *, dtype=jnp.bfloat16):
        self.kernel = nnx.Param(kernel)
        self.scale = nnx.Param(scale)
        self.bias = nnx.Param(bias) if bias is not None else None
        self.dtype = dtype
        self.layer = None  # inside a scan over stacked layers: the layer to slice (select_layer)

    @classmethod
    def from_linear(cls, linear: nnx.Linear) -> "Fp8Linear":
        """The linear layer with its kernel quantized per output channel (abstract stays abstract)."""
        q, scale = quantize(linear.kernel[...])
        bias = linear.bias[...] if linear.bias is not None else None
        return cls(q, scale, bias, dtype=linear.dtype or linear.param_dtype)

    def __call__(self, x):
        q, x = tie(self.kernel[...], x)
        if self.layer is not None:  # the whole stack (L, in, out): this layer's, sliced after the tie
            q = jax.lax.dynamic_index_in_dim(q, self.layer, keepdims=False)
        w = dequantize(q, self.scale[...], self.dtype)
        y = jax.lax.dot_general(x.astype(self.dtype), w, (((x.ndim - 1,), (0,)), ((), ())))
        if self.bias is not None:
            y = y + self.bias[...].astype(self.dtype)
        return y


def select_layer(module: nnx.Module, i) -> None:
    """Make every Fp8Linear under `module` whose kernel is a whole stack (L, in, out) use its
    layer i (a traced index), sliced at use after the tie (a scan body over stacked layers,
    nn/flux.py run_layers; its other parameters are already layer i's)."""
    for _, m in nnx.iter_modules(module):
        if isinstance(m, Fp8Linear) and m.kernel[...].ndim == 3:
            m.layer = i


def to_fp8(module: nnx.Module) -> nnx.Module:
    """Replace every nnx.Linear under `module` (in place) by its Fp8Linear; returns `module`."""
    found = [(path, m) for path, m in nnx.iter_modules(module) if isinstance(m, nnx.Linear)]
    for path, lin in found:
        parent = module
        for p in path[:-1]:
            parent = parent[p] if isinstance(p, int) else getattr(parent, p)
        new = Fp8Linear.from_linear(lin)
        if isinstance(path[-1], int):
            parent[path[-1]] = new
        else:
            setattr(parent, path[-1], new)
    return module

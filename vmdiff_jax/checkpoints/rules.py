"""Rules: how each parameter of an abstract Flax NNX model is made from checkpoint tensors.

A parameter is named by its dotted NNX path (`double_blocks.0.img_attn.qkv.kernel`). Its
`Rule` lists the checkpoint keys it is made from and a function of those arrays written
against an array namespace `xp` (numpy when loading, jax.numpy under `jax.eval_shape` when
checking shapes from headers alone). A rule whose result is a transposition of one source
also says which slice of the source a slice of the parameter needs (`index`), so a process
of a multi-host mesh reads only the bytes its devices hold.

Where our paths are the checkpoint's names (BFL's FLUX and VAE), `derive` writes the rules
from the parameter paths alone: `kernel` -> `weight` (transposed), `bias` -> `bias`.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Mapping, Sequence

import jax
from flax import nnx

Index = tuple[slice, ...]


def _identity(xp, a):
    return a


@dataclasses.dataclass(frozen=True)
class Rule:
    """One parameter = fn(xp, *tensors at `sources`).

    index(param_index, source_ndim) -> source_index: the slice of the (single) source that
    the slice `param_index` of the parameter is made from; None when the sources must be
    read whole. inverse(xp, param) -> tuple of source arrays: the checkpoint tensors that
    give this parameter (writing a checkpoint in this layout); None when not invertible.
    """

    sources: tuple[str, ...]
    fn: Callable = _identity
    index: Callable[[Index, int], Index] | None = None
    inverse: Callable | None = None  # inverse(xp, param) -> the source arrays (checkpoints/export.py)


def _permuted(perm: Sequence[int]) -> Callable[[Index, int], Index]:
    """Source index of a parameter = transpose(source, perm): source axis perm[j] is parameter axis j."""

    def index(idx: Index, ndim: int) -> Index:
        out = [slice(None)] * ndim
        for j, p in enumerate(perm):
            out[p] = idx[j]
        return tuple(out)

    return index


def same(key: str) -> Rule:
    """Copied as is (biases, norms, embeddings)."""
    return Rule((key,), _identity, lambda idx, ndim: tuple(idx), lambda xp, a: (a,))


def linear(key: str) -> Rule:
    """torch Linear weight (out, in) -> Flax kernel (in, out)."""
    return Rule((key,), lambda xp, w: xp.transpose(w), _permuted((1, 0)), lambda xp, k: (xp.transpose(k),))


def conv(key: str) -> Rule:
    """torch Conv2d weight (O, I, kh, kw) -> Flax kernel (kh, kw, I, O)."""
    return Rule((key,), lambda xp, w: xp.transpose(w, (2, 3, 1, 0)), _permuted((2, 3, 1, 0)),
                lambda xp, k: (xp.transpose(k, (3, 2, 0, 1)),))


def conv1x1_as_linear(key: str) -> Rule:
    """A 1x1 conv weight (O, I, 1, 1) -> Linear kernel (I, O) (BFL VAE attention)."""
    return Rule((key,), lambda xp, w: xp.transpose(w[:, :, 0, 0]), _permuted((1, 0)),
                lambda xp, k: (xp.transpose(k)[:, :, None, None],))


def linear_cat(keys: Sequence[str]) -> Rule:
    """Several torch Linear weights fused along `out` (q, k, v [, mlp]) -> one kernel.
    The inverse splits equally (q, k, v); unequal fusions have none."""
    n = len(keys)
    return Rule(tuple(keys), lambda xp, *ws: xp.transpose(xp.concatenate(ws, axis=0)),
                inverse=lambda xp, k: tuple(xp.split(xp.transpose(k), n, axis=0)))


def cat(keys: Sequence[str]) -> Rule:
    """Several 1-D tensors (biases) concatenated (the inverse splits equally)."""
    n = len(keys)
    return Rule(tuple(keys), lambda xp, *bs: xp.concatenate(bs, axis=0), inverse=lambda xp, b: tuple(xp.split(b, n)))


def reshaped(key: str, keep: slice, lead: int = 0) -> Rule:
    """The source reshaped to its dims `keep` ((1, 1, W) -> (W,) with keep=slice(-1, None));
    lead: how many leading unit dims the layout's tensor has (for the inverse)."""
    return Rule((key,), lambda xp, a: xp.reshape(a, a.shape[keep]),
                inverse=lambda xp, p: (xp.reshape(p, (1,) * lead + tuple(p.shape)),))


def swap_halves(rule: Rule, axis: int = -1) -> Rule:
    """The same rule with the two halves of `axis` exchanged ((a, b) -> (b, a))."""

    def fn(xp, *arrays):
        y = rule.fn(xp, *arrays)
        a, b = xp.split(y, 2, axis=axis)
        return xp.concatenate([b, a], axis=axis)

    def inverse(xp, p):
        a, b = xp.split(p, 2, axis=axis)
        return rule.inverse(xp, xp.concatenate([b, a], axis=axis))

    return Rule(rule.sources, fn, inverse=inverse if rule.inverse else None)


def param_paths(model: nnx.Module) -> dict[str, jax.ShapeDtypeStruct]:
    """{dotted path: ShapeDtypeStruct} of every nnx.Param of a (possibly abstract) model."""
    out = {}
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        v = var.get_value() if hasattr(var, "get_value") else var.value
        out[".".join(str(p) for p in path)] = jax.ShapeDtypeStruct(v.shape, v.dtype)
    return out


BFL_LEAVES = {"kernel": "weight"}  # FLUX: RMSNorm `scale` keeps its name


def derive(
    params: Mapping[str, jax.ShapeDtypeStruct],
    rename: Callable[[str], str] = lambda module: module,
    leaves: Mapping[str, str] = BFL_LEAVES,
    linear_rule: Callable[[str], Rule] = linear,
) -> dict[str, Rule]:
    """Rules for a checkpoint whose keys follow our parameter paths.

    Each parameter `module.leaf` reads `rename(module).leaves[leaf]`: 2-D kernels through
    `linear_rule`, 4-D kernels as convolutions, everything else as is.
    """
    rules = {}
    for path, sd in params.items():
        module, leaf = path.rsplit(".", 1)
        key = f"{rename(module)}.{leaves.get(leaf, leaf)}"
        if leaf == "kernel":
            rules[path] = linear_rule(key) if len(sd.shape) == 2 else conv(key)
        else:
            rules[path] = same(key)
    return rules

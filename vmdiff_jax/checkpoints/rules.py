"""Rules: how each parameter of an abstract Flax NNX model is made from checkpoint tensors.

A parameter is named by its dotted NNX path (`final_layer.linear.kernel`). Its
`Rule` lists the checkpoint keys it is made from and a function of those arrays written
against an array namespace `xp` (numpy when loading, jax.numpy under `jax.eval_shape` when
checking shapes from headers alone). A rule whose result is a transposition of one source
also says which slice of the source a slice of the parameter needs (`index`), so a process
of a multi-host mesh reads only the bytes its devices hold.

Where our paths are the checkpoint's names (BFL's FLUX and VAE), `derive` writes the rules
from the parameter paths alone: `kernel` -> `weight` (transposed), `bias` -> `bias`.

A parameter of stacked layers (FLUX blocks under a scan: `double_blocks.img_attn.qkv.kernel`
of shape (depth, in, out)) has a `Stacked` rule: one ordinary Rule per layer, written for the
per-layer name an unrolled model has (`double_blocks.3.img_attn.qkv.kernel`); `stack` groups
such per-layer rules, `unstacked_paths` gives the per-layer parameters to write them for. A
slice of a stacked parameter (layers a:b, inner slices s) is read layer by layer, each layer
through its own rule's `index` (or whole when it has none).
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


@dataclasses.dataclass(frozen=True)
class Stacked:
    """A parameter with a leading layer axis: layer i = layers[i] (a Rule), named names[i]
    (the parameter's path in an unrolled model, for messages)."""

    names: tuple[str, ...]
    layers: tuple[Rule, ...]

    @property
    def sources(self) -> tuple[str, ...]:
        return tuple(k for r in self.layers for k in r.sources)

    def fn(self, xp, *arrays):
        """The layers' results stacked (arrays: every layer's sources in order, as `sources`)."""
        out, i = [], 0
        for r in self.layers:
            out.append(r.fn(xp, *arrays[i : i + len(r.sources)]))
            i += len(r.sources)
        return xp.stack(out)

    @property
    def inverse(self) -> Callable | None:
        """param (n, ...) -> every layer's sources in order (layer i from param[i]); None when a layer has none."""
        if any(r.inverse is None for r in self.layers):
            return None

        def inv(xp, p):
            return tuple(a for i, r in enumerate(self.layers) for a in r.inverse(xp, p[i]))

        return inv

    def map(self, f: Callable[[str, Rule], Rule], rename: Callable[[str], str] = lambda name: name) -> "Stacked":
        """Stacked(rename(name_i), f(name_i, layer_i)): the same change made to every layer."""
        return Stacked(tuple(rename(n) for n in self.names), tuple(f(n, r) for n, r in zip(self.names, self.layers)))


AnyRule = Rule | Stacked


def layers_of(rule: AnyRule) -> tuple[Rule, ...]:
    """The per-layer rules of a Stacked rule, (rule,) for an ordinary one."""
    return rule.layers if isinstance(rule, Stacked) else (rule,)


def _split(path: str, stacks: Mapping[str, int]) -> tuple[str, int, str] | None:
    """(prefix, i, rest) of a per-layer path `prefix.i.rest` of a stacked module, else None."""
    for prefix, n in stacks.items():
        head, _, tail = path.partition(prefix + ".")
        if not head and tail:
            i, _, rest = tail.partition(".")
            if i.isdigit() and int(i) < n and rest:
                return prefix, int(i), rest
    return None


def unstacked_paths(params: Mapping[str, jax.ShapeDtypeStruct], stacks: Mapping[str, int]) -> dict[str, jax.ShapeDtypeStruct]:
    """The parameters as an unrolled model has them: each `prefix.rest` (n, ...) of a stacked
    module `prefix` (stacks: {prefix: n}) as `prefix.0.rest` ... `prefix.{n-1}.rest` (...)."""
    out = {}
    for path, sd in params.items():
        prefix = next((p for p in stacks if path.startswith(p + ".")), None)
        if prefix is None:
            out[path] = sd
            continue
        rest = path[len(prefix) + 1 :]
        for i in range(stacks[prefix]):
            out[f"{prefix}.{i}.{rest}"] = jax.ShapeDtypeStruct(sd.shape[1:], sd.dtype)
    return out


def stack(rules: Mapping[str, Rule], stacks: Mapping[str, int]) -> dict[str, AnyRule]:
    """Per-layer rules `prefix.{i}.rest` of the stacked modules (stacks: {prefix: n layers})
    grouped into one Stacked rule `prefix.rest` (layers 0..n-1, each required); the others as they are."""
    out: dict[str, AnyRule] = {}
    groups: dict[str, dict[int, tuple[str, Rule]]] = {}
    for path, rule in rules.items():
        where = _split(path, stacks)
        if where is None:
            out[path] = rule
        else:
            prefix, i, rest = where
            groups.setdefault(f"{prefix}.{rest}", {})[i] = (path, rule)
    for path, layers in groups.items():
        n = next(stacks[p] for p in stacks if path.startswith(p + "."))
        if sorted(layers) != list(range(n)):
            missing = min(set(range(n)) - set(layers))
            raise ValueError(f"stacked parameter {path}: no rule for layer {missing}")
        out[path] = Stacked(tuple(layers[i][0] for i in range(n)), tuple(layers[i][1] for i in range(n)))
    return out


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

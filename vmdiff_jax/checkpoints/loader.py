"""Filling an abstract Flax NNX model from a checkpoint, one parameter at a time.

A checkpoint kind (`Kind`) detects itself from the keys and builds a `Plan`: the model built
abstractly (`nnx.eval_shape`, nothing allocated) in the dtypes it should have, a `Rule` per
parameter, and the checkpoint keys it ignores. `check` lists every problem from the headers
alone (what `vmdiff convert --check` prints); `fill` refuses any of them before reading a
byte, then streams each parameter in: read its sources (or, on a mesh, only the slices this
process's devices hold), check them finite, convert with numpy, cast to the abstract
parameter's dtype, place. A stacked parameter (rules.Stacked) streams layer by layer: its
layers are checked one by one, read one at a time into the slices they fill, and, unsharded
and large, written one at a time into the parameter's device buffer (the host holds a layer).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable, Iterable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vmdiff_jax.checkpoints.files import FLOAT_DTYPES, Checkpoint, CheckpointError
from vmdiff_jax.checkpoints.rules import AnyRule, Rule, Stacked, param_paths

ShardingFn = Callable[[str, tuple[int, ...]], "jax.sharding.Sharding | None"]


def _never(key: str) -> bool:
    return False


@dataclasses.dataclass(frozen=True)
class Plan:
    """What loading a checkpoint means: an abstract model, {param path: Rule}, keys to ignore."""

    model: nnx.Module
    rules: Mapping[str, AnyRule]
    ignore: Callable[[str], bool] = _never


@dataclasses.dataclass(frozen=True)
class Kind:
    """A kind of checkpoint: detect(keys) says whether a set of keys is this kind;
    build(ckpt, dtype=, strict=, **options) -> Plan.

    strict=False (header checks) may fall back where a value cannot be inferred and does not
    change any shape (the number of heads); options are the kind's overrides (`config=`, ...).
    """

    name: str
    detect: Callable[[Iterable[str]], bool]
    build: Callable[..., Plan]
    default_dtype: object = jnp.float32


def _check_rule(path: str, rule: Rule, want, ckpt: Checkpoint) -> str | None:
    """The problem with making parameter `path` (shape and dtype of `want`) by `rule`, or None."""
    missing = [k for k in rule.sources if k not in ckpt]
    if missing:
        return f"missing key {missing[0]} (for parameter {path}, shape {tuple(want.shape)})"
    bad = [k for k in rule.sources if ckpt[k].dtype not in FLOAT_DTYPES]
    if bad and jnp.issubdtype(want.dtype, jnp.floating):
        return f"key {bad[0]}: dtype {ckpt[bad[0]].dtype} where a float tensor is expected"
    structs = [jax.ShapeDtypeStruct(ckpt[k].shape, jnp.float32) for k in rule.sources]
    try:
        got = jax.eval_shape(lambda *a, _f=rule.fn: _f(jnp, *a), *structs).shape
    except Exception:  # noqa: BLE001 - incompatible source shapes
        got = None
    if got != tuple(want.shape):
        shapes = ", ".join(f"{k} {tuple(ckpt[k].shape)}" for k in rule.sources)
        return f"wrong shape: {shapes} -> parameter {path} needs {tuple(want.shape)}"
    return None


def check(plan: Plan, ckpt: Checkpoint) -> list[str]:
    """Problems that would stop `fill`, from the checkpoint headers alone (no data read).

    Returns a list of one-line messages, each naming a key; empty when it would load. The
    layers of a stacked parameter are checked one by one, under their per-layer names.
    """
    problems: list[str] = []
    used: set[str] = set()
    for path, want in param_paths(plan.model).items():
        rule = plan.rules.get(path)
        if rule is None:
            problems.append(f"parameter {path}: no conversion rule (model/converter mismatch)")
            continue
        used.update(rule.sources)
        if isinstance(rule, Stacked):
            if len(rule.layers) != (want.shape[0] if want.shape else -1):
                problems.append(f"parameter {path} {tuple(want.shape)}: {len(rule.layers)} layers in its rule")
                continue
            layer = jax.ShapeDtypeStruct(want.shape[1:], want.dtype)
            found = [_check_rule(n, r, layer, ckpt) for n, r in zip(rule.names, rule.layers)]
        else:
            found = [_check_rule(path, rule, want, ckpt)]
        problems += [p for p in found if p is not None]
    for k in ckpt:
        if k not in used and not plan.ignore(k):
            problems.append(f"unexpected key {k} {tuple(ckpt[k].shape)} (not used by the model)")
    return problems


def _index_key(index) -> tuple:
    return tuple((s.start, s.stop, s.step) for s in index)


def _producer(rule: Rule, ckpt: Checkpoint, dtype, check_finite: bool, keep: bool = True):
    """produce(index) -> the parameter's slice `index` (None = whole) as a numpy array of `dtype`.

    A rule with `index` reads only the slice of its source; any other rule reads its sources
    whole (once, when `keep`: later slices are cut from the kept result) and slices the result.
    """
    whole: list[np.ndarray] = []

    def compute_whole() -> np.ndarray:
        if whole:
            return whole[0]
        arrays = [ckpt.read(k, check_finite=check_finite) for k in rule.sources]
        a = np.asarray(rule.fn(np, *arrays)).astype(dtype, copy=False)
        if keep:
            whole.append(a)
        return a

    def produce(index):
        if index is None:
            return compute_whole()
        if rule.index is not None:
            (key,) = rule.sources
            src = rule.index(tuple(index), len(ckpt[key].shape))
            a = rule.fn(np, ckpt.read(key, src, check_finite=check_finite))
            return np.ascontiguousarray(np.asarray(a).astype(dtype, copy=False))
        return np.ascontiguousarray(compute_whole()[tuple(index)])

    return produce


def _stacked_producer(rule: Stacked, ckpt: Checkpoint, dtype, check_finite: bool):
    """produce(index) for a stacked parameter: index = (layers, *inner) is filled layer by layer,
    each layer's slice `inner` made by its own rule (so an indexed layer reads only that slice)."""
    layers = [_producer(r, ckpt, dtype, check_finite) for r in rule.layers]

    def produce(index):
        picked = range(*index[0].indices(len(layers)))
        inner = tuple(index[1:])
        out = None
        for j, i in enumerate(picked):
            a = layers[i](inner)
            if out is None:
                out = np.empty((len(picked),) + a.shape, a.dtype)
            out[j] = a
        return out

    return produce


@functools.partial(jax.jit, donate_argnums=0)
def _set_layer(stacked, i, layer):
    return jax.lax.dynamic_update_index_in_dim(stacked, layer, i, 0)


HOST_STACK_BYTES = 16 << 20  # stacked parameters up to this size are assembled on the host


def _place_stacked(rule: Stacked, ckpt: Checkpoint, want, check_finite: bool) -> jax.Array:
    """A stacked parameter on the default device. Over HOST_STACK_BYTES it is written into its
    device buffer one layer at a time (donated updates: the device holds the parameter and one
    layer, the host one layer; one small compilation per shape and dtype; each layer travels as
    its rule made it, a transposed view laid out by the transfer, faster than numpy would).
    Smaller ones (biases, norms, small kernels) are assembled on the host and placed at once."""
    layers = [_producer(r, ckpt, want.dtype, check_finite, keep=False) for r in rule.layers]
    if want.size * np.dtype(want.dtype).itemsize <= HOST_STACK_BYTES:
        host = np.empty(want.shape, want.dtype)
        for i, produce in enumerate(layers):
            host[i] = produce(None)
        return jnp.asarray(host)
    out = jnp.zeros(want.shape, want.dtype)
    for i, produce in enumerate(layers):
        out = _set_layer(out, i, produce(None))
    return out


def fill(
    plan: Plan,
    ckpt: Checkpoint,
    *,
    sharding: ShardingFn | None = None,
    check_finite: bool = True,
    progress: bool = False,
) -> nnx.Module:
    """`plan.model` with every parameter read from `ckpt`, cast to the abstract parameter's dtype.

    sharding(path, shape) -> Sharding places a parameter (default: the default device); each
    process then reads only the slices its addressable devices hold, once per distinct slice.
    check_finite: a NaN or Inf in a float tensor stops the load naming the tensor. Raises
    CheckpointError naming the first problem `check` finds, before any tensor is read.
    """
    problems = check(plan, ckpt)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise CheckpointError(f"{ckpt.source}: {problems[0]}{more}")
    graphdef, params, rest = nnx.split(plan.model, nnx.Param, ...)
    flat = list(nnx.to_flat_state(params))
    items: Iterable = flat
    if progress:
        from tqdm import tqdm

        items = tqdm(flat, desc=f"loading {ckpt.source.name}", unit="tensor")
    new = []
    for path, var in items:
        name = ".".join(str(p) for p in path)
        want = var.get_value() if hasattr(var, "get_value") else var.value
        rule = plan.rules[name]
        stacked = isinstance(rule, Stacked)
        s = sharding(name, tuple(want.shape)) if sharding is not None else None
        if s is None and stacked:
            arr = _place_stacked(rule, ckpt, want, check_finite)
        elif s is None:
            arr = jnp.asarray(_producer(rule, ckpt, want.dtype, check_finite)(None))
        else:
            produce = (_stacked_producer if stacked else _producer)(rule, ckpt, want.dtype, check_finite)
            slices: dict[tuple, np.ndarray] = {}

            def callback(index, _produce=produce, _slices=slices):
                k = _index_key(index)
                if k not in _slices:
                    _slices[k] = _produce(index)
                return _slices[k]

            arr = jax.make_array_from_callback(tuple(want.shape), s, callback)
            del slices
        new.append((path, var.replace(arr)))
    return nnx.merge(graphdef, nnx.from_flat_state(new), rest)

"""Filling an abstract Flax NNX model from a checkpoint, one parameter at a time.

A checkpoint kind (`Kind`) detects itself from the keys and builds a `Plan`: the model built
abstractly (`nnx.eval_shape`, nothing allocated) in the dtypes it should have, a `Rule` per
parameter, and the checkpoint keys it ignores. `check` lists every problem from the headers
alone (what `vmdiff convert --check` prints); `fill` refuses any of them before reading a
byte, then streams each parameter in: read its sources (or, on a mesh, only the slices this
process's devices hold), check them finite, convert with numpy, cast to the abstract
parameter's dtype, place.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Iterable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vmdiff_jax.checkpoints.files import FLOAT_DTYPES, Checkpoint, CheckpointError
from vmdiff_jax.checkpoints.rules import Rule, param_paths

ShardingFn = Callable[[str, tuple[int, ...]], "jax.sharding.Sharding | None"]


def _never(key: str) -> bool:
    return False


@dataclasses.dataclass(frozen=True)
class Plan:
    """What loading a checkpoint means: an abstract model, {param path: Rule}, keys to ignore."""

    model: nnx.Module
    rules: Mapping[str, Rule]
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


def check(plan: Plan, ckpt: Checkpoint) -> list[str]:
    """Problems that would stop `fill`, from the checkpoint headers alone (no data read).

    Returns a list of one-line messages, each naming a key; empty when it would load.
    """
    problems: list[str] = []
    used: set[str] = set()
    for path, want in param_paths(plan.model).items():
        rule = plan.rules.get(path)
        if rule is None:
            problems.append(f"parameter {path}: no conversion rule (model/converter mismatch)")
            continue
        missing = [k for k in rule.sources if k not in ckpt]
        used.update(rule.sources)
        if missing:
            problems.append(f"missing key {missing[0]} (for parameter {path}, shape {tuple(want.shape)})")
            continue
        bad = [k for k in rule.sources if ckpt[k].dtype not in FLOAT_DTYPES]
        if bad and jnp.issubdtype(want.dtype, jnp.floating):
            problems.append(f"key {bad[0]}: dtype {ckpt[bad[0]].dtype} where a float tensor is expected")
            continue
        structs = [jax.ShapeDtypeStruct(ckpt[k].shape, jnp.float32) for k in rule.sources]
        try:
            got = jax.eval_shape(lambda *a, _f=rule.fn: _f(jnp, *a), *structs).shape
        except Exception:  # noqa: BLE001 - incompatible source shapes
            got = None
        if got != tuple(want.shape):
            shapes = ", ".join(f"{k} {tuple(ckpt[k].shape)}" for k in rule.sources)
            problems.append(f"wrong shape: {shapes} -> parameter {path} needs {tuple(want.shape)}")
    for k in ckpt:
        if k not in used and not plan.ignore(k):
            problems.append(f"unexpected key {k} {tuple(ckpt[k].shape)} (not used by the model)")
    return problems


def _index_key(index) -> tuple:
    return tuple((s.start, s.stop, s.step) for s in index)


def _producer(rule: Rule, ckpt: Checkpoint, dtype, check_finite: bool):
    """produce(index) -> the parameter's slice `index` (None = whole) as a numpy array of `dtype`.

    A rule with `index` reads only the slice of its source; any other rule reads its sources
    whole once and slices the result.
    """
    whole: list[np.ndarray] = []

    def compute_whole() -> np.ndarray:
        if not whole:
            arrays = [ckpt.read(k, check_finite=check_finite) for k in rule.sources]
            whole.append(np.asarray(rule.fn(np, *arrays)).astype(dtype, copy=False))
        return whole[0]

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
        produce = _producer(plan.rules[name], ckpt, want.dtype, check_finite)
        s = sharding(name, tuple(want.shape)) if sharding is not None else None
        if s is None:
            arr = jnp.asarray(produce(None))
        else:
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

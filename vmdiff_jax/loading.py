"""Filling an abstract Flax NNX model from a checkpoint, one tensor at a time.

A model is built abstractly (`nnx.eval_shape`), so no parameter is allocated twice.
Each of its parameters, named by its dotted NNX path (`double_blocks.0.img_attn.qkv.kernel`),
has a `Rule`: the checkpoint keys it is made from and a function of those arrays written
against an array namespace `xp` (numpy when loading, jax.numpy under `jax.eval_shape`
when checking shapes from headers alone). Every checkpoint key must be consumed by some
rule (or ignored explicitly) and every parameter filled; anything else is an error that
names the key.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Iterable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vmdiff_jax.safetensors_io import DTYPES, Checkpoint, CheckpointError

Fn = Callable[..., "np.ndarray"]


@dataclasses.dataclass(frozen=True)
class Rule:
    """One parameter of ours = fn(xp, *tensors at `sources`)."""

    sources: tuple[str, ...]
    fn: Fn = staticmethod(lambda xp, a: a)


def same(key: str) -> Rule:
    """Copied as is (biases, norms, embeddings)."""
    return Rule((key,))


def linear(key: str) -> Rule:
    """torch Linear weight (out, in) -> Flax kernel (in, out)."""
    return Rule((key,), lambda xp, w: xp.transpose(w))


def linear_cat(keys: Sequence[str]) -> Rule:
    """Several torch Linear weights fused along `out` (q, k, v [, mlp]) -> one kernel."""
    return Rule(tuple(keys), lambda xp, *ws: xp.transpose(xp.concatenate(ws, axis=0)))


def cat(keys: Sequence[str]) -> Rule:
    """Several 1-D tensors (biases) concatenated."""
    return Rule(tuple(keys), lambda xp, *bs: xp.concatenate(bs, axis=0))


def conv(key: str) -> Rule:
    """torch Conv2d weight (O, I, kh, kw) -> Flax kernel (kh, kw, I, O)."""
    return Rule((key,), lambda xp, w: xp.transpose(w, (2, 3, 1, 0)))


def swap_halves(rule: Rule, axis: int = -1) -> Rule:
    """The same rule with the two halves of `axis` exchanged ((a, b) -> (b, a))."""

    def fn(xp, *arrays):
        y = rule.fn(xp, *arrays)
        a, b = xp.split(y, 2, axis=axis)
        return xp.concatenate([b, a], axis=axis)

    return Rule(rule.sources, fn)


def param_paths(model: nnx.Module) -> dict[str, jax.ShapeDtypeStruct]:
    """{dotted path: ShapeDtypeStruct} of every nnx.Param of a (possibly abstract) model."""
    out = {}
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        v = var.get_value() if hasattr(var, "get_value") else var.value
        out[".".join(str(p) for p in path)] = jax.ShapeDtypeStruct(v.shape, v.dtype)
    return out


def _expected_float(dtype_name: str) -> bool:
    return bool(jnp.issubdtype(DTYPES[dtype_name], jnp.floating))  # bf16 / float8 included


def check(
    model: nnx.Module,
    rules: Mapping[str, Rule],
    ckpt: Checkpoint,
    ignore: Callable[[str], bool] = lambda k: False,
) -> list[str]:
    """Problems that would stop `fill`, from the checkpoint headers alone (no data read).

    Returns a list of one-line messages, each naming a key; empty when it would load.
    """
    problems: list[str] = []
    params = param_paths(model)
    used: set[str] = set()
    for path, want in params.items():
        rule = rules.get(path)
        if rule is None:
            problems.append(f"parameter {path}: no conversion rule (model/converter mismatch)")
            continue
        missing = [k for k in rule.sources if k not in ckpt]
        used.update(rule.sources)
        if missing:
            problems.append(f"missing key {missing[0]} (for parameter {path}, shape {tuple(want.shape)})")
            continue
        bad = [k for k in rule.sources if not _expected_float(ckpt[k].dtype)]
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
        if k not in used and not ignore(k):
            problems.append(f"unexpected key {k} {tuple(ckpt[k].shape)} (not used by the model)")
    return problems


def fill(
    model: nnx.Module,
    rules: Mapping[str, Rule],
    ckpt: Checkpoint,
    *,
    dtype=None,
    ignore: Callable[[str], bool] = lambda k: False,
    sharding: Callable[[str, tuple[int, ...]], jax.sharding.Sharding | None] | None = None,
    progress: bool = False,
):
    """Return `model` (abstract) with every parameter read from `ckpt`.

    Reads one rule's tensors at a time, converts on the host with numpy, casts float
    parameters to `dtype` (default: the abstract parameter's dtype) and places them with
    `sharding(path, shape)` (default: the default device). Raises CheckpointError naming
    the first problem `check` finds, before any tensor is read.
    """
    problems = check(model, rules, ckpt, ignore)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise CheckpointError(f"{ckpt.source}: {problems[0]}{more}")
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    flat = nnx.to_flat_state(params)
    items: Iterable = flat
    if progress:
        from tqdm import tqdm

        items = tqdm(list(flat), desc=f"loading {ckpt.source.name}", unit="tensor")
    new = []
    for path, var in items:
        name = ".".join(str(p) for p in path)
        rule = rules[name]
        a = rule.fn(np, *[ckpt.load(k) for k in rule.sources])
        want = var.get_value() if hasattr(var, "get_value") else var.value
        target = dtype if (dtype is not None and jnp.issubdtype(want.dtype, jnp.floating)) else want.dtype
        a = np.asarray(a).astype(target, copy=False)
        s = sharding(name, a.shape) if sharding is not None else None
        arr = jax.device_put(a, s) if s is not None else jnp.asarray(a)
        new.append((path, var.replace(arr)))
        del a
    params = nnx.from_flat_state(new)
    return nnx.merge(graphdef, params, rest)


def unknown_params(model: nnx.Module, rules: Mapping[str, Rule]) -> list[str]:
    """Parameters of `model` without a rule (for converter self-tests)."""
    return [p for p in param_paths(model) if p not in rules]


@dataclasses.dataclass(frozen=True)
class CheckpointKind:
    """A kind of checkpoint `vmdiff convert --check` recognises.

    detect(keys) says whether a key set is this kind; build(ckpt) returns
    (abstract_model, rules, ignore) for `check`/`fill`, inferring the config from shapes.
    """

    name: str
    detect: Callable[[set[str]], bool]
    build: Callable[[Checkpoint], tuple[nnx.Module, Mapping[str, Rule], Callable[[str], bool]]]

"""SPMD placement on a jax Mesh with named axes: 'data' (candidates, pairs) and 'fsdp' (parameters).

Data parallelism over the candidates of a search round is the cheap default (parameters
replicated); parameters are FSDP-sharded over 'fsdp' when they do not fit one device
(e.g. the 12B FLUX transformer in bf16 on a 16 GB TPU v5e chip). Logical axis rules name
what each array axis means, so the same code runs on 1 CPU, 8 GPUs or a TPU slice.

The layer axis of stacked FLUX blocks (`double_blocks.img_attn.qkv.kernel` (depth, in, out),
nn/flux.py) is never sharded: the scan over the layers slices it, and each layer is sharded
(and its size judged) as the unrolled model's layer would be.
"""

from __future__ import annotations

import math
from typing import Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from vmdiff_jax.nn.flux import layer_axes

DATA, FSDP = "data", "fsdp"

# logical axis name -> mesh axis (None = replicated)
LOGICAL_AXIS_RULES: tuple[tuple[str, str | None], ...] = (
    ("candidates", DATA),
    ("pairs", DATA),
    ("params", FSDP),
    ("tokens", None),
    ("embed", None),
)


def make_mesh(data: int | None = None, fsdp: int = 1, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A (data, fsdp) mesh over `devices` (default: all); data defaults to len(devices) // fsdp."""
    devices = list(devices if devices is not None else jax.devices())
    if data is None:
        data = len(devices) // fsdp
    if data * fsdp != len(devices):
        raise ValueError(f"mesh {data} x {fsdp} does not match {len(devices)} devices")
    return Mesh(np.asarray(devices).reshape(data, fsdp), (DATA, FSDP))


def logical_to_spec(names: Sequence[str | None], rules=LOGICAL_AXIS_RULES) -> P:
    """PartitionSpec for an array whose axes carry the given logical names."""
    table = dict(rules)
    return P(*(table.get(n) if n is not None else None for n in names))


def param_spec(shape: Sequence[int], fsdp: int, min_size: int = 2**18, skip: int = 0) -> P:
    """FSDP rule for one parameter: shard its largest axis divisible by `fsdp` when it is big
    enough to matter (>= min_size elements); small ones (norms, biases) stay replicated.
    skip: leading axes never sharded nor counted in the size (the layer axis of stacked blocks)."""
    if fsdp <= 1 or math.prod(shape[skip:]) < min_size:
        return P()
    for ax in sorted(range(skip, len(shape)), key=lambda a: -shape[a]):
        if shape[ax] % fsdp == 0:
            spec = [None] * len(shape)
            spec[ax] = FSDP
            return P(*spec)
    return P()


def param_sharding_fn(mesh: Mesh, min_size: int = 2**18):
    """`sharding(path, shape)` callback for `loading.fill`: replicated, or FSDP when mesh has fsdp > 1."""
    fsdp = mesh.shape[FSDP]

    def fn(path: str, shape):
        return NamedSharding(mesh, param_spec(shape, fsdp, min_size, layer_axes(path)))

    return fn


def shard_model(model: nnx.Module, mesh: Mesh, min_size: int = 2**18) -> nnx.Module:
    """Place an existing model's parameters on `mesh` (replicated / FSDP by param_spec)."""
    graphdef, state = nnx.split(model)
    return nnx.merge(graphdef, place_state(state, mesh, min_size))


def candidates_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
    """Sharding of a (n, ...) batch of candidates over 'data'."""
    return NamedSharding(mesh, logical_to_spec(("candidates",) + (None,) * (ndim - 1)))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def pad_to_multiple(x: np.ndarray, k: int) -> tuple[np.ndarray, int]:
    """Pad axis 0 to a multiple of k by repeating the last row; returns (padded, original n)."""
    n = x.shape[0]
    m = -(-n // k) * k
    if m == n:
        return x, n
    return np.concatenate([x, np.repeat(x[-1:], m - n, axis=0)], axis=0), n


def place_state(state, mesh: Mesh, min_size: int = 2**18):
    """device_put every array of an nnx State by `param_spec` (replicated when the mesh's fsdp is 1)."""
    fsdp = mesh.shape[FSDP]

    def put(path, x):
        name = jax.tree_util.keystr(path, simple=True, separator=".")
        return jax.device_put(x, NamedSharding(mesh, param_spec(x.shape, fsdp, min_size, layer_axes(name))))

    return jax.tree_util.tree_map_with_path(put, state)


def device_memory_bytes(device: jax.Device | None = None) -> int | None:
    """Memory of one accelerator (bytes_limit), or None where the backend does not say (CPU)."""
    device = device or jax.local_devices()[0]
    try:
        stats = device.memory_stats()
    except Exception:  # noqa: BLE001 - not implemented on some backends
        return None
    return int(stats["bytes_limit"]) if stats and "bytes_limit" in stats else None



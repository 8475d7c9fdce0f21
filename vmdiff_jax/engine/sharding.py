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


def fsdp_sizes(n_devices: int) -> list[int]:
    """The powers of two dividing n_devices, ascending (the 'fsdp' sizes `auto_fsdp` considers)."""
    sizes = [1]
    while n_devices % (sizes[-1] * 2) == 0:
        sizes.append(sizes[-1] * 2)
    return sizes


def auto_fsdp(flux, dtype, n_devices: int, headroom: float = 0.6, device_memory: int | None = None, *,
              models: dict | None = None, weights: dict | None = None, other_dtype=None, attention: str | None = None,
              cfg=None, devices: Sequence[jax.Device] | None = None, platform: str | None = None,
              record: dict | None = None, log=None) -> int:
    """`--fsdp auto`: the smallest power of two dividing n_devices for which a run fits one
    device's memory (`device_memory`, default: the first local device's). `vmdiff plan` and
    `VMDiff.from_pretrained` both choose with it.

    Compiled (on an accelerator: a memory figure and a `platform` other than 'cpu', default the
    backend's; the run's networks given and its HSPConfig `cfg`): each size in turn is a mesh of
    `devices` (default: the local ones) on which `targets.fsdp_fits` compiles the BNoise and
    MDeNoise calls, one candidate a 'data' row, and checks every network's parameters on a chip
    plus each call's temporaries and outputs against the memory (what the compiler refuses for
    lack of memory does not fit); a size whose parameters alone exceed it is not compiled; if
    none fits, the largest. Networks: `models` ({name: abstract or loaded module}, 'flux' and
    'vae' at least), or `weights` (the checkpoint paths of `find_weights`, built abstractly:
    FLUX as `dtype`, the others as `other_dtype`; `attention` FLUX's kernel).

    Estimate (on CPU, without the networks, or when a call does not compile for another reason):
    the FLUX weights (`flux`: its checkpoint path, or the Flux module), in the bytes they will
    have once loaded as `dtype` (e.g. "fp8": float8 block kernels), under `headroom` of one
    device's memory. 1 when the memory is unknown (CPU) or on one device.

    record: filled with 'from' ('compiled' | 'estimate' | 'one device or no memory figure'),
    'tried' ({fsdp: why}) and 'compiled' ({fsdp: {stage: targets.Compiled}}), for the plan;
    log: a line per compiled call."""
    rec = record if record is not None else {}
    rec.update(tried={}, compiled={})
    mem = device_memory if device_memory is not None else device_memory_bytes()
    if mem is None or n_devices == 1:
        rec["from"] = "one device or no memory figure"
        return 1
    sizes = fsdp_sizes(n_devices)
    platform = platform or jax.default_backend()
    if platform != "cpu" and cfg is not None and (models is not None or weights is not None):
        from vmdiff_jax.engine import targets

        if models is None:
            models = checkpoint_models(weights, other_dtype, dtype, attention)
        fits = targets.fsdp_fits(models, cfg, list(devices if devices is not None else jax.local_devices()), mem,
                                 platform, log=log)
        for f in sizes:
            fit = fits(f)
            rec["tried"][f], rec["compiled"][f] = fit.why, fit.compiled
            if fit.ok is None:  # a call does not compile here: the estimate below
                break
            if fit.ok or f == sizes[-1]:
                rec["from"] = "compiled"
                return f
    rec["from"] = "estimate"
    need = _flux_bytes(flux, dtype)
    fsdp = 1
    while need / fsdp > headroom * mem and fsdp * 2 in sizes:
        fsdp *= 2
    return fsdp


def _flux_bytes(flux, dtype) -> int:
    """Bytes of the FLUX weights: of a Flux module's state, or of a checkpoint once loaded as dtype."""
    if isinstance(flux, nnx.Module):
        return sum(math.prod(x.shape) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(nnx.state(flux)))
    from vmdiff_jax.checkpoints.files import open_checkpoint
    from vmdiff_jax.checkpoints.flux import build
    from vmdiff_jax.checkpoints.rules import param_paths

    model = build(open_checkpoint(flux), dtype=dtype, strict=False).model
    return sum(math.prod(s.shape) * np.dtype(s.dtype).itemsize for s in param_paths(model).values())


def checkpoint_models(weights: dict, dtype, flux_dtype, attention: str | None = None) -> dict:
    """The run's networks built abstractly (nothing read but the headers) from the checkpoint
    paths `find_weights` gives: {'flux', 'vae', 'redux', 'siglip', 'clip_l', 'dinov2',
    'clip_bigg'}, FLUX in flux_dtype (a dtype or 'fp8'), the others in dtype."""
    from pathlib import Path

    from vmdiff_jax.checkpoints import encoders, registry
    from vmdiff_jax.checkpoints.files import open_checkpoint

    def build(path, kinds, dt, **options):
        ckpt = open_checkpoint(path)
        return registry.kind_of(ckpt, kinds).build(ckpt, dtype=dt, strict=False, **options).model

    bigg = Path(weights["clip_bigg"])
    if bigg.is_dir() and (bigg / "open_clip_model.safetensors").is_file():
        bigg = bigg / "open_clip_model.safetensors"
    return {"flux": build(weights["flux"], registry.FLUX, flux_dtype, attention_impl=attention),
            "vae": build(weights["vae"], registry.VAE, dtype),
            "redux": build(weights["redux"], encoders.REDUX, dtype),
            "siglip": build(weights["siglip"], encoders.SIGLIP, dtype),
            "clip_l": build(weights["clip_l"], encoders.CLIP_L, dtype),
            "dinov2": build(weights["dinov2"], encoders.DINOV2, dtype),
            "clip_bigg": build(bigg, registry.CLIP_BIGG, dtype)}

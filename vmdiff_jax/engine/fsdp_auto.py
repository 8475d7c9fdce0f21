"""`--fsdp auto`: the smallest 'fsdp' axis a run fits with, chosen by compiling its FLUX stages
for the run's devices (targets.fsdp_fits) where it can, else estimated from the FLUX weights'
bytes. `VMDiff.from_pretrained` and `vmdiff plan` both choose with `auto_fsdp`."""

from __future__ import annotations

import math
from typing import Sequence

import jax
import numpy as np
from flax import nnx

from vmdiff_jax.engine import targets
from vmdiff_jax.engine.sharding import device_memory_bytes


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

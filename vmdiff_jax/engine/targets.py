"""Compiling the stages for a target, not for the host: a TPU topology's compile-only devices
(libtpu's compiler runs on any CPU machine) or the local devices, with the mesh a run would use.

`Target` names a slice (`TARGETS`: v5e-1 .. v5p-8) with its chip's vendor figures; `devices`
gives its compile-only devices; `compile_stage` lowers and compiles one jitted stage on abstract
arguments (ShapeDtypeStructs carrying their shardings: nothing is allocated) under
`nn.math.compiling_for(platform)`, so 'auto' attention and splash's interpret mode resolve for the
target, and returns the compiler's own memory and cost analyses with the bytes its collectives
move (read from the compiled HLO) and the compile time.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import math
import os
import re
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding

from vmdiff_jax.engine import sharding
from vmdiff_jax.nn.flux import layer_axes
from vmdiff_jax.nn.math import compiling_for

GIB = 2**30
INSTALL_HINT = 'the TPU compiler (libtpu) is not installed: pip install -e ".[tpu]" (or pip install "jax[tpu]")'


@dataclasses.dataclass(frozen=True)
class Target:
    """A TPU slice: topology string of jax.experimental.topologies, chips, per-chip HBM bytes,
    peak bf16 FLOP/s, ICI bytes/s (one direction) and HBM bytes/s (vendor figures)."""

    name: str
    topology: str
    chips: int
    hbm_bytes: int
    peak_flops: float
    link_bytes_s: float
    hbm_bytes_s: float
    single_host_bounds: tuple[int, int, int] | None = None  # for 1-chip slices
    chip_config: str | None = None  # v4: "megacore" (one device a chip, its two TensorCores together, as on a v4 VM)

    @property
    def platform(self) -> str:
        return "tpu"


def _t(name, topo, chips, hbm_gib, peak, link, hbm_bw, bounds=None, chip_config=None):
    return Target(name, topo, chips, int(hbm_gib * GIB), peak, link, hbm_bw, bounds, chip_config)


TARGETS = {t.name: t for t in (
    _t("v5e-1", "v5e:1x1", 1, 15.75, 197e12, 200e9, 819e9, (1, 1, 1)),  # 15.75 GiB: what the compiler allows of 16
    _t("v5e-4", "v5e:2x2", 4, 15.75, 197e12, 200e9, 819e9),
    _t("v5e-8", "v5e:2x4", 8, 15.75, 197e12, 200e9, 819e9),
    _t("v6e-1", "v6e:1x1", 1, 32, 918e12, 448e9, 1640e9, (1, 1, 1)),
    _t("v6e-4", "v6e:2x2", 4, 32, 918e12, 448e9, 1640e9),
    _t("v6e-8", "v6e:2x4", 8, 32, 918e12, 448e9, 1640e9),
    _t("v4-8", "v4:2x2x1", 4, 32, 275e12, 270e9, 1200e9, chip_config="megacore"),  # else 8 devices, one a core
    _t("v5p-8", "v5p:2x2x1", 4, 95, 459e12, 540e9, 2765e9),
)}


def libtpu_available() -> bool:
    return importlib.util.find_spec("libtpu") is not None


@contextlib.contextmanager
def _quiet_stderr():
    """libtpu prints its metadata-server warnings on fd 2 while it starts: hide them."""
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def devices(target: Target) -> list:
    """The slice's compile-only TPU devices (RuntimeError with the install hint without libtpu)."""
    if not libtpu_available():
        raise RuntimeError(INSTALL_HINT)
    # compile-only devices touch no chip: several processes (pytest -n 2, a plan beside a test run)
    # may load libtpu at once, which its lockfile would otherwise refuse
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    from jax.experimental import topologies

    kw = {"chips_per_host_bounds": target.single_host_bounds} if target.single_host_bounds else {}
    if target.chip_config:
        kw["chip_config_name"] = target.chip_config
    with _quiet_stderr():
        topo = topologies.get_topology_desc(target.topology, "tpu", **kw)
    devs = list(topo.devices)
    if len(devs) != target.chips:
        raise RuntimeError(f"{target.name}: the compiler gives {len(devs)} devices, expected {target.chips}")
    return devs


def abstract_state(model: nnx.Module, mesh, min_size: int = 2**18):
    """(graphdef, state) of an abstract (or loaded) model with every parameter a ShapeDtypeStruct
    carrying the placement a run gives it (`sharding.place_state`: replicated, or FSDP over the
    mesh's 'fsdp'; the layer axis of stacked blocks never sharded nor counted)."""
    graphdef, state = nnx.split(model)
    fsdp = mesh.shape[sharding.FSDP]

    def place(path, x):
        name = jax.tree_util.keystr(path, simple=True, separator=".")
        spec = sharding.param_spec(x.shape, fsdp, min_size, layer_axes(name))
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=NamedSharding(mesh, spec))

    return graphdef, jax.tree_util.tree_map_with_path(place, state)



def rows(mesh, shape, dtype):
    """An abstract batch of candidate rows (n, ...) split over 'data' (unplaced without a mesh)."""
    sh = sharding.candidates_sharding(mesh, len(shape)) if mesh is not None else None
    return jax.ShapeDtypeStruct(shape, dtype, sharding=sh)

def resident_bytes(models: dict, mesh) -> dict[str, int]:
    """{name: bytes of that network's parameters on one chip} as a run places them on `mesh`
    (every network of a run stays resident on the devices, runner.StageRunner)."""
    return {k: sum(_per_device_bytes(x) for x in jax.tree.leaves(abstract_state(m, mesh)[1])) for k, m in models.items()}


def context_tokens(models: dict, default: int = 729) -> int:
    """Redux context tokens of one image from the networks' SigLIP tower (its patch grid, squared)."""
    tower = getattr(models.get("redux"), "siglip", None) or models.get("siglip")
    return tower.cfg.grid ** 2 if tower is not None else default


def stage_calls(name: str, hsp_cfg, models, mesh, n: int, ctx: int = 729, objects: int = 2):
    """(jitted stage, abstract args, kwargs, model parts count) of one stage for n candidate rows
    (`models`: the networks the stage takes, abstract or loaded; ctx: Redux tokens an image;
    bnoise / mdenoise: of `objects` token sets each)."""
    from vmdiff_jax.engine import stages
    from vmdiff_jax.method.hsp import seq_len

    st = {k: abstract_state(m, mesh) for k, m in models.items()}
    size, r = hsp_cfg.size, (lambda shape, dt: rows(mesh, shape, dt))
    flux, vae = models["flux"].cfg, models["vae"].cfg
    seq, ch, width, dy = seq_len(size, vae.downsample_factor), flux.in_channels, flux.context_in_dim, flux.vec_in_dim
    img = r((n, size, size, 3), jnp.uint8)
    if name == "condition":
        return stages.condition, (*st["redux"], img), {}, 2
    if name == "pooled_text":
        return stages.pooled_text, (*st["clip_l"], r((n, 77), jnp.int32)), {}, 2
    if name == "text_embed":
        return stages.text_embed, (*st["clip_bigg"], r((n, 77), jnp.int32)), {}, 2
    if name == "dino_patches":
        return stages.dino_patches, (*st["dinov2"], img), {}, 2
    if name == "features":
        w = r((n, 224, size), jnp.int32)
        return stages.features, (*st["dinov2"], *st["clip_bigg"], img, w, w), {}, 4
    cs = r((n, objects, ctx, width), jnp.bfloat16)
    eps, y, w = r((n, seq, ch), jnp.float32), r((n, dy), jnp.bfloat16), r((n, objects), jnp.float32)
    if name == "bnoise":
        return stages.bnoise, (*st["flux"], eps, cs, w, y), {"cfg": hsp_cfg}, 2
    if name == "mdenoise":
        return stages.mdenoise, (*st["flux"], *st["vae"], eps, cs, w, y), {"cfg": hsp_cfg}, 4
    raise ValueError(f"unknown stage {name!r}; stages are {tuple(stages.STAGES)}")


def out_of_memory(error: str | None) -> bool:
    """Whether a compiler's refusal is for lack of device memory (RESOURCE_EXHAUSTED: ... HBM)."""
    return bool(error) and ("RESOURCE_EXHAUSTED" in error or "out of memory" in error.lower())


FIT_STAGES = ("bnoise", "mdenoise")


class Fit(NamedTuple):
    """One mesh's verdict (`fsdp_fits`): ok True / False / None (could not compile), why (a
    line), need (bytes a chip: every network's parameters, plus the largest call's
    temporaries and outputs once compiled) and the compiled calls {stage: Compiled}."""

    ok: bool | None
    why: str
    need: int
    compiled: dict


def fsdp_fits(models: dict, cfg, devices: list, memory_bytes: int, platform: str, log=None):
    """`fits(fsdp) -> Fit`: whether a run with the networks `models` (abstract or loaded;
    'flux' and 'vae' at least, the others counted as resident parameters) and HSPConfig `cfg`
    fits `memory_bytes` a device on `devices` as a (len(devices) / fsdp data) x (fsdp) mesh:
    every network's parameters on a chip, and the compiled BNoise and MDeNoise calls with one
    candidate a 'data' row (`stage_calls`), each's peak less its own parameters
    plus all of them, within memory_bytes. Not ok when the parameters alone exceed it (nothing
    compiled), a call needs more, or the compiler refuses for lack of memory; None when a call
    does not compile for another reason (the caller falls back to an estimate)."""
    ctx = context_tokens(models)
    gb = lambda b: f"{b / 1e9:.2f} GB"

    def fits(fsdp: int) -> Fit:
        mesh = sharding.make_mesh(data=len(devices) // fsdp, fsdp=fsdp, devices=devices)
        resident = sum(resident_bytes(models, mesh).values())
        if resident > memory_bytes:
            return Fit(False, f"parameters {gb(resident)} a chip > {gb(memory_bytes)}", resident, {})
        got, need = {}, resident
        for name in FIT_STAGES:
            fn, args, kw, parts = stage_calls(name, cfg, {"flux": models["flux"], "vae": models["vae"]}, mesh,
                                              mesh.shape[sharding.DATA], ctx=ctx)
            c = got[name] = compile_stage(fn, args, kw, platform=platform, param_arg_count=parts)
            if log is not None:
                log(f"--fsdp auto: fsdp {fsdp}, {name} compiled in {c.compile_s:.1f} s" + (f": {c.error}" if c.error else ""))
            if c.error is not None:
                return Fit(False if out_of_memory(c.error) else None, f"{name}: {c.error}", need, got)
            need = max(need, c.peak_bytes - c.parameters_bytes + resident)
            if need > memory_bytes:
                return Fit(False, f"{name} needs {gb(need)} a chip > {gb(memory_bytes)}", need, got)
        return Fit(True, f"needs {gb(need)} a chip (parameters {gb(resident)}) <= {gb(memory_bytes)}", need, got)

    return fits


_COLLECTIVE = re.compile(r"=\s*(\(?[^=]*?\)?)\s+(all-gather|all-reduce|reduce-scatter|all-to-all|collective-permute)"
                         r"(?:-start)?\(")
_ARRAY = re.compile(r"(pred|s8|u8|s16|u16|s32|u32|s64|u64|bf16|f16|f32|f64|f8e4m3fn|f8e5m2)\[([0-9,]*)\]")
_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "bf16": 2, "f16": 2, "s32": 4, "u32": 4, "f32": 4,
          "s64": 8, "u64": 8, "f64": 8, "f8e4m3fn": 1, "f8e5m2": 1}


def collective_bytes(hlo_text: str) -> dict[str, int]:
    """{collective op: bytes of its results summed over the program text} (loop bodies once)."""
    out: dict[str, int] = {}
    for m in _COLLECTIVE.finditer(hlo_text):
        shapes, op = m.group(1), m.group(2)
        n = sum(_BYTES[t] * math.prod(int(d) for d in dims.split(",") if d) for t, dims in _ARRAY.findall(shapes))
        out[op] = out.get(op, 0) + n
    return out


@dataclasses.dataclass
class Compiled:
    """What the compiler says about one stage on one target (per chip; cost of the program as
    written: a while loop's body counted once)."""

    parameters_bytes: int
    temp_bytes: int
    output_bytes: int
    peak_bytes: int
    flops: float
    optimal_seconds: float | None
    collectives: dict[str, int]
    compile_s: float
    error: str | None = None


def compile_stage(fn, args: tuple, kwargs: dict | None = None, platform: str = "tpu", param_arg_count: int = 0) -> Compiled:
    """Lower and compile jitted `fn(*args, **kwargs)` on abstract args for `platform`.

    param_arg_count: how many leading args are model (graphdef, state) parts; the parameter bytes
    are the compiled program's argument bytes minus the other (input) args. A compiler refusal (e.g. RESOURCE_EXHAUSTED:
    out of HBM) is returned as `error`, not raised."""
    t0 = time.perf_counter()
    try:
        with compiling_for(platform), mesh_context(_mesh_of(args)), _quiet_stderr():
            compiled = fn.trace(*args, **(kwargs or {})).lower().compile()
    except Exception as e:  # noqa: BLE001 - the compiler's refusal is a result
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return Compiled(0, 0, 0, 0, 0.0, None, {}, time.perf_counter() - t0, error=msg[:400])
    dt = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    cost = compiled.cost_analysis() or {}
    if isinstance(cost, list):
        cost = cost[0] if cost else {}
    # parameters as the compiler keeps them: the argument bytes less the input rows (unused weights,
    # e.g. CLIP's vision tower in text_embed, are pruned from the program)
    inputs = sum(_per_device_bytes(x) for a in args[param_arg_count:] for x in jax.tree.leaves(a))
    params = max(0, int(mem.argument_size_in_bytes) - inputs)
    opt = cost.get("optimal_seconds")
    return Compiled(parameters_bytes=int(params), temp_bytes=int(mem.temp_size_in_bytes),
                    output_bytes=int(mem.output_size_in_bytes),
                    peak_bytes=int(mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes
                                   - mem.alias_size_in_bytes),
                    flops=float(cost.get("flops", 0.0)), optimal_seconds=None if opt is None else float(opt),
                    collectives=collective_bytes(compiled.as_text()), compile_s=dt)


def _mesh_of(args):
    for x in jax.tree.leaves(args):
        s = getattr(x, "sharding", None)
        if isinstance(s, NamedSharding):
            return s.mesh
    return None


def mesh_context(mesh):
    """The mesh as the tracing context (jax.set_mesh), so that kernels XLA cannot partition
    (splash's Mosaic call) run under shard_map over it; a no-op without a mesh."""
    return jax.set_mesh(mesh) if mesh is not None and mesh.size > 1 else contextlib.nullcontext()


def _per_device_bytes(x) -> int:
    """Bytes of an abstract array on one device (its shard)."""
    s = getattr(x, "sharding", None)
    shape = s.shard_shape(x.shape) if s is not None else x.shape
    return math.prod(shape) * np.dtype(x.dtype).itemsize

"""Compile time of one FLUX forward, blocks unrolled vs under a scan (`Flux(scan_blocks=...)`).

Nothing is allocated: the model is abstract (`nnx.eval_shape`), its state and the inputs are
ShapeDtypeStructs, and `jax.jit(forward).trace(state, inputs).lower().compile()` compiles

- for the host CPU (`--cpu`, default on), and
- for a compile-only TPU topology (`--tpu v5e:2x2`, when libtpu is installed:
  `jax.experimental.topologies.get_topology_desc`; it works under JAX_PLATFORMS=cpu), the
  parameters FSDP-sharded over all its chips by `engine.sharding.param_sharding_fn` (a
  (data=1, fsdp=chips) mesh; the layer axis of stacked blocks is never sharded), the inputs
  replicated. XLA's `memory_analysis()` of that executable gives the bytes per chip. (libtpu
  logs TPU_WORKER_HOSTNAMES warnings here, harmlessly, and takes /tmp/libtpu_lockfile: with
  another libtpu process running, set ALLOW_MULTIPLE_LIBTPU_LOAD=1.)

Printed per target and mode: trace + lower seconds, compile seconds, the HLO text size, and
(TPU) per-chip argument / temporary / output bytes; then unrolled / scanned ratios. Attention
is 'xla' on the TPU target (the splash kernel would lower in Pallas interpret mode under
JAX_PLATFORMS=cpu) and the backend's default ('chunked') on CPU.

--stages bnoise,mdenoise [--slice v5e-8 --fsdp 4]: the full-size stages as `vmdiff plan` compiles
them for a slice (data x fsdp mesh, one candidate a data row), unrolled vs scanned side by side,
and the VAE decode alone.

Usage: JAX_PLATFORMS=cpu python benchmarks/compile_time.py [--config dev|medium|small]
       [--tokens 1024] [--txt 512] [--batch 1] [--dtype bf16|f32] [--fp8] [--tpu v5e:2x2]
       [--no-cpu] [--modes unrolled,scanned]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vmdiff_jax.nn.flux import Flux, FluxConfig

S = jax.ShapeDtypeStruct
CONFIGS = {
    "dev": FluxConfig.flux1_dev(),  # 19 + 38 blocks, hidden 3072: 11.9B parameters
    "medium": dataclasses.replace(FluxConfig.flux1_dev(), hidden_size=1536, num_heads=12, depth=8, depth_single_blocks=16),
    "small": dataclasses.replace(FluxConfig.flux1_dev(), hidden_size=512, num_heads=4, depth=4, depth_single_blocks=8),
}


def abstract_state(cfg: FluxConfig, dtype, scan_blocks: bool, fp8: bool, attention_impl: str | None):
    model = nnx.eval_shape(lambda: Flux(cfg, dtype=dtype, param_dtype=dtype, rngs=nnx.Rngs(0), fp8=fp8,
                                        scan_blocks=scan_blocks, attention_impl=attention_impl))
    return nnx.split(model)


def abstract_inputs(cfg: FluxConfig, batch: int, tokens: int, txt: int, dtype, sharding=None) -> dict:
    kw = {} if sharding is None else dict(sharding=sharding)
    return dict(
        img=S((batch, tokens, cfg.in_channels), dtype, **kw), img_ids=S((1, tokens, 3), jnp.float32, **kw),
        txt=S((batch, txt, cfg.context_in_dim), dtype, **kw), txt_ids=S((1, txt, 3), jnp.float32, **kw),
        timesteps=S((batch,), jnp.float32, **kw), y=S((batch, cfg.vec_in_dim), dtype, **kw),
        guidance=S((batch,), jnp.float32, **kw),
    )


def compile_once(graphdef, state, inputs) -> dict:
    """Trace + lower, then compile, the forward on abstract (state, inputs); seconds and sizes."""

    def forward(state, inputs):
        return nnx.merge(graphdef, state)(**inputs)

    t0 = time.perf_counter()
    lowered = jax.jit(forward).trace(state, inputs).lower()
    t1 = time.perf_counter()
    compiled = lowered.compile()
    t2 = time.perf_counter()
    out = dict(lower_s=t1 - t0, compile_s=t2 - t1, hlo_chars=len(lowered.as_text()))
    try:
        ma = compiled.memory_analysis()
        out.update(argument_bytes=int(ma.argument_size_in_bytes), temp_bytes=int(ma.temp_size_in_bytes),
                   output_bytes=int(ma.output_size_in_bytes))
    except Exception:  # noqa: BLE001 - not every backend reports it
        pass
    return out


def sharded_state(state, mesh):
    """The abstract state with each parameter's FSDP sharding (engine.sharding rules) attached."""
    from vmdiff_jax.engine.sharding import param_sharding_fn

    fn = param_sharding_fn(mesh)

    def attach(path, x):
        name = jax.tree_util.keystr(path, simple=True, separator=".")
        return S(x.shape, x.dtype, sharding=fn(name, tuple(x.shape)))

    return jax.tree_util.tree_map_with_path(attach, state)


def tpu_mesh(topology: str):
    from jax.experimental import topologies

    from vmdiff_jax.engine.sharding import make_mesh

    topo = topologies.get_topology_desc(topology, "tpu")
    devices = list(topo.devices)
    return make_mesh(data=1, fsdp=len(devices), devices=devices), devices


def stages_main(a) -> int:
    """--stages: the full-size stages as a run compiles them for a TPU slice (app/plan.py's
    arguments and mesh), FLUX unrolled vs scanned, side by side; and the VAE decode alone."""
    from vmdiff_jax.app import plan
    from vmdiff_jax.checkpoints.flux import abstract_flux
    from vmdiff_jax.engine import sharding, targets
    from vmdiff_jax.method import hsp

    target = targets.TARGETS[a.slice]
    devs = targets.devices(target)
    fsdp = a.fsdp or target.chips
    mesh = sharding.make_mesh(data=target.chips // fsdp, fsdp=fsdp, devices=devs)
    cfg = hsp.HSPConfig(num_steps=20, size=512)
    n = mesh.shape[sharding.DATA] * 1  # one candidate a data row
    models = plan.full_size_models(jnp.bfloat16, "bf16", "auto")
    out = {}
    for mode in a.modes.split(","):
        models["flux"] = abstract_flux(FluxConfig.flux1_dev(), jnp.bfloat16, attention_impl="auto",
                                       scan_blocks=mode == "scanned")
        for name in a.stages.split(","):
            fn, args, kw, parts = targets.stage_calls(name, cfg, models, mesh, n)
            c = targets.compile_stage(fn, args, kw, platform="tpu", param_arg_count=parts)
            out[f"{name} {mode}"] = {"compile_s": round(c.compile_s, 1), "temp_gb": round(c.temp_bytes / 1e9, 3),
                                     "params_gb": round(c.parameters_bytes / 1e9, 3), "error": c.error}
            print(f"{a.slice} (data {mesh.shape['data']} x fsdp {fsdp}) {name:9s} {mode:9s}: compile {c.compile_s:6.1f} s, "
                  f"params {c.parameters_bytes / 1e9:.2f} GB + temp {c.temp_bytes / 1e9:.2f} GB a chip"
                  + (f"; ERROR {c.error}" if c.error else ""), flush=True)
    vd, vs = targets.abstract_state(models["vae"], mesh)

    @jax.jit
    def decode(vd, vs, packed):
        return jax.vmap(lambda p: hsp.decode(nnx.merge(vd, vs), p))(packed)

    c = targets.compile_stage(decode, (vd, vs, targets.rows(mesh, (n, 1024, 64), jnp.float32)), platform="tpu",
                              param_arg_count=2)
    out["vae decode"] = {"compile_s": round(c.compile_s, 1), "temp_gb": round(c.temp_bytes / 1e9, 3)}
    print(f"{a.slice} VAE decode alone (512 x 512, {n} images): compile {c.compile_s:.1f} s, temp {c.temp_bytes / 1e9:.2f} GB")
    for name in a.stages.split(","):
        u, v = out.get(f"{name} unrolled"), out.get(f"{name} scanned")
        if u and v and v["compile_s"]:
            print(f"{name}: unrolled / scanned compile x{u['compile_s'] / v['compile_s']:.1f}")
    print("RESULT " + json.dumps(out))
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stages", default=None, help="e.g. bnoise,mdenoise: the full-size stages for --slice instead")
    ap.add_argument("--slice", default="v5e-8", help="with --stages: a vmdiff plan topology")
    ap.add_argument("--fsdp", type=int, default=4, help="with --stages: FSDP ways (data = chips / fsdp)")
    ap.add_argument("--config", choices=sorted(CONFIGS), default="medium")
    ap.add_argument("--tokens", type=int, default=1024, help="image tokens (1024 = 512 x 512)")
    ap.add_argument("--txt", type=int, default=512, help="context tokens")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--dtype", choices=("bf16", "f32"), default="bf16")
    ap.add_argument("--fp8", action="store_true", help="block kernels float8 (Flux(fp8=True))")
    ap.add_argument("--tpu", default=None, help="also compile for this TPU topology (e.g. v5e:2x2; needs libtpu)")
    ap.add_argument("--no-cpu", action="store_true", help="skip the host CPU compiles")
    ap.add_argument("--modes", default="unrolled,scanned")
    a = ap.parse_args(argv)
    if a.stages:
        return stages_main(a)
    cfg, dtype = CONFIGS[a.config], jnp.bfloat16 if a.dtype == "bf16" else jnp.float32
    modes = a.modes.split(",")
    n_params = None
    results = {}
    targets = ([] if a.no_cpu else ["cpu"]) + ([f"tpu {a.tpu}"] if a.tpu else [])
    for target in targets:
        mesh = None
        if target.startswith("tpu"):
            mesh, devices = tpu_mesh(a.tpu)
            print(f"{target}: {len(devices)} compile-only chips ({devices[0].device_kind}), FSDP over all of them")
        for mode in modes:
            impl = "xla" if mesh is not None else None
            graphdef, state = abstract_state(cfg, dtype, mode == "scanned", a.fp8, impl)
            if n_params is None:
                n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state))
            if mesh is not None:
                from jax.sharding import NamedSharding, PartitionSpec

                state = sharded_state(state, mesh)
                inputs = abstract_inputs(cfg, a.batch, a.tokens, a.txt, dtype, NamedSharding(mesh, PartitionSpec()))
            else:
                inputs = abstract_inputs(cfg, a.batch, a.tokens, a.txt, dtype)
            r = compile_once(graphdef, state, inputs)
            results[(target, mode)] = r
            mem = ""
            if "temp_bytes" in r and mesh is not None:
                mem = (f", per chip: arguments {r['argument_bytes'] / 1e9:.3f} GB, temporaries {r['temp_bytes'] / 1e9:.3f} GB,"
                       f" output {r['output_bytes'] / 1e6:.1f} MB")
            elif "temp_bytes" in r:
                mem = f", temporaries {r['temp_bytes'] / 1e9:.3f} GB"
            print(f"{target} {mode:9s}: trace+lower {r['lower_s']:7.2f} s, compile {r['compile_s']:7.2f} s, "
                  f"HLO {r['hlo_chars'] / 1e6:.2f} M chars{mem}", flush=True)
        if set(modes) >= {"unrolled", "scanned"}:
            u, s = results[(target, "unrolled")], results[(target, "scanned")]
            print(f"{target} unrolled / scanned: compile x{u['compile_s'] / s['compile_s']:.1f}, "
                  f"trace+lower x{u['lower_s'] / s['lower_s']:.1f}, total x"
                  f"{(u['compile_s'] + u['lower_s']) / (s['compile_s'] + s['lower_s']):.1f}")
    print(f"config {a.config}: hidden {cfg.hidden_size}, {cfg.depth} + {cfg.depth_single_blocks} blocks, "
          f"{n_params / 1e9:.2f}B parameters, {a.dtype}{' + fp8 blocks' if a.fp8 else ''}, batch {a.batch}, "
          f"{a.tokens} + {a.txt} tokens; jax {jax.__version__}")
    print("RESULT " + json.dumps({f"{t} {m}": r for (t, m), r in results.items()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

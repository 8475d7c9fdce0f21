"""The full-size MDeNoise stage's TPU compile with the VAE mid-block attention as XLA's (what
nn/vae.py asks for on a TPU) and as splash (what 'auto' gave before), side by side in one
process (issue 20, item 5): v5e-8, data 2 x fsdp 4, FLUX.1-dev bf16 scanned + VAE, 512 x 512,
20 steps, one candidate a data row. Wall and CPU seconds of each compile.

Usage: JAX_PLATFORMS=cpu python benchmarks/mdenoise_vae_attention.py [--slice v5e-8] [--fsdp 4] [--order xla,splash]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # this checkout's vmdiff_jax

import jax.numpy as jnp


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slice", default="v5e-8")
    ap.add_argument("--fsdp", type=int, default=4)
    ap.add_argument("--order", default="xla,splash")
    a = ap.parse_args(argv)
    from vae_compile import _Attention

    from vmdiff_jax.app import plan
    from vmdiff_jax.engine import sharding, targets
    from vmdiff_jax.method.hsp import HSPConfig
    from vmdiff_jax.nn import vae as vae_module

    target = targets.TARGETS[a.slice]
    mesh = sharding.make_mesh(data=target.chips // a.fsdp, fsdp=a.fsdp, devices=targets.devices(target))
    models = plan.full_size_models(jnp.bfloat16, "bf16", "auto")
    real, out = vae_module.vmath, {}
    for impl in a.order.split(","):
        vae_module.vmath = real if impl == "xla" else _Attention(
            lambda q, k, v, **_: real.attention(q, k, v, implementation="splash"))
        fn, args, kw, parts = targets.stage_calls("mdenoise", HSPConfig(num_steps=20, size=512), models, mesh,
                                               mesh.shape["data"])
        cpu0 = time.process_time()
        c = targets.compile_stage(fn, args, kw, platform="tpu", param_arg_count=parts)
        cpu = time.process_time() - cpu0
        out[impl] = {"compile_s": round(c.compile_s, 1), "cpu_s": round(cpu, 1), "temp_gb": round(c.temp_bytes / 1e9, 3),
                     "error": c.error}
        print(f"{a.slice} data {mesh.shape['data']} x fsdp {a.fsdp} mdenoise, VAE attention {impl:6s}: compile "
              f"{c.compile_s:6.1f} s ({cpu:6.1f} CPU s), temp {c.temp_bytes / 1e9:.2f} GB a chip"
              + (f"; ERROR {c.error}" if c.error else ""), flush=True)
    vae_module.vmath = real
    print("RESULT " + json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    raise SystemExit(main())

"""What K objects cost at full size, from the TPU compiler: the BNoise and MDeNoise stages of
FLUX.1-dev (bf16) + the VAE at 512 x 512 for K = 2, 3, 4 token sets, compiled for a TPU slice
(no TPU needed: libtpu's compile-only devices), per chip: temporaries, peak, FLOPs of one call
(the compiler's count: the scanned FLUX blocks' loop bodies once, so compare the ratios, not the
totals), and the context tokens. Ratios against K = 2 measured in the same run.

    python benchmarks/many_objects_memory.py [--topology v5e-8] [--fsdp 4] [--objects 2 3 4] [--stages bnoise mdenoise]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax.numpy as jnp  # noqa: E402

from vmdiff_jax.app import plan  # noqa: E402
from vmdiff_jax.engine import sharding, targets  # noqa: E402
from vmdiff_jax.method.hsp import HSPConfig  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--topology", default="v5e-8", choices=sorted(targets.TARGETS))
    ap.add_argument("--fsdp", type=int, default=4)
    ap.add_argument("--objects", type=int, nargs="+", default=[2, 3, 4])
    ap.add_argument("--stages", nargs="+", default=["bnoise", "mdenoise"], choices=["bnoise", "mdenoise"])
    args = ap.parse_args()
    target = targets.TARGETS[args.topology]
    devs = targets.devices(target)
    data = target.chips // args.fsdp
    mesh = sharding.make_mesh(data=data, fsdp=args.fsdp, devices=devs)
    models = plan.full_size_models(jnp.bfloat16, "bf16", None)
    cfg = HSPConfig()
    print(f"{args.topology}: mesh data {data} x fsdp {args.fsdp}, FLUX.1-dev bf16, 512 x 512, {cfg.num_steps} steps, "
          f"{data} candidate(s) a call (one a 'data' row)")
    for name in args.stages:
        base = None
        for k in args.objects:
            fn, a, kw, parts = targets.stage_calls(name, cfg, models, mesh, data, objects=k)
            got = targets.compile_stage(fn, a, kw, platform="tpu", param_arg_count=parts)
            if got.error:
                print(f"  {name} K={k}: does not compile: {got.error}")
                continue
            ctx = 729 * k if name == "bnoise" else 729
            row = (got.temp_bytes, got.peak_bytes, got.flops)
            base = base or row
            print(f"  {name:>8} K={k}: context {ctx:5d} + 1024 image tokens | temp {got.temp_bytes / 2**30:6.2f} GiB "
                  f"(x{row[0] / base[0]:.2f}) | peak {got.peak_bytes / 2**30:6.2f} GiB (x{row[1] / base[1]:.2f}) of "
                  f"{target.hbm_bytes / 2**30:.2f} | compiler FLOPs x{row[2] / base[2]:.2f} | compile {got.compile_s:.0f} s",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

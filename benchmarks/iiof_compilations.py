"""The compilations a whole IIOF-size batch run issues on a TPU slice, and their compile time
(issue 20, item 4).

1. Which call sizes each stage is compiled for: `scheduler.run` over the 1560 ordered pairs of
   40 images with the analytic per-pair objectives of benchmarks/pairs_per_call.py (no model),
   `--pairs-per-call P`, call sizes multiples of the mesh's 'data' axis, as `vmdiff batch` runs
   them (`scheduler.bucket_sizes(2 P, data)`); BNoise and MDeNoise get one program per size
   they are called at, `features` one per MDeNoise size (it scores the decoded candidates,
   padded the same) plus the references' (2 images a pair); condition, pooled_text,
   text_embed and dino_patches one each.
2. How long each program takes to compile: the full-size BNoise, MDeNoise and features
   stages compiled for the slice (`targets.stage_calls`, nothing allocated) at
   `--measure` call sizes; the other sizes interpolated linearly in the size between the
   measured ones (and extrapolated from the two largest beyond them).

Usage: JAX_PLATFORMS=cpu python benchmarks/iiof_compilations.py [--slice v5e-8] [--fsdp 4]
       [--pairs-per-call 13] [--measure 2,8,28] [--stages bnoise,mdenoise,features] [--no-compile]
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.dirname(HERE), HERE]  # this checkout's vmdiff_jax, and pairs_per_call.py

from pairs_per_call import AnalyticBackend

from vmdiff_jax.engine import scheduler
from vmdiff_jax.method.search import EAAConfig

SINGLE = ("condition", "pooled_text", "text_embed", "dino_patches")


class Recording(AnalyticBackend):
    """The analytic backend, recording the size (slots) of every call per stage."""

    def __init__(self):
        super().__init__()
        self.sizes = {"bnoise": {}, "mdenoise": {}}

    def bnoise(self, items, slots):
        self.sizes["bnoise"][slots] = self.sizes["bnoise"].get(slots, 0) + 1
        return super().bnoise(items, slots)

    def mdenoise(self, items, slots):
        self.sizes["mdenoise"][slots] = self.sizes["mdenoise"].get(slots, 0) + 1
        return super().mdenoise(items, slots)


def call_sizes(pairs: int, ppc: int, data: int) -> dict[str, dict[int, int]]:
    """{stage: {call size: calls}} of a run (bnoise, mdenoise, features)."""
    b = Recording()
    scheduler.run(range(pairs), b, EAAConfig(), "paper", pairs_per_call=ppc, multiple=data)
    sizes = dict(b.sizes)
    ref = -(-2 // data) * data  # the references' features: the pair's 2 images, padded to 'data'
    sizes["features"] = dict(sizes["mdenoise"])
    sizes["features"][ref] = sizes["features"].get(ref, 0) + pairs
    return sizes


def interpolate(measured: dict[int, float], n: int) -> float:
    xs = sorted(measured)
    if n in measured:
        return measured[n]
    if len(xs) == 1:
        return measured[xs[0]]
    if n > xs[-1]:
        x0, x1 = xs[-2], xs[-1]
    elif n < xs[0]:
        x0, x1 = xs[0], xs[1]
    else:
        return float(np.interp(n, xs, [measured[x] for x in xs]))
    y0, y1 = measured[x0], measured[x1]
    return max(0.0, y0 + (y1 - y0) * (n - x0) / (x1 - x0))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slice", default="v5e-8")
    ap.add_argument("--fsdp", type=int, default=4)
    ap.add_argument("--dtype", choices=("bf16", "fp8"), default="bf16")
    ap.add_argument("--pairs-per-call", type=int, default=13)
    ap.add_argument("--pairs", type=int, default=40 * 39)
    ap.add_argument("--measure", default="2,8,28", help="call sizes to compile at")
    ap.add_argument("--stages", default="bnoise,mdenoise,features")
    ap.add_argument("--no-compile", action="store_true", help="only the call sizes")
    a = ap.parse_args(argv)
    from vmdiff_jax.engine import targets

    target = targets.TARGETS[a.slice]
    data = target.chips // a.fsdp
    sizes = call_sizes(a.pairs, a.pairs_per_call, data)
    buckets = scheduler.bucket_sizes(2 * a.pairs_per_call, data)
    print(f"{a.slice} data {data} x fsdp {a.fsdp}, {a.pairs} pairs, {a.pairs_per_call} pairs a call: buckets {buckets}")
    for st, d in sizes.items():
        print(f"  {st:9s}: {len(d)} sizes {sorted(d)} (calls {[d[k] for k in sorted(d)]})")
    n_programs = sum(len(d) for d in sizes.values()) + len(SINGLE)
    print(f"programs: {n_programs} ({' + '.join(f'{len(d)} {k}' for k, d in sizes.items())} + {len(SINGLE)} single)")
    out = {"slice": a.slice, "mesh": {"data": data, "fsdp": a.fsdp}, "pairs_per_call": a.pairs_per_call,
           "buckets": list(buckets), "sizes": {k: {str(s): c for s, c in sorted(d.items())} for k, d in sizes.items()},
           "programs": n_programs}
    if not a.no_compile:
        import jax.numpy as jnp

        from vmdiff_jax.app import plan
        from vmdiff_jax.engine import sharding
        from vmdiff_jax.method.hsp import HSPConfig

        mesh = sharding.make_mesh(data=data, fsdp=a.fsdp, devices=targets.devices(target))
        models = plan.full_size_models(jnp.bfloat16, a.dtype, "auto")
        cfg = HSPConfig(num_steps=20, size=512)
        measured: dict[str, dict[int, float]] = {}
        for st in a.stages.split(","):
            measured[st] = {}
            for n in (int(v) for v in a.measure.split(",")):
                fn, args, kw, parts = targets.stage_calls(st, cfg, models, mesh, n, ctx=targets.context_tokens(models))
                c = targets.compile_stage(fn, args, kw, platform="tpu", param_arg_count=parts)
                measured[st][n] = c.compile_s
                print(f"  {st:9s} n = {n:3d}: compile {c.compile_s:6.1f} s, temp {c.temp_bytes / 1e9:.2f} GB a chip"
                      + (f"; ERROR {c.error}" if c.error else ""), flush=True)
        total = {st: sum(interpolate(measured[st], n) for n in sizes[st]) for st in measured}
        print("compile time of the run's programs (interpolated): " + ", ".join(
            f"{st} {total[st] / 60:.1f} min" for st in total) + f"; total {sum(total.values()) / 60:.1f} min "
              "(+ the 4 single programs)")
        out.update(measured={k: {str(n): round(s, 1) for n, s in v.items()} for k, v in measured.items()},
                   compile_total_s={k: round(v, 1) for k, v in total.items()})
    print("RESULT " + json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

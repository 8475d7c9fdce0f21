"""Attention alone, per implementation, at FLUX's sequence lengths, with torch SDPA in the same run.

q, k, v (B, T, H, D) float32 (default B 1, H 4, D 128: the mid-size benchmark call's shape) at
T = 1753 (MDeNoise: 1024 image + 729 Redux tokens) and 2482 (BNoise: + 729 more). Each
implementation the backend can run is jitted and warmed up, then all are timed round-robin
(interleaved) --runs times; medians and the ratio torch SDPA / ours are printed. `chunked` is
timed at several query-block sizes (the default block, math.CHUNK_QUERIES, is chosen from this).
Splash runs only on TPU (its CPU interpret mode is a test vehicle, not a kernel).

    python benchmarks/attention.py [--runs 9] [--heads 4] [--blocks 128,256,384,512]
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from vmdiff_jax.nn import math as vmath


def candidates(blocks, dtype) -> dict:
    """name -> jitted f(q, k, v) for every implementation this backend runs."""
    fns = {"xla": functools.partial(vmath.attention, implementation="xla")}
    for b in blocks:
        fns[f"chunked/{b}"] = functools.partial(vmath.chunked_attention, block=b)
    for name in ("cudnn", "splash"):
        try:
            vmath.check_attention_impl(name, dtype)
        except vmath.AttentionUnavailable:
            continue
        fns[name] = functools.partial(vmath.attention, implementation=name)
    return {k: jax.jit(f) for k, f in fns.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=9)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--lengths", default="1753,2482")
    ap.add_argument("--blocks", default="128,256,384,512", help="query blocks of `chunked` to time")
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    a = ap.parse_args()
    import torch

    dtype = jnp.dtype(a.dtype)
    blocks = [int(b) for b in a.blocks.split(",")]
    print(f"{jax.devices()[0].device_kind} ({jax.default_backend()}), {os.cpu_count()} CPU cores, torch threads "
          f"{torch.get_num_threads()}; B {a.batch}, H {a.heads}, D {a.head_dim}, {a.dtype}; median of {a.runs} "
          f"interleaved runs; auto = {vmath.resolve_attention_impl('auto', dtype, 1753, a.head_dim)}")
    for t in (int(x) for x in a.lengths.split(",")):
        rng = np.random.default_rng(0)
        q, k, v = (rng.standard_normal((a.batch, t, a.heads, a.head_dim)).astype(np.float32) for _ in range(3))
        jq, jk, jv = (jnp.asarray(x, dtype) for x in (q, k, v))
        tq, tk, tv = (torch.from_numpy(x).transpose(1, 2).contiguous().to(getattr(torch, a.dtype)) for x in (q, k, v))
        fns = candidates(blocks, dtype)
        ref = np.asarray(fns["xla"](jq, jk, jv), np.float32)
        for name, f in fns.items():  # compile, warm up, and check they agree
            err = float(np.abs(np.asarray(f(jq, jk, jv), np.float32).reshape(ref.shape) - ref).max())
            assert err < (1e-4 if a.dtype == "float32" else 5e-2), (name, err)

        def sdpa():
            with torch.inference_mode():
                return torch.nn.functional.scaled_dot_product_attention(tq, tk, tv)

        sdpa()
        times = {name: [] for name in [*fns, "torch sdpa"]}
        for _ in range(a.runs):
            for name, f in fns.items():
                t0 = time.perf_counter()
                f(jq, jk, jv).block_until_ready()
                times[name].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            sdpa()
            times["torch sdpa"].append(time.perf_counter() - t0)
        med = {n: statistics.median(ts) for n, ts in times.items()}
        print(f"T = {t}:")
        for name, m in med.items():
            print(f"  {name:12s} {m * 1e3:8.1f} ms   torch sdpa / this {med['torch sdpa'] / m:5.2f}x")


if __name__ == "__main__":
    main()

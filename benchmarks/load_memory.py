"""Host memory and time of `load_flux` on a synthetic multi-GB FLUX checkpoint (BFL layout, bf16).

Writes a FLUX-architecture checkpoint (hidden 1536, 12 heads of 128, --depth double and
--single single-stream blocks; about 3 GB with the defaults) without holding it in memory:
`write_sparse` lays out the header, then every tensor is filled in chunks with random bf16
values. A fresh subprocess then imports everything, touches the backend, records its RSS
(baseline), runs `load_flux(path, dtype=bfloat16)` and reports the peak RSS (ru_maxrss, plus
psutil sampling every 5 ms) minus the baseline.

On CPU the device memory IS host memory, so the loaded parameters themselves (the file's
size) stay resident; what the streaming loader must keep small is the transient above
them: peak - baseline - resident parameters, bounded here by the largest tensor + 2 GB.
(On an accelerator the parameters leave the host, and peak - baseline itself is the bound.)
The load runs twice: with glibc's default malloc, whose dynamic mmap threshold keeps freed
tensor buffers of up to 32 MB in the heap (RSS that is free to reuse, not held by the loader),
and with MALLOC_MMAP_THRESHOLD_ fixed at 1 MiB, where every freed tensor returns to the OS.
Each load runs with the finite check (the default) and without it (`check_finite=False`), and,
given `--reference-src` (a checkout of an older vmdiff-jax, e.g. `git archive <rev>`), with that
version's `load_flux` too, interleaved in the same run, so the ratios compare like with like.
Usage: python benchmarks/load_memory.py [--depth 8] [--single 24] [--dir /tmp] [--keep]
       [--reference-src /tmp/old_checkout] [--repeats 1]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

GB = 1e9

CHILD = r"""
import json, os, resource, sys, threading, time
import psutil
import jax, jax.numpy as jnp
from flax import nnx
try:
    from vmdiff_jax.checkpoints import load_flux
    kw = dict(check_finite=sys.argv[2] == "check")
except ImportError:  # a reference checkout from before vmdiff_jax.checkpoints
    from vmdiff_jax.flux_checkpoint import load_flux
    kw = {}

proc = psutil.Process()
jnp.ones((4, 4), jnp.bfloat16).block_until_ready()  # backend up before the baseline
base = proc.memory_info().rss
base_max = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
peak = [base]
stop = False

def sample():
    while not stop:
        peak[0] = max(peak[0], proc.memory_info().rss)
        time.sleep(0.005)

th = threading.Thread(target=sample, daemon=True)
th.start()
t = time.perf_counter()
model = load_flux(sys.argv[1], dtype=jnp.bfloat16, **kw)
jax.block_until_ready(nnx.state(model))
dt = time.perf_counter() - t
stop = True
th.join()
after = proc.memory_info().rss
maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
nbytes = sum(x.nbytes for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
print("RESULT " + json.dumps(dict(base=base, base_max=base_max, maxrss=maxrss, sampled_peak=max(peak[0], after),
                                  after=after, param_bytes=nbytes, seconds=dt, backend=jax.default_backend())))
"""


def flux_shapes(depth: int, single: int, hidden: int = 1536, heads: int = 12) -> dict[str, tuple[int, ...]]:
    """BFL key -> shape of a FLUX checkpoint of this size (Linear weights (out, in))."""
    from vmdiff_jax.checkpoints.flux import abstract_flux
    from vmdiff_jax.checkpoints.rules import param_paths
    from vmdiff_jax.nn.flux import FluxConfig

    cfg = FluxConfig(hidden_size=hidden, num_heads=heads, depth=depth, depth_single_blocks=single)
    shapes = {}
    for path, s in param_paths(abstract_flux(cfg, scan_blocks=False)).items():  # per-layer paths are BFL's keys
        if path.endswith(".kernel"):
            shapes[path[: -len(".kernel")] + ".weight"] = tuple(reversed(s.shape))
        else:
            shapes[path] = tuple(s.shape)
    return shapes


def write_checkpoint(path: Path, shapes: dict, chunk_bytes: int = 64 << 20) -> int:
    """A bf16 safetensors file with random values, written chunk by chunk (RAM: one chunk)."""
    import struct

    from vmdiff_jax.checkpoints.files import write_sparse

    write_sparse(shapes, path, dtype="BF16")
    with open(path, "rb") as f:
        (hn,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(hn))
    rng = np.random.default_rng(0)
    n = chunk_bytes // 2
    with open(path, "r+b") as f:
        for key, h in header.items():
            if key == "__metadata__":
                continue
            start, end = h["data_offsets"]
            f.seek(8 + hn + start)
            left = (end - start) // 2
            while left:
                k = min(n, left)
                r = rng.integers(0, 1 << 16, k, dtype=np.uint16)
                # sign + 2 exponent bits + 7 mantissa bits; exponent 120..123: |x| in [2^-7, 2^-3)
                f.write(((r & 0x81FF) | 0x3C00).astype(np.uint16).tobytes())
                left -= k
    return path.stat().st_size


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--depth", type=int, default=8, help="double-stream blocks")
    ap.add_argument("--single", type=int, default=24, help="single-stream blocks")
    ap.add_argument("--dir", default=None, help="where to write the checkpoint (default: the temp folder)")
    ap.add_argument("--keep", action="store_true", help="keep the checkpoint file")
    ap.add_argument("--reference-src", default=None, help="an older checkout whose load_flux is the reference")
    ap.add_argument("--repeats", type=int, default=1)
    args = ap.parse_args()
    here = str(Path(__file__).resolve().parents[1])
    variants = [("finite check", here, "check"), ("no finite check", here, "nocheck")]
    if args.reference_src:
        variants.insert(0, ("reference", str(Path(args.reference_src).resolve()), "check"))

    shapes = flux_shapes(args.depth, args.single)
    largest_key = max(shapes, key=lambda k: math.prod(shapes[k]))
    largest = math.prod(shapes[largest_key]) * 2
    d = Path(tempfile.mkdtemp(prefix="vmdiff_loadmem_", dir=args.dir))
    path = d / "flux_synthetic.safetensors"
    try:
        t = time.perf_counter()
        size = write_checkpoint(path, shapes)
        t_write = time.perf_counter() - t
        results: dict = {}
        for _ in range(args.repeats):  # interleaved: every variant once per repeat
            for alloc, extra in (("glibc default", {}), ("MALLOC_MMAP_THRESHOLD_=1MiB", {"MALLOC_MMAP_THRESHOLD_": str(1 << 20)})):
                for vname, src, check in variants:
                    env = dict(os.environ, JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS", "cpu"), PYTHONPATH=src, **extra)
                    p = subprocess.run([sys.executable, "-c", CHILD, str(path), check], capture_output=True, text=True,
                                       env=env, cwd=src)
                    if p.returncode:
                        sys.exit(p.stderr[-3000:])
                    r = json.loads(p.stdout.split("RESULT ")[-1])
                    best = results.get((alloc, vname))
                    if best is None or r["seconds"] < best["seconds"]:  # fastest of the repeats; its memory
                        results[(alloc, vname)] = r
    finally:
        if not args.keep:
            path.unlink(missing_ok=True)
            d.rmdir()
    print(f"synthetic FLUX checkpoint (BFL layout, bf16): hidden 1536, {args.depth} double + {args.single} single "
          f"blocks, {len(shapes)} tensors, {size / GB:.2f} GB on disk (written in {t_write:.0f} s)")
    print(f"largest tensor: {largest_key} {shapes[largest_key]} = {largest / GB:.3f} GB")
    for (alloc, vname), r in results.items():
        name = f"{alloc}, {vname}"
        peak = max(r["maxrss"], r["sampled_peak"])
        above = peak - r["base"]
        transient = above - r["param_bytes"]
        print(f"[{name}] load_flux on {r['backend']}: {r['seconds']:.1f} s, {size / GB / r['seconds']:.2f} GB/s")
        print(f"  baseline RSS (after imports, backend up)   {r['base'] / GB:7.3f} GB")
        print(f"  peak RSS (ru_maxrss / 5 ms sampling)        {r['maxrss'] / GB:7.3f} / {r['sampled_peak'] / GB:.3f} GB")
        print(f"  peak above baseline                         {above / GB:7.3f} GB")
        print(f"  RSS after loading, above baseline           {(r['after'] - r['base']) / GB:7.3f} GB")
        print(f"  loaded parameters (resident on the device)  {r['param_bytes'] / GB:7.3f} GB")
        print(f"  overhead = peak - baseline - parameters     {transient / GB:7.3f} GB "
              f"({transient / max(largest, 1):.1f} x the largest tensor)")
        print(f"  overhead < largest tensor + 2 GB: {'YES' if transient < largest + 2 * GB else 'NO'}; "
              f"peak above baseline < largest tensor + 2 GB: {'YES' if above < largest + 2 * GB else 'NO'}"
              + (" (on CPU the resident parameters count in it)" if r["backend"] == "cpu" else ""))
    for alloc in ("glibc default", "MALLOC_MMAP_THRESHOLD_=1MiB"):
        base = results[(alloc, variants[0][0])]
        for vname, _, _ in variants[1:]:
            r = results[(alloc, vname)]
            print(f"[{alloc}] {vname} / {variants[0][0]}: time x{r['seconds'] / base['seconds']:.2f}, peak above baseline "
                  f"x{(max(r['maxrss'], r['sampled_peak']) - r['base']) / (max(base['maxrss'], base['sampled_peak']) - base['base']):.3f}")
    print(f"checkpoint {'kept at ' + str(path) if args.keep else 'deleted'}")


if __name__ == "__main__":
    main()

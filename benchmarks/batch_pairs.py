"""`vmdiff batch` with the demo models on CPU: 12 ordered pairs (4 images) searched one pair
at a time (--pairs-per-call 1) and all together (12), through `batch.run_batch` (the command's
path: scheduler.run over PipelineBackend, outputs written).

Prints per P: wall time, sequential model calls, mean occupancy, and whether every pair made
the same choices (alpha, betas, round of the best) with the max |S difference| against P = 1.
Compilation is excluded (a warm-up run of every P first, in the same process); the timed runs
are interleaved (P = 1, 12, 1, 12, ...) and the median is reported.

--mesh DxF runs on D x F devices as data D x fsdp F (set XLA_FLAGS=--xla_force_host_platform_device_count=8
for 4x2 on a CPU), --json PATH saves the per-pair choices to compare runs across meshes
(--compare PATH: against a saved run).
Usage: PYTHONPATH=. python benchmarks/batch_pairs.py [--p 1 12] [--repeats 2] [--size 64] [--steps 4] [--tiny-search]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image


def images(folder: Path, n: int = 4) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for k, name in enumerate(["apple", "kettle", "owl", "zebra", "cactus", "teapot"][:n]):
        a = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
        a[..., k % 3] = 255 - 40 * (k // 3)
        Image.fromarray(a).save(folder / f"{name}.png")
        paths.append(folder / f"{name}.png")
    return paths


def choices(out: Path) -> dict:
    res = {}
    for rep in sorted((out / "pairs").glob("*/report.json")):
        r = json.loads(rep.read_text())
        best = next(t for t in r["trajectory"] if t["S"] == r["score"])
        res[rep.parent.name] = dict(alpha=r["parameters"]["alpha"], beta1=r["parameters"]["beta1"],
                                    beta2=r["parameters"]["beta2"], round=best["round"], S=r["score"])
    return res


def compare(a: dict, b: dict) -> tuple[bool, float]:
    same = sorted(a) == sorted(b) and all(
        all(a[k][f] == b[k][f] for f in ("alpha", "beta1", "beta2", "round")) for k in a)
    return same, max(abs(a[k]["S"] - b[k]["S"]) for k in a)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--p", type=int, nargs="+", default=[1, 12])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--tiny-search", action="store_true", help="EAAConfig.tiny(): one round, coarse tolerances")
    ap.add_argument("--mesh", default=None, help="DxF: data D x fsdp F over the local devices")
    ap.add_argument("--json", default=None)
    ap.add_argument("--compare", default=None)
    args = ap.parse_args()

    import jax

    from vmdiff_jax.app import batch
    from vmdiff_jax.engine import sharding
    from vmdiff_jax.engine.pipeline import VMDiff

    mesh = None
    if args.mesh:
        d, f = (int(x) for x in args.mesh.split("x"))
        mesh = sharding.make_mesh(data=d, fsdp=f, devices=jax.local_devices()[:d * f])
    from vmdiff_jax.method.search import EAAConfig

    pipe = VMDiff.demo(random=True, num_steps=args.steps, size=args.size, locator="whole", mesh=mesh,
                       eaa_cfg=EAAConfig.tiny() if args.tiny_search else None)
    tmp = Path(tempfile.mkdtemp())
    imgs = images(tmp / "imgs")

    def run(p: int, tag: str) -> tuple[float, dict, Path]:
        out = tmp / f"out_{p}_{tag}"
        t = time.perf_counter()
        counts = batch.run_batch(pipe, imgs, out, progress=False, size=args.size, pairs_per_call=p)
        wall = time.perf_counter() - t
        assert counts["ran"] == 12 and counts["failed"] == 0, counts
        return wall, counts, out

    print(f"# {len(jax.devices())} {jax.default_backend()} device(s), mesh {args.mesh or 'none'}, size {args.size}, "
          f"steps {args.steps}, paper schedule{' (tiny search)' if args.tiny_search else ''}, 12 pairs", flush=True)
    for p in args.p:  # warm-up: compile every bucket
        run(p, "warm")
    walls: dict[int, list] = {p: [] for p in args.p}
    stats, outs = {}, {}
    for r in range(args.repeats):
        for p in args.p:
            wall, counts, out = run(p, str(r))
            walls[p].append(wall)
            stats[p], outs[p] = counts, out
    ref = choices(outs[args.p[0]])
    for p in args.p:
        c = stats[p]
        same, ds = compare(choices(outs[p]), ref)
        print(f"P={p:3d}: wall {statistics.median(walls[p]):7.1f} s (runs {', '.join(f'{w:.1f}' for w in walls[p])}), "
              f"{c['sequential_calls']} sequential calls, occupancy {c['real_slots'] / c['padded_slots']:.2f}, "
              f"same choices as P={args.p[0]}: {same}, max |dS| {ds:.1e}")
    if args.json:
        Path(args.json).write_text(json.dumps(ref))
    if args.compare:
        same, ds = compare(ref, json.loads(Path(args.compare).read_text()))
        print(f"against {args.compare}: same choices {same}, max |dS| {ds:.1e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

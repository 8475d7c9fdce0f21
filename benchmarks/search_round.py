"""One search round (one MDeNoise request: MDeNoise + VAE decode + features + score) with n = 1,
2, 4, 8 candidates on the tiny demo models: seconds per candidate after warm-up.

The round is `PipelineBackend.mdenoise` with n items in n slots (one compiled call per round);
`VMDiff.mdenoise` alone (MDeNoise + decode, no scoring) is timed too. Median of
--runs after one warm-up (compilation) per n.
Usage: python benchmarks/search_round.py [--size 128] [--steps 20] [--ns 1,2,4,8] [--runs 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import jax
import numpy as np


def timed(fn, runs: int) -> float:
    fn()  # warm-up: compilation for this n
    ts = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--ns", default="1,2,4,8")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--locator", choices=("dino", "whole"), default="dino")
    args = ap.parse_args()

    from vmdiff_jax.engine import pipeline
    from vmdiff_jax.engine.pairs import FusionInput, PipelineBackend
    from vmdiff_jax.method.requests import pair_weights
    from vmdiff_jax.engine.demo import example_images
    from vmdiff_jax.app.inputs import load_image
    from vmdiff_jax.engine.scheduler import BNoiseItem, MDeNoiseItem

    pipe = pipeline.VMDiff.demo(random=True, num_steps=args.steps, size=args.size, locator=args.locator)
    (p1, l1), (p2, l2) = example_images(random=True)
    pair = FusionInput.pair(load_image(p1, args.size), load_image(p2, args.size), l1, l2, jax.random.key(0), 0)
    backend = PipelineBackend(pipe, lambda _: pair, lambda p, r: None, schedule="paper", settings={})
    backend.start(0)
    eps_b = backend.bnoise([BNoiseItem(0, 1, np.ones(2))], 1)[0]
    st = backend.pairs[0]
    print(f"one search round on the demo models, {args.size} x {args.size}, {args.steps} steps, "
          f"{jax.default_backend()} ({len(jax.local_devices())} device(s), {os.cpu_count()} CPU cores), "
          f"median of {args.runs}")
    print(f"  {'n':>3s} {'round s':>8s} {'s / cand':>9s} {'mdenoise-only s / cand':>23s} {'speed-up / cand vs n=1':>23s}")
    base = None
    for n in (int(x) for x in args.ns.split(",")):
        weights = pair_weights(np.linspace(0.4, 0.6, n)).astype(np.float32)
        items = [MDeNoiseItem(0, eps_b, w) for w in weights]
        t_round = timed(lambda: backend.mdenoise(items, n), args.runs)
        rows = lambda x: np.repeat(np.asarray(x)[None], n, axis=0)  # noqa: E731
        e, cs, y = rows(eps_b), rows(st.c), rows(st.y)
        t_mix = timed(lambda: jax.block_until_ready(pipe.mdenoise(e, cs, weights, y)), args.runs)
        per = t_round / n
        base = base or per
        print(f"  {n:3d} {t_round:8.3f} {per:9.3f} {t_mix / n:23.3f} {base / per:23.2f}")


if __name__ == "__main__":
    main()

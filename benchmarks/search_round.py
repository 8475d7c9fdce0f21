"""One search round (one `mix` call: MDeNoise + VAE decode + features + score) with n = 1, 2,
4, 8 candidates on the tiny demo models: seconds per candidate after warm-up.

The round is `pipeline._Problem.mix` with the chunk size set to n (one compiled call per
round); the jitted `mix` alone (MDeNoise + decode, no scoring) is timed too. Median of
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

    from vmdiff_jax import pipeline
    from vmdiff_jax.demo import example_images
    from vmdiff_jax.images import load_image

    pipe = pipeline.VMDiff.demo(num_steps=args.steps, size=args.size, locator=args.locator)
    (p1, l1), (p2, l2) = example_images()
    pair = np.stack([load_image(p1, args.size), load_image(p2, args.size)])
    c = pipe.condition(pair)
    y = pipe.pooled_prompt(l1, l2)
    ref, _ = pipe.features(pair)
    text = pipe.text_embeddings([l1, l2])
    print(f"one search round on the demo models, {args.size} x {args.size}, {args.steps} steps, "
          f"{jax.default_backend()} ({len(jax.local_devices())} device(s), {os.cpu_count()} CPU cores), "
          f"median of {args.runs}")
    print(f"  {'n':>3s} {'round s':>8s} {'s / cand':>9s} {'mix-only s / cand':>18s} {'speed-up / cand vs n=1':>23s}")
    base = None
    for n in (int(x) for x in args.ns.split(",")):
        prob = pipeline._Problem(pipe, c[0], c[1], y, ref, text, jax.random.key(0), n, False)
        eps_b = np.asarray(prob.blend(prob.noise(1), np.ones((1, 2), np.float32)))[0]
        alphas = np.linspace(0.4, 0.6, n).astype(np.float32)
        t_round = timed(lambda: prob.mix(eps_b, alphas), args.runs)
        e = prob._put(np.broadcast_to(eps_b, (prob.chunk,) + eps_b.shape).copy())
        a = prob._put(np.resize(alphas, prob.chunk))
        t_mix = timed(lambda: jax.block_until_ready(
            pipe._jit["mix"](pipe._states["flux"], pipe._states["vae"], e, c[0], c[1], a, y)), args.runs)
        per = t_round / n
        base = base or per
        print(f"  {n:3d} {t_round:8.3f} {per:9.3f} {t_mix / n:18.3f} {base / per:23.2f}")


if __name__ == "__main__":
    main()

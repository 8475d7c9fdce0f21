"""Continuous batching across pairs at IIOF size, machine-independent (no model).

40 images -> 1560 ordered pairs, each with its own analytic objective (alpha peak, beta
gain and eps rounds drawn per pair so that some pairs are accepted after the alpha stage,
some need the beta stage, some resample eps). `scheduler.run` searches them with P pairs
per call; prints the sequential model calls the run issues, the mean occupancy of the
padded calls (real candidates / slots), and the speed-up in calls against P = 1.

    python benchmarks/pairs_per_call.py [--schedule paper|authors] [--pairs 1560]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from vmdiff_jax.engine import scheduler
from vmdiff_jax.method.search import EAAConfig, Evaluation


class AnalyticBackend:
    """One analytic objective per pair, S = peak[k] - 40 (alpha - a*[k])^2 + gain(beta of the
    weaker object); sub-scores consistent with S (numpy only, fast)."""

    def __init__(self, seed: int = 0):
        self.seed, self.pairs = seed, {}

    def start(self, pair):
        rng = np.random.default_rng((self.seed, pair))
        self.pairs[pair] = dict(peaks=rng.uniform(1.95, 2.55, 3), a_star=rng.uniform(0.41, 0.59, 3),
                                weak=int(rng.integers(2)), b_star=rng.uniform(1.2, 3.4), gain=rng.uniform(0.0, 0.3))

    def bnoise(self, items, slots):
        return [(it.pair, it.round, float(it.beta[0]), float(it.beta[1])) for it in items]

    def mdenoise(self, items, slots):
        s = np.empty(len(items))
        weak = np.empty(len(items), int)
        for j, it in enumerate(items):
            pair, k, b1, b2 = it.eps_b
            p = self.pairs[pair]
            b = (b1, b2)[p["weak"]]
            g = p["gain"] * (1.0 - ((b - p["b_star"]) / (1.0 - p["b_star"])) ** 2)
            s[j] = p["peaks"][k - 1] - 40.0 * (it.alpha - p["a_star"][k - 1]) ** 2 + g
            weak[j] = p["weak"]
        d = np.tile(s[:, None] / 4, (1, 2))
        d[np.arange(len(s)), 1 - weak] += 0.05
        n = d.copy()
        c = n * 0.30 + 0.15
        S = d.sum(1) + n.sum(1) - np.abs(d[:, 0] - d[:, 1]) - np.abs(n[:, 0] - n[:, 1])
        return Evaluation(d, c, n, S, [None] * len(s))

    def finish(self, pair, result):
        self.pairs.pop(pair)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--schedule", default="paper", choices=("paper", "authors"))
    ap.add_argument("--pairs", type=int, default=40 * 39)
    ap.add_argument("--P", type=int, nargs="+", default=[1, 8, 32, 128])
    a = ap.parse_args()
    cfg = EAAConfig()
    print(f"{a.pairs} pairs, schedule {a.schedule}")
    print(f"{'P':>5s} {'sequential calls':>17s} {'BNoise':>7s} {'MDeNoise':>9s} {'occupancy':>10s} {'calls x fewer':>14s} {'buckets':>22s} {'host s':>7s}")
    base = None
    for P in a.P:
        t = time.perf_counter()
        stats = scheduler.run(range(a.pairs), AnalyticBackend(), cfg, a.schedule, pairs_per_call=P)
        dt = time.perf_counter() - t
        base = base or stats.sequential_calls
        print(f"{P:5d} {stats.sequential_calls:17d} {stats.bnoise_batches:7d} {stats.mdenoise_batches:9d} "
              f"{stats.mean_occupancy:10.3f} {base / stats.sequential_calls:14.1f} {str(sorted(stats.buckets_used)):>22s} {dt:7.1f}")


if __name__ == "__main__":
    main()

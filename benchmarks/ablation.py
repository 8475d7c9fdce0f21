"""The paper's ablation (Table 2) on the demo world: SS and B_sim of the four rows over every
ordered pair of N objects, with the image-model calls and the wall time each row took.

    python benchmarks/ablation.py [--objects 8] [--pairs-per-call 8] [--steps 20] [--json out.json]

Rows (EAAConfig.ablation): baseline1 = random noise + MDeNoise at alpha 0.5; baseline2 = + BNoise;
alpha = + alpha search; full = + beta search (the method). All rows see the same pairs, seeds and
models (the shipped world), run through the same scheduler (pairs_per_call pairs a call). SS is
the mean S (score.py), B_sim the mean |d1 - d2| + |n1 - n2| (lower is more balanced). Reference:
the paper's Table 2 ordering (each row raises SS and lowers B_sim), stated against what this world
gives. Also prints each row's SS minus baseline1's, measured in this run (S can be negative in
this world, so a ratio would mislead).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from vmdiff_jax.engine.pairs import FusionInput  # noqa: E402
from vmdiff_jax.engine.pipeline import VMDiff  # noqa: E402
from vmdiff_jax.method.search import ABLATIONS  # noqa: E402
from vmdiff_jax.world import objects  # noqa: E402

# 8 objects: every color once, every shape at least once
OBJECTS = [objects.WorldObject(s, c) for s, c in zip(objects.SHAPES * 2, objects.COLORS)]


def run_row(pipe: VMDiff, ablation: str, objs, ppc: int) -> dict:
    pairs = [(i, j) for i, j in itertools.permutations(range(len(objs)), 2)]
    images = [objects.draw(o) for o in objs]
    results = {}

    def inputs(p):
        i, j = p
        seed = 1000 * i + j
        return FusionInput.pair(images[i], images[j], objs[i].label, objs[j].label, jax.random.key(seed), seed)

    pipe.eaa_cfg = dataclasses.replace(pipe.eaa_cfg, ablation=ablation)
    t0 = time.perf_counter()
    stats = pipe.run_pairs(pairs, inputs, lambda p, r: results.__setitem__(p, r), pairs_per_call=ppc)
    wall = time.perf_counter() - t0
    s = np.array([results[p].score for p in pairs])
    sub = [results[p].subscores for p in pairs]
    bsim = np.array([abs(x["d1"] - x["d2"]) + abs(x["n1"] - x["n2"]) for x in sub])
    calls = np.array([results[p].calls for p in pairs])
    accepted = np.mean([r.accepted for r in results.values()])
    return {"row": ablation, "pairs": len(pairs), "SS": float(s.mean()), "B_sim": float(bsim.mean()),
            "calls_per_pair": float(calls.mean()), "accepted": float(accepted), "wall_s": round(wall, 1),
            "sequential_calls": stats.sequential_calls}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--objects", type=int, default=8)
    ap.add_argument("--pairs-per-call", type=int, default=8)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    pipe = VMDiff.demo(num_steps=args.steps)
    objs = OBJECTS[: args.objects]
    print(f"demo world, {len(objs)} objects ({', '.join(o.label for o in objs)}), all ordered pairs; "
          f"threshold {pipe.eaa_cfg.threshold}; {args.pairs_per_call} pairs a call")
    rows = []
    for ablation in ABLATIONS:
        rows.append(run_row(pipe, ablation, objs, args.pairs_per_call))
        r = rows[-1]
        print(f"{r['row']:>10}: SS {r['SS']:.3f}  B_sim {r['B_sim']:.3f}  calls/pair {r['calls_per_pair']:.0f}  "
              f"accepted {r['accepted']:.2f}  SS - baseline1 {r['SS'] - rows[0]['SS']:+.3f}  "
              f"{r['wall_s']} s", flush=True)
    ss = [r["SS"] for r in rows]
    bs = [r["B_sim"] for r in rows]
    print("paper's ordering (SS rising row by row):", "holds" if ss == sorted(ss) else "does not hold",
          "| (B_sim falling row by row):", "holds" if bs == sorted(bs, reverse=True) else "does not hold")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

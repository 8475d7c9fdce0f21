"""fuse_many against fuse_sequence on the demo world: triples (or K-tuples) of objects fused at
once (order-invariant) and the paper's way, pairwise in sequence, in two orders.

    python benchmarks/many_objects.py [--tuples 6] [--k 3] [--steps 20] [--tiny] [--json out.json]

Every final image is scored against ALL K inputs with the K-object score
(`StageRunner.score_against`): S_K, the spread of the d_i and of the n_i (balance: lower is
more balanced), the weakest input's d_i + n_i, and the image-model calls. fuse_sequence runs
in the given order and reversed: how far its two results' S_K and images differ is its order
dependence; fuse_many is run on the reversed order too, and its difference is float noise.
The reference (ratios) is fuse_sequence measured in this same run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from vmdiff_jax.engine.pipeline import VMDiff  # noqa: E402
from vmdiff_jax.method import search  # noqa: E402
from vmdiff_jax.method.score import spread  # noqa: E402
from vmdiff_jax.world import objects  # noqa: E402


def tuples(n: int, k: int) -> list[list[objects.WorldObject]]:
    """n K-tuples of distinct colors and shapes (seeded)."""
    rng = np.random.default_rng(0)
    colors, out = list(objects.COLORS), []
    while len(out) < n:
        cs = rng.choice(len(colors), k, replace=False)
        ss = rng.choice(len(objects.SHAPES), k, replace=k > len(objects.SHAPES))
        out.append([objects.WorldObject(objects.SHAPES[s], colors[c]) for s, c in zip(ss, cs)])
    return out


def figures(pipe, image, images, labels) -> dict:
    sub = pipe.score_against(image[None], np.stack(images), labels)
    d, n = np.asarray(sub.d)[0], np.asarray(sub.nrm)[0]
    return {"S_K": float(sub.S[0]), "spread_d": float(spread(d)), "spread_n": float(spread(n)),
            "weakest": float((d + n).min())}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tuples", type=int, default=6)
    ap.add_argument("--k", type=int, default=3)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--tiny", action="store_true", help="EAAConfig.tiny() (a cheap search)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    pipe = VMDiff.demo(num_steps=args.steps, eaa_cfg=search.EAAConfig.tiny() if args.tiny else None)
    rows = []
    for t, objs in enumerate(tuples(args.tuples, args.k)):
        images, labels = [objects.draw(o) for o in objs], [o.label for o in objs]
        row = {"objects": labels}
        t0 = time.perf_counter()
        many = pipe.fuse_many(images, labels, seed=t)
        row["many"] = dict(figures(pipe, many.image, images, labels), calls=many.calls, s=time.perf_counter() - t0,
                           weights=[round(w, 4) for w in many.weights])
        back = pipe.fuse_many(images[::-1], labels[::-1], seed=t)
        row["many_reversed_dS"] = abs(figures(pipe, back.image, images, labels)["S_K"] - row["many"]["S_K"])
        row["many_reversed_dimage"] = int(np.abs(back.image.astype(int) - many.image.astype(int)).max())
        finals = []
        for name, order in (("sequence", list(range(args.k))), ("sequence_reversed", list(range(args.k))[::-1])):
            t0 = time.perf_counter()
            steps = pipe.fuse_sequence([images[i] for i in order], [labels[i] for i in order], seed=t)
            row[name] = dict(figures(pipe, steps[-1].image, images, labels), calls=sum(r.calls for r in steps),
                             s=time.perf_counter() - t0)
            finals.append(steps[-1].image.astype(int))
        row["sequence_order_dS"] = abs(row["sequence"]["S_K"] - row["sequence_reversed"]["S_K"])
        row["sequence_order_dimage"] = int(np.abs(finals[0] - finals[1]).max())
        rows.append(row)
        m, s = row["many"], row["sequence"]
        print(f"{' + '.join(labels):>48}: fuse_many S_K {m['S_K']:+.3f} spread d/n {m['spread_d']:.3f}/{m['spread_n']:.3f} "
              f"weakest {m['weakest']:+.3f} calls {m['calls']} | sequence S_K {s['S_K']:+.3f} spread "
              f"{s['spread_d']:.3f}/{s['spread_n']:.3f} weakest {s['weakest']:+.3f} calls {s['calls']} | "
              f"reversed: many dS {row['many_reversed_dS']:.1e} (max pixel diff {row['many_reversed_dimage']}), sequence dS "
              f"{row['sequence_order_dS']:.3f} ({row['sequence_order_dimage']})", flush=True)

    def mean(path):
        return float(np.mean([r[path[0]][path[1]] if len(path) == 2 else r[path[0]] for r in rows]))

    summary = {k: {f: mean((k, f)) for f in ("S_K", "spread_d", "spread_n", "weakest", "calls", "s")}
               for k in ("many", "sequence", "sequence_reversed")}
    summary["many_reversed_dS"] = mean(("many_reversed_dS",))
    summary["sequence_order_dS"] = mean(("sequence_order_dS",))
    m, s = summary["many"], summary["sequence"]
    print(f"\nmeans over {len(rows)} {args.k}-tuples ({args.steps} steps{', tiny search' if args.tiny else ''}):")
    for name in ("many", "sequence", "sequence_reversed"):
        x = summary[name]
        print(f"  {name:>17}: S_K {x['S_K']:+.3f}  spread d {x['spread_d']:.3f}  spread n {x['spread_n']:.3f}  "
              f"weakest {x['weakest']:+.3f}  calls {x['calls']:.0f}  {x['s']:.1f} s")
    print(f"  fuse_many / fuse_sequence: calls x{m['calls'] / s['calls']:.2f}, wall x{m['s'] / s['s']:.2f}, "
          f"spread of d x{m['spread_d'] / max(s['spread_d'], 1e-9):.2f}, of n x{m['spread_n'] / max(s['spread_n'], 1e-9):.2f}")
    print(f"  order: |dS_K| reversed: fuse_many {summary['many_reversed_dS']:.1e}, fuse_sequence {summary['sequence_order_dS']:.3f}")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "summary": summary}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

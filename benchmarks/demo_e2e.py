"""`vmdiff demo` end to end (a fresh process each time: imports, tiny random-weight models,
compilation, the full EAA search, outputs), with a cold and then a warm JAX compilation cache.

Prints the wall time of the whole command, the search's image-model-calls and sequential
rounds from report.json, and the report's own split (conditioning / search / model time).
Usage: python benchmarks/demo_e2e.py [--size 128] [--steps 20] [--batch 1] [--schedule paper]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run(out: Path, cache: Path, args) -> tuple[float, dict]:
    env = dict(os.environ, VMDIFF_JAX_CACHE=str(cache))
    cmd = [sys.executable, "-m", "vmdiff_jax.app.cli", "demo", "--out", str(out), "--size", str(args.size), "--steps",
           str(args.steps), "--batch", str(args.batch), "--schedule", args.schedule, "--no-progress"]
    t = time.perf_counter()
    p = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if p.returncode:
        sys.exit(p.stderr[-3000:])
    return wall, json.loads((out / "report.json").read_text())


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--schedule", choices=("paper", "authors"), default="paper")
    args = ap.parse_args()
    import jax

    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        rows = []
        for name in ("cold cache", "warm cache"):
            wall, r = run(d / name.replace(" ", "_"), d / "xla", args)
            rows.append((name, wall, r))
    r = rows[0][2]
    print(f"vmdiff demo --size {args.size} --steps {args.steps} --batch {args.batch} --schedule {args.schedule} "
          f"on {jax.default_backend()} ({os.cpu_count()} CPU cores), tiny random-weight models")
    print(f"  {r['calls']} image-model-calls in {r['rounds']} sequential model calls, "
          f"{len(r['trajectory'])} candidates scored, S = {r['score']:.3f}")
    print(f"  {'':12s} {'wall s':>8s} {'conditioning s':>15s} {'search s':>9s} {'model s':>8s} {'ms / image-model-call':>22s}")
    for name, wall, r in rows:
        t = r["timings"]
        print(f"  {name:12s} {wall:8.1f} {t['conditioning_s']:15.1f} {t['search_s']:9.1f} {t['model_s']:8.1f} "
              f"{1000 * t['search_s'] / r['calls']:22.1f}")
    same = rows[0][2]["score"] == rows[1][2]["score"]
    print(f"  same result both times: {same}; process start + imports + model build = wall - total: "
          + ", ".join(f"{w - r['timings']['total_s']:.1f} s" for _, w, r in rows))


if __name__ == "__main__":
    main()

"""Peak memory of `vmdiff batch` when one input is refused by the size guard (issue 17).

Two runs of the command in child processes (demo models, --steps 2 --size 32 --tiny-search
--locator whole): the reference, a folder of two small photos; the case, the same two plus
`big.png`, a flat RGBA image of 13000 x 13000 pixels (169 MP, over the loader's 64 MP guard,
under Pillow's own bomb limit) that PNG compresses to about 0.7 MB. The loader refuses it unread; before issue 17 the gallery then
decoded it in full for its header thumbnail. Prints each run's peak RSS (the child's
ru_maxrss) and the ratio case / reference (1.0: the refused image costs nothing).

Usage: python benchmarks/batch_memory.py [--tree PATH]   (PATH: the checkout whose vmdiff_jax
runs, e.g. /work/main for the code before the fix; default: this one)
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
RUN = ["--demo-models", "random", "--steps", "2", "--size", "32", "--tiny-search", "--locator", "whole", "--no-progress"]
# a child that runs the command and prints its own peak RSS (kB) last
CHILD = ("import resource, runpy, sys\n"
         "sys.argv = ['vmdiff'] + sys.argv[1:]\n"
         "import vmdiff_jax\nprint('TREE', vmdiff_jax.__file__, flush=True)\n"
         "code = 0\n"
         "try:\n    runpy.run_module('vmdiff_jax.app.cli', run_name='__main__')\n"
         "except SystemExit as e:\n    code = e.code\n"
         "print('PEAK_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, code, flush=True)\n")


def small_photos(folder: Path) -> None:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for k, name in enumerate(["apple", "kettle"]):
        a = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
        a[..., k] = 255
        Image.fromarray(a).save(folder / f"{name}.png")


def big_png(path: Path, side: int = 13000) -> int:
    """A flat RGBA side x side PNG (169 MP, about 0.7 MB: PNG compresses it 1000-fold); returns its bytes."""
    Image.new("RGBA", (side, side), (200, 180, 160, 255)).save(path)
    return path.stat().st_size


def peak_mb(images: Path, out: Path, tree: Path) -> tuple[float, int]:
    env = dict(os.environ, PYTHONPATH=str(tree), JAX_PLATFORMS="cpu", PYTHONDONTWRITEBYTECODE="1")
    p = subprocess.run([sys.executable, "-c", CHILD, "batch", str(images), "--out", str(out)] + RUN, env=env,
                       capture_output=True, text=True, cwd=out.parent)  # not this checkout: `-c` puts the cwd first
    if str(tree) not in p.stdout:
        raise SystemExit(f"the child did not run {tree}'s vmdiff_jax:\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}")
    lines = [line for line in p.stdout.splitlines() if line.startswith("PEAK_KB")]
    if not lines:
        raise SystemExit(f"no peak reported:\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}")
    _, kb, code = lines[-1].split()
    return int(kb) / 1024, int(code)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tree", type=Path, default=ROOT)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        small_photos(tmp / "ref")
        small_photos(tmp / "case")
        size = big_png(tmp / "case" / "big.png")
        ref, code_ref = peak_mb(tmp / "ref", tmp / "out_ref", args.tree)
        case, code_case = peak_mb(tmp / "case", tmp / "out_case", args.tree)
    print(f"tree {args.tree}; big.png {size / 1e6:.2f} MB, 13000 x 13000 RGBA (refused: over 64 MP)")
    print(f"reference (2 photos): peak {ref:.0f} MB (exit {code_ref})")
    print(f"with big.png (its 4 pairs failed): peak {case:.0f} MB (exit {code_case})")
    print(f"ratio case / reference: {case / ref:.2f}")


if __name__ == "__main__":
    main()

"""Write index.html for a `vmdiff batch` folder from its pair folders (vmdiff batch writes it
itself at the end of a run; this redraws it, e.g. after copying results around).

    python scripts/batch_index.py OUT IMAGES_DIR [--unordered]
"""

from __future__ import annotations

import sys
from pathlib import Path

from vmdiff_jax.app import batch


def main(argv: list[str]) -> int:
    out, images_dir = Path(argv[0]), argv[1]
    unordered = "--unordered" in argv
    images = batch.list_images(images_dir)
    dirs = [batch.pair_dir(out, images, i, j) for i, j in batch.pairs_of(len(images), unordered)]
    rows, failed = batch.collect(out, dirs), batch.collect_failed(dirs)
    print(f"{len(rows)} pairs, {len(failed)} failed -> {batch.write_gallery(out, rows, failed, dirs, images)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

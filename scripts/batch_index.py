"""Write index.html (and the results table) for a `vmdiff batch` folder from its pair folders
(vmdiff batch writes them itself at the end of a run; this redraws them, e.g. after copying
results around). The batch's settings come from OUT/batch.json.

    python scripts/batch_index.py OUT IMAGES_DIR [--unordered]
"""

from __future__ import annotations

import sys
from pathlib import Path

from vmdiff_jax.app import batch, batch_settings
from vmdiff_jax.app.gallery import write_batch_page


def main(argv: list[str]) -> int:
    out, images_dir = Path(argv[0]), argv[1]
    images = batch.list_images(images_dir)
    pairs = batch.Pairs(images, out, batch_settings.recorded(out), "--unordered" in argv)
    dirs, done = pairs.folders(), pairs.done_folders()
    rows, failed = batch.collect(out, dirs, done.__contains__), batch.collect_failed(dirs, done.__contains__)
    page = write_batch_page(out, rows, failed, [d for d in dirs if d in done], batch.header_thumbnails(images, {}))
    print(f"{len(rows)} pairs, {len(failed)} failed -> {page}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

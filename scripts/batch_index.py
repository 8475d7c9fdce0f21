"""Write index.html for a finished `vmdiff batch` folder (until `vmdiff batch` writes it itself).

    python scripts/batch_index.py OUT [IMAGES_DIR]   # OUT/pairs/*/report.json + fused.png -> OUT/index.html
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from vmdiff_jax.gallery import write_index_html


def _rgb(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def main(out: str, images_dir: str | None = None) -> int:
    out = Path(out)
    rows, thumbs, links, inputs = [], {}, {}, {}
    for rep in sorted((out / "pairs").glob("*/report.json")):
        r = json.loads(rep.read_text(encoding="utf-8"))
        key = (r["image1"], r["image2"])
        rows.append({"pair": r.get("pair"), "image1": key[0], "image2": key[1], "label1": r["labels"][0],
                     "label2": r["labels"][1], "S": r["score"], "b_sim": r["b_sim"]})
        thumbs[key] = _rgb(rep.parent / "fused.png")
        links[key] = (rep.parent / "fused.png").relative_to(out).as_posix()
        for name in key:
            if images_dir is not None and name not in inputs and (Path(images_dir) / name).is_file():
                inputs[name] = _rgb(Path(images_dir) / name)
    print(f"{len(rows)} pairs -> {write_index_html(out, rows, [], thumbs, inputs=inputs, links=links)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))

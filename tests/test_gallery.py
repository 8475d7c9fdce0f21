"""index.html of a batch (gallery.py): self-contained, the pair grid, failed pairs marked, sortable by S."""

import base64
import io
import re
import shutil
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vmdiff_jax.app.gallery import write_index_html

NAMES = ["apple.png", "duck <&>.png", "teapot.png"]


def _synthetic():
    """Ordered pairs of three images (one failed), a flat-coloured fused image per pair."""
    rng = np.random.default_rng(0)
    rows, failed, thumbs, colours = [], [], {}, {}
    p = 0
    for i, a in enumerate(NAMES):
        for j, b in enumerate(NAMES):
            if i == j:
                continue
            if (i, j) == (2, 0):
                failed.append({"pair": p, "image1": a, "image2": b, "reason": "RESOURCE_EXHAUSTED: out of memory"})
            else:
                rows.append({"pair": p, "image1": a, "image2": b, "label1": a[:-4], "label2": b[:-4],
                             "S": float(rng.uniform(1.5, 2.9)), "b_sim": float(rng.uniform(0.1, 0.6)), "threshold": 2.4})
                colours[(a, b)] = rng.integers(0, 255, 3).astype(np.uint8)
                thumbs[(a, b)] = np.broadcast_to(colours[(a, b)], (200, 240, 3)).copy()
            p += 1
    return rows, failed, thumbs, colours


class _Cells(HTMLParser):
    def __init__(self):
        super().__init__()
        self.imgs, self.tags, self.grid_rows, self.failed_cells = [], [], [], 0
        self._in_grid = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append((tag, a))
        if tag == "img":
            self.imgs.append(a)
        if tag == "table":
            self._in_grid = a.get("id") == "grid"
        if tag == "tr" and self._in_grid and "data-mean" in a:
            self.grid_rows.append(a["data-name"])
        if tag == "td" and "failed" in a.get("class", "") and self._in_grid:
            self.failed_cells += 1


def test_index_is_self_contained_grid(tmp_path):
    rows, failed, thumbs, colours = _synthetic()
    path = write_index_html(tmp_path, rows, failed, thumbs)
    text = path.read_text(encoding="utf-8")
    assert not re.search(r"(src|href)\s*=\s*\"(https?:)?//", text) and "<link" not in text  # nothing fetched
    p = _Cells()
    p.feed(text)
    assert p.grid_rows == sorted(NAMES)  # a row per image 1
    assert p.failed_cells == 1 and "RESOURCE_EXHAUSTED" in text
    assert "duck &lt;&amp;&gt;.png" in text and "duck <&>" not in text  # names escaped
    # grid thumbnails + list thumbnails, all data URIs; each decodes to its pair's colour
    assert len(p.imgs) == 2 * len(rows)
    by_alt = {a["alt"]: a["src"] for a in p.imgs if a.get("alt")}
    for (a, b), colour in colours.items():
        src = by_alt[f"fused {a} + {b}"]
        assert src.startswith("data:image/jpeg;base64,")
        im = np.asarray(Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))).convert("RGB"), np.float64)
        assert max(im.shape[:2]) == 160
        np.testing.assert_allclose(im.mean((0, 1)), colour, atol=4)
    for r in rows:  # S and B_sim printed in the cells
        assert f"S <b>{r['S']:.3f}</b> &middot; B_sim {r['b_sim']:.3f}" in text


def test_index_shows_inputs_and_links_full_images(tmp_path):
    rows, failed, thumbs, _ = _synthetic()
    inputs = {n: np.full((50, 50, 3), 9 * k, np.uint8) for k, n in enumerate(NAMES)}
    links = {(r["image1"], r["image2"]): f"pairs/{r['pair']:03d}/fused.png" for r in rows}
    text = write_index_html(tmp_path, rows, failed, thumbs, inputs=inputs, links=links).read_text(encoding="utf-8")
    p = _Cells()
    p.feed(text)
    assert sum(a.get("class") == "input" for a in p.imgs) == 2 * len(NAMES)  # row and column headers
    hrefs = [a["href"] for tag, a in p.tags if tag == "a"]
    assert sorted(hrefs) == sorted(links.values())


@pytest.mark.skipif(shutil.which("chromium") is None and shutil.which("google-chrome") is None, reason="no headless browser")
def test_index_renders_and_sorts_in_chromium(tmp_path):
    rows, failed, thumbs, _ = _synthetic()
    path = write_index_html(tmp_path, rows, failed, thumbs)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    from screenshot_html import render

    dom = render(path, png=tmp_path / "shot.png", hash_="sort=s:asc")
    shot = np.asarray(Image.open(tmp_path / "shot.png").convert("RGB"))
    assert shot.shape[0] > 500 and shot.std() > 10  # painted, not blank
    s_order = [float(x) for x in re.findall(r'<tr data-pair="\d+" [^>]*data-s="([-\d.]+)"', dom)]
    assert s_order == sorted(round(r["S"], 6) for r in rows)  # ascending: sorted by the page's script
    dom = render(path, hash_="grid=S")
    order = re.findall(r'<tr data-name="([^"]*)" data-mean="([-\d.]+)"', dom)
    means = [float(m) for _, m in order]
    assert means == sorted(means, reverse=True) and len(order) == 3


def test_threshold_comes_from_each_pairs_search(tmp_path):
    """A pair passes against its own search's threshold (rows' "threshold"), not a fixed 2.4."""
    rows, failed, thumbs, _ = _synthetic()
    low = [{**r, "threshold": 1.0} for r in rows]  # every S in [1.5, 2.9] passes 1.0
    text = write_index_html(tmp_path, low, failed, thumbs).read_text(encoding="utf-8")
    assert "S &gt; 1 (framed green)" in text and f"{len(rows)} pairs above" in text
    assert text.count('class="cell pass"') == len(rows)
    high = [{**r, "threshold": 3.0} for r in rows]
    text = write_index_html(tmp_path, high, failed, thumbs).read_text(encoding="utf-8")
    assert "0 pairs above the threshold S &gt; 3" in text and 'class="cell pass"' not in text

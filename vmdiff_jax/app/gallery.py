"""index.html of a batch: every pair's fused image in one self-contained page (no network).

The grid has a row per image 1 and a column per image 2; each cell shows the fused
thumbnail (a data URI), S and B_sim, framed green when S passes the threshold and marked
red when the pair failed. Rows and columns can be ordered by name or by mean S, and the
list below the grid sorts by any column (S first). In the address, `#sort=<key>[:asc|:desc]`
(key: s, bsim, pair, image1, image2) sorts the list on load and `#grid=S` orders the grid
by mean S (used by the headless-browser check). Every name is HTML-escaped after
`inputs.displayable`; links to the pairs' images are URL-encoded. `write_batch_page` builds the
page of a batch from its pair folders; its header thumbnails are given by the caller (made from
the images the batch loaded, never by decoding an input again).
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
import urllib.parse
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from PIL import Image

from vmdiff_jax.app.inputs import displayable
from vmdiff_jax.app.outputs import atomic_write_bytes

THUMB_SIDE = 160
HEAD_CHARS = 48  # characters of a name shown in a row or column header


def thumb_data_uri(image: Any, side: int = THUMB_SIDE) -> str:
    """A JPEG data URI of an image (uint8 (H, W, 3) array, PIL image, or encoded bytes), at most side x side."""
    if isinstance(image, (bytes, bytearray)):
        image = Image.open(io.BytesIO(image))
    im = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image, np.uint8))
    im = im.convert("RGB")
    im.thumbnail((side, side), Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _e(text: Any) -> str:
    return html.escape(displayable(str(text)), quote=True)


def url(path: str) -> str:
    """A relative path as a URL: every character but letters, digits and '/_.-~' percent-encoded
    ('#', '%', '?', '&', quotes, spaces, non-ASCII), so a file name cannot end or redirect the link."""
    return urllib.parse.quote(displayable(path), safe="/")


def _cut(text: Any, n: int = HEAD_CHARS) -> str:
    """A header's text: at most n characters shown (the full name is the header's tooltip)."""
    text = displayable(str(text))
    return text if len(text) <= n else text[:n - 1] + "\u2026"


def _f(x: Any, digits: int = 3) -> str:
    return "" if x is None else f"{float(x):.{digits}f}"


_CSS = """
body { font: 14px/1.35 system-ui, sans-serif; margin: 16px; color: #111; }
h1 { font-size: 20px; margin: 0 0 4px; }
.summary { color: #333; margin-bottom: 10px; }
.controls button { font: inherit; margin-right: 6px; }
table.grid { border-collapse: collapse; margin: 10px 0 24px; }
.grid th, .grid td { border: 1px solid #ccc; padding: 4px; text-align: center; vertical-align: top; }
.grid th { background: #f4f4f4; font-weight: 600; max-width: 170px; word-wrap: break-word; }
.grid th.corner { font-weight: 400; color: #555; }
.grid img.input { display: block; width: 72px; height: 72px; object-fit: contain; margin: 0 auto 2px; }
.cell img { display: block; width: 160px; height: 160px; object-fit: contain; margin: 0 auto 2px; }
.cell.pass { outline: 3px solid #2a2; outline-offset: -3px; }
.cell.failed { background: #fde2e2; color: #a00; }
.cell.failed .why { font-size: 11px; max-width: 160px; word-wrap: break-word; }
.cell.self { background: #eee; color: #999; }
.nums { font-variant-numeric: tabular-nums; font-size: 13px; }
table.list { border-collapse: collapse; }
.list th { cursor: pointer; background: #f4f4f4; user-select: none; }
.list thead td { background: #f4f4f4; font-weight: 600; }
.list th, .list td { border: 1px solid #ccc; padding: 3px 8px; }
.list td.n { text-align: right; font-variant-numeric: tabular-nums; }
.list img { width: 64px; height: 64px; display: block; }
.list tr.failed td { background: #fde2e2; color: #a00; }
"""

_JS = """
const byId = (id) => document.getElementById(id);
function num(v) { const x = parseFloat(v); return isNaN(x) ? -Infinity : x; }
function sortList(key, desc) {
  const body = byId('list').tBodies[0];
  const rows = Array.from(body.rows);
  const numeric = ['s', 'bsim', 'pair'].includes(key);
  rows.sort((a, b) => {
    const x = a.dataset[key] || '', y = b.dataset[key] || '';
    const c = numeric ? num(x) - num(y) : x.localeCompare(y);
    return desc ? -c : c;
  });
  rows.forEach((r) => body.appendChild(r));
  document.querySelectorAll('#list th').forEach((th) => {
    th.textContent = th.dataset.label + (th.dataset.key === key ? (desc ? ' \\u25bc' : ' \\u25b2') : '');
  });
  byId('list').dataset.sorted = key + (desc ? ':desc' : ':asc');
}
function orderGrid(mode) {
  const grid = byId('grid');
  const head = grid.tHead.rows[0];
  const body = grid.tBodies[0];
  const rows = Array.from(body.rows);
  const key = (el) => mode === 'S' ? -num(el.dataset.mean) : 0;
  const name = (el) => el.dataset.name;
  const cmp = (a, b) => (key(a) - key(b)) || name(a).localeCompare(name(b));
  rows.sort(cmp).forEach((r) => body.appendChild(r));
  const cols = Array.from(head.cells).slice(1).sort(cmp);
  const order = cols.map((c) => c.dataset.col);
  cols.forEach((c) => head.appendChild(c));
  rows.forEach((r) => {
    const cells = {};
    Array.from(r.cells).slice(1).forEach((c) => { cells[c.dataset.col] = c; });
    order.forEach((k) => r.appendChild(cells[k]));
  });
  grid.dataset.order = mode;
}
document.querySelectorAll('#list th').forEach((th) => {
  th.addEventListener('click', () => {
    const cur = byId('list').dataset.sorted || '';
    const k = th.dataset.key;
    const desc = cur === k + ':desc' ? false : (cur === k + ':asc' ? true : k === 's');
    sortList(k, desc);
  });
});
const m = location.hash.match(/sort=(\\w+)(:asc|:desc)?/);
const first = m ? m[1] : 's';
sortList(first, m && m[2] ? m[2] === ':desc' : first === 's');
if (location.hash.includes('grid=S')) orderGrid('S');
"""


def _passed(row: Mapping[str, Any]) -> bool:
    """Whether a completed pair's S passed its own search's acceptance threshold."""
    return float(row["S"]) > float(row["threshold"])


def index_html(rows: Sequence[Mapping[str, Any]], failed: Sequence[Mapping[str, Any]],
               thumbs: Mapping[tuple[str, str], Any], *, inputs: Mapping[str, Any] | None = None,
               links: Mapping[tuple[str, str], str] | None = None, title: str = "vmdiff batch") -> str:
    """The page's HTML. rows: completed pairs as batch.collect gives them (image1, image2,
    label1, label2, S, b_sim, pair, threshold: the acceptance threshold of its search, ...); failed: {image1, image2, reason} per failed pair;
    thumbs: {(image1, image2): fused image} (see thumb_data_uri); inputs: {image name: input
    image} shown in the row and column headers; links: {(image1, image2): relative address
    of the pair's full-size fused.png}, opened by clicking its cell."""
    ok = {(r["image1"], r["image2"]): r for r in rows}
    bad = {(f["image1"], f["image2"]): f for f in failed}
    names1 = sorted({k[0] for k in (*ok, *bad)})
    names2 = sorted({k[1] for k in (*ok, *bad)})
    labels = {}
    for r in rows:
        labels.setdefault(r["image1"], r.get("label1"))
        labels.setdefault(r["image2"], r.get("label2"))
    uris = {k: thumb_data_uri(v) for k, v in thumbs.items() if k in ok}
    heads = {k: thumb_data_uri(v, 72) for k, v in (inputs or {}).items()}
    links = links or {}

    def head(name: str) -> str:
        img = f"<img class=\"input\" alt=\"\" src=\"{heads[name]}\">" if name in heads else ""
        lab = labels.get(name)
        return (f"{img}<span title=\"{_e(name)}\">{_e(_cut(lab if lab else name))}<br>"
                f"<small>{_e(_cut(name))}</small></span>")

    def mean_s(pred) -> str:
        s = [float(r["S"]) for k, r in ok.items() if pred(k)]
        return f"{np.mean(s):.4f}" if s else ""

    out = [f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{_e(title)}</title>",
           f"<style>{_CSS}</style></head><body>", f"<h1>{_e(title)}</h1>"]
    ss = np.mean([float(r["S"]) for r in rows]) if rows else None
    bs = np.mean([float(r["b_sim"]) for r in rows]) if rows else None
    passed = sum(_passed(r) for r in rows)
    thresholds = sorted({float(r["threshold"]) for r in rows})
    threshold = f"{thresholds[0]:g}" if len(thresholds) == 1 else ("each pair's threshold" if thresholds else "-")
    out.append(f"<div class=\"summary\">{len(rows)} pairs fused, {len(failed)} failed; "
               f"SS (mean S) <b>{_f(ss)}</b>, B_sim (mean; lower is more balanced) <b>{_f(bs)}</b>; "
               f"{passed} pairs above the threshold S &gt; {threshold} (framed green).</div>")
    out.append("<div class=\"controls\">Order rows and columns by: "
               "<button onclick=\"orderGrid('name')\">name</button>"
               "<button onclick=\"orderGrid('S')\">mean S (highest first)</button></div>")
    out.append("<table class=\"grid\" id=\"grid\" data-order=\"name\"><thead><tr>"
               "<th class=\"corner\" data-name=\"\" data-col=\"\">image 1 &darr; &nbsp; image 2 &rarr;</th>")
    for n2 in names2:
        out.append(f"<th data-col=\"{_e(n2)}\" data-name=\"{_e(n2)}\" data-mean=\"{mean_s(lambda k, n=n2: k[1] == n)}\">"
                   f"{head(n2)}</th>")
    out.append("</tr></thead><tbody>")
    for n1 in names1:
        out.append(f"<tr data-name=\"{_e(n1)}\" data-mean=\"{mean_s(lambda k, n=n1: k[0] == n)}\">"
                   f"<th data-col=\"\">{head(n1)}</th>")
        for n2 in names2:
            key = (n1, n2)
            attrs = f"data-col=\"{_e(n2)}\""
            if key in ok:
                r = ok[key]
                cls = "cell pass" if _passed(r) else "cell"
                img = f"<img alt=\"fused {_e(n1)} + {_e(n2)}\" src=\"{uris[key]}\">" if key in uris else "<div>(no image)</div>"
                if key in links:
                    img = f"<a href=\"{_e(url(links[key]))}\">{img}</a>"
                out.append(f"<td class=\"{cls}\" {attrs} title=\"{_e(r.get('label1', n1))} + {_e(r.get('label2', n2))}\">{img}"
                           f"<div class=\"nums\">S <b>{_f(r['S'])}</b> &middot; B_sim {_f(r.get('b_sim'))}</div></td>")
            elif key in bad:
                why = bad[key].get("reason", "")
                out.append(f"<td class=\"cell failed\" {attrs} title=\"{_e(why)}\"><b>FAILED</b>"
                           f"<div class=\"why\">{_e(str(why)[:160])}</div></td>")
            elif n1 == n2:
                out.append(f"<td class=\"cell self\" {attrs}>&mdash;</td>")
            else:
                out.append(f"<td class=\"cell\" {attrs}><small>not run</small></td>")
        out.append("</tr>")
    out.append("</tbody></table>")
    cols = (("pair", "pair"), ("image1", "image 1"), ("image2", "image 2"), ("s", "S"), ("bsim", "B_sim"))
    out.append("<h2 style=\"font-size:16px\">All pairs (click a column to sort)</h2><table class=\"list\" id=\"list\"><thead><tr>")
    for key, label in cols:
        out.append(f"<th data-key=\"{key}\" data-label=\"{label}\">{label}</th>")
    out.append("<td>fused</td></tr></thead><tbody>")
    for key, r in sorted(ok.items(), key=lambda kv: -float(kv[1]["S"])):
        img = f"<img alt=\"\" src=\"{uris[key]}\">" if key in uris else ""
        out.append(f"<tr data-pair=\"{_e(r.get('pair', ''))}\" data-image1=\"{_e(key[0])}\" data-image2=\"{_e(key[1])}\" "
                   f"data-s=\"{_f(r['S'], 6)}\" data-bsim=\"{_f(r.get('b_sim'), 6)}\">"
                   f"<td class=\"n\">{_e(r.get('pair', ''))}</td><td>{_e(key[0])}</td><td>{_e(key[1])}</td>"
                   f"<td class=\"n\">{_f(r['S'])}</td><td class=\"n\">{_f(r.get('b_sim'))}</td><td>{img}</td></tr>")
    for key, f in bad.items():
        out.append(f"<tr class=\"failed\" data-pair=\"{_e(f.get('pair', ''))}\" data-image1=\"{_e(key[0])}\" "
                   f"data-image2=\"{_e(key[1])}\" data-s=\"\" data-bsim=\"\"><td class=\"n\">{_e(f.get('pair', ''))}</td>"
                   f"<td>{_e(key[0])}</td><td>{_e(key[1])}</td><td colspan=\"3\">FAILED: {_e(f.get('reason', ''))}</td></tr>")
    out.append("</tbody></table>")
    out.append(f"<script>{_JS}</script></body></html>\n")
    return "\n".join(out)


def write_index_html(out: str | os.PathLike, rows: Sequence[Mapping[str, Any]], failed: Sequence[Mapping[str, Any]],
                     thumbs: Mapping[tuple[str, str], Any], **kw) -> Path:
    """out/index.html (see index_html; kw: inputs, links, title), written whole; returns its path."""
    path = Path(out) / "index.html"
    atomic_write_bytes(path, index_html(rows, failed, thumbs, **kw).encode("utf-8"))
    return path


def _small(path: Path, side: int = 256):
    with Image.open(path) as im:
        im.thumbnail((side, side))
        return np.asarray(im.convert("RGB"))


def write_batch_page(out: str | os.PathLike, rows: Sequence[Mapping[str, Any]], failed: Sequence[Mapping[str, Any]],
                     done: Sequence[os.PathLike], inputs: Mapping[str, Any]) -> Path:
    """out/index.html of a batch: `rows` / `failed` as pairs_table gives them, the fused
    thumbnails of the completed pair folders `done` (each linked to its fused.png), the input
    thumbnails `inputs` ({displayable image name: small uint8 image}) in the headers (each
    row's threshold is its own search's: pairs_table.row_of)."""
    out = Path(out)
    thumbs, links = {}, {}
    for d in map(Path, done):
        r = json.loads((d / "report.json").read_text(encoding="utf-8"))
        key = (displayable(str(r["image1"])), displayable(str(r["image2"])))
        thumbs[key] = _small(d / "fused.png")
        links[key] = (d / "fused.png").relative_to(out).as_posix()
    return write_index_html(out, rows, failed, thumbs, inputs=inputs, links=links)

"""Outputs of one fusion: fused.png, report.json and search.png, written atomically."""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from vmdiff_jax.images import atomic_write_bytes, png_bytes

REPORT_SCHEMA_VERSION = 1


def versions() -> dict[str, str]:
    """Versions of the software that produced a result."""
    import flax
    import jax

    from vmdiff_jax import __version__

    return {
        "vmdiff_jax": __version__,
        "jax": jax.__version__,
        "flax": flax.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "backend": jax.default_backend(),
        "devices": ", ".join(sorted({d.device_kind for d in jax.devices()})),
    }


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def search_figure(trajectory: Sequence[dict], thumbs: Sequence[np.ndarray] | None = None, threshold: float = 2.4) -> Image.Image:
    """Score S against alpha (alpha stage dots, beta stage squares), above a contact sheet
    of the candidates' thumbnails labelled with their parameters and scores."""
    W, H, pad = 640, 300, 48
    img = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(img)
    f = _font(12)
    xs = [t["alpha"] for t in trajectory] or [0.5]
    ys = [t["S"] for t in trajectory] or [0.0]
    x0, x1 = min(min(xs), 0.4), max(max(xs), 0.6)
    y0, y1 = min(min(ys), threshold) - 0.1, max(max(ys), threshold) + 0.1
    px = lambda x: pad + (x - x0) / max(x1 - x0, 1e-9) * (W - 2 * pad)  # noqa: E731
    py = lambda y: H - pad - (y - y0) / max(y1 - y0, 1e-9) * (H - 2 * pad)  # noqa: E731
    d.rectangle([pad, pad, W - pad, H - pad], outline="black")
    d.line([pad, py(threshold), W - pad, py(threshold)], fill=(200, 0, 0))
    d.text((W - pad - 90, py(threshold) - 14), f"Th = {threshold}", fill=(200, 0, 0), font=f)
    for v in np.linspace(x0, x1, 5):
        d.text((px(v) - 12, H - pad + 6), f"{v:.3f}", fill="black", font=f)
    for v in np.linspace(y0, y1, 5):
        d.text((4, py(v) - 6), f"{v:.2f}", fill="black", font=f)
    d.text((W // 2 - 20, H - 18), "alpha", fill="black", font=f)
    d.text((pad, 8), "similarity score S per candidate (o alpha stage, [] beta stage)", fill="black", font=f)
    best = int(np.argmax(ys)) if trajectory else -1
    for i, t in enumerate(trajectory):
        cx, cy, r = px(t["alpha"]), py(t["S"]), 4
        col = (0, 90, 200) if t.get("stage") == "alpha" else (230, 120, 0)
        if t.get("stage") == "alpha":
            d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=col)
        else:
            d.rectangle([cx - r, cy - r, cx + r, cy + r], fill=col)
        if i == best:
            d.ellipse([cx - 8, cy - 8, cx + 8, cy + 8], outline=(0, 160, 0), width=2)
    if not thumbs:
        return img
    n, cols, ts = len(thumbs), 6, 100
    rows = (n + cols - 1) // cols
    sheet = Image.new("RGB", (W, H + rows * (ts + 30)), "white")
    sheet.paste(img, (0, 0))
    d = ImageDraw.Draw(sheet)
    for i, (th, t) in enumerate(zip(thumbs, trajectory)):
        x, y = 6 + (i % cols) * (ts + 6), H + (i // cols) * (ts + 30)
        sheet.paste(Image.fromarray(np.asarray(th, np.uint8)).resize((ts, ts)), (x, y))
        if i == best:
            d.rectangle([x - 2, y - 2, x + ts + 1, y + ts + 1], outline=(0, 160, 0), width=3)
        d.text((x, y + ts + 2), f"a={t['alpha']:.3f} b={t['beta1']:.1f}/{t['beta2']:.1f}", fill="black", font=_font(10))
        d.text((x, y + ts + 14), f"S={t['S']:.3f} k={t.get('round', 0)}", fill="black", font=_font(10))
    return sheet


def write_outputs(out: Path, image: np.ndarray, report: dict[str, Any], figure: Image.Image) -> None:
    """fused.png, search.png, report.json under `out`, each written to a temporary name then renamed."""
    payloads = {
        "fused.png": png_bytes(image),
        "search.png": png_bytes(figure),
        "report.json": (json.dumps(report, indent=2, sort_keys=True, default=_json_default) + "\n").encode(),
    }  # report.json last: its presence marks a complete result (batch resumption)
    for name, data in payloads.items():
        atomic_write_bytes(out / name, data)


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")

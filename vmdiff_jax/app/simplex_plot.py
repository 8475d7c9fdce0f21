"""search.png's plot for K >= 3 objects (report.search_figure draws pairs' alpha / beta panels).

K = 3: the weights stage on the triangle (a ternary plot): the whole simplex with the searched
box, and the box enlarged, every candidate coloured by its S, the accepted moves joined, the
chosen one starred; beside it the beta stage (S against the weakest object's beta). K >= 4:
S of the weights stage in evaluation order, and the beta stage.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from PIL import Image

_SQ3 = math.sqrt(3.0) / 2.0


def to_xy(w) -> np.ndarray:
    """Barycentric (..., 3) -> plane (..., 2): object 1 at (0, 0), 2 at (1, 0), 3 at (1/2, sqrt(3)/2)."""
    w = np.asarray(w, np.float64)
    return np.stack([w[..., 1] + 0.5 * w[..., 2], _SQ3 * w[..., 2]], axis=-1)


def weights_of(t: dict, k: int) -> np.ndarray:
    return np.array([t[f"w{i}"] for i in range(1, k + 1)])


def _box(k: int, r: float) -> np.ndarray:
    """Corners of {w : |w_i - 1/3| <= r} on the triangle (a hexagon), as barycentric rows."""
    c = 1.0 / k
    lo, hi = max(c - r, 0.0), min(c + r, 1.0)
    pts = []
    for i in range(3):  # w_i = hi, w_j = lo, w_l = 1 - hi - lo, for each ordered (i, j)
        for j in range(3):
            if i != j:
                w = np.empty(3)
                w[i], w[j] = hi, lo
                w[3 - i - j] = 1.0 - hi - lo
                if lo - 1e-9 <= w[3 - i - j] <= hi + 1e-9:
                    pts.append(w)
    xy = to_xy(np.array(pts))
    centre = xy.mean(0)
    order = np.argsort(np.arctan2(xy[:, 1] - centre[1], xy[:, 0] - centre[0]))
    return np.array(pts)[order]


def simplex_plot(trajectory: Sequence[dict], threshold: float, labels: Sequence[str], radius: float | None = None,
                 width_px: int = 1200) -> Image.Image:
    """The plot of a K >= 3 search (module doc) as an RGB image."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    traj = list(trajectory)
    k = len(labels)
    stage_w = [t for t in traj if t.get("stage") in ("weights", "fixed")]
    stage_b = [t for t in traj if t.get("stage") == "beta"]
    best = max(traj, key=lambda t: t["S"]) if traj else None
    s_all = [t["S"] for t in traj] or [0.0]
    vmin, vmax = min(s_all), max(max(s_all), min(s_all) + 1e-6)
    dpi = 100
    fig = Figure(figsize=(width_px / dpi, 4.8), dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 3 if k == 3 else 2, width_ratios=[1, 1, 1] if k == 3 else [2, 1])
    sc = None
    if k == 3:
        ax_full, ax_zoom, ax_b = axes
        corners = to_xy(np.eye(3))
        for ax in (ax_full, ax_zoom):
            ax.plot(*np.vstack([corners, corners[:1]]).T, color="black", lw=1)
            if radius is not None:
                hexagon = to_xy(_box(3, radius))
                ax.fill(*hexagon.T, color="0.92", zorder=0, label="searched region")
            ws = np.array([weights_of(t, 3) for t in stage_w]).reshape(-1, 3)
            if len(ws):
                xy = to_xy(ws)
                sc = ax.scatter(xy[:, 0], xy[:, 1], c=[t["S"] for t in stage_w], cmap="viridis", vmin=vmin, vmax=vmax,
                                s=36 if ax is ax_zoom else 14, edgecolors="black", linewidths=0.3, zorder=3)
            if best is not None and "w1" in best:
                bxy = to_xy(weights_of(best, 3))
                ax.plot([bxy[0]], [bxy[1]], marker="*", ms=18 if ax is ax_zoom else 12, mfc="gold", mec="black",
                        ls="none", zorder=5)
            ax.set_aspect("equal")
            ax.set_xticks([])
            ax.set_yticks([])
        for (x, y), lab, (dx, dy, ha) in zip(corners, labels, ((-0.02, -0.06, "left"), (0.02, -0.06, "right"), (0, 0.03, "center"))):
            ax_full.text(x + dx, y + dy, lab, ha=ha, fontsize=10)
        ax_full.set_xlim(-0.08, 1.08)
        ax_full.set_ylim(-0.12, _SQ3 + 0.1)
        ax_full.set_title("weights on the triangle (vertex i: object i alone)", fontsize=10)
        if len(stage_w):
            xy = to_xy(np.array([weights_of(t, 3) for t in stage_w]))
            span = max(float(np.ptp(xy, axis=0).max()), 0.02)
            mid = (xy.max(0) + xy.min(0)) / 2
            ax_zoom.set_xlim(mid[0] - 0.65 * span, mid[0] + 0.65 * span)
            ax_zoom.set_ylim(mid[1] - 0.65 * span, mid[1] + 0.65 * span)
            for i, (x, y) in enumerate(xy, 1):
                ax_zoom.annotate(str(i), (x, y), textcoords="offset points", xytext=(4, 3), fontsize=7, color="0.3")
            for lab, corner in zip(labels, corners):  # arrows toward each vertex from the zoom's centre
                d = corner - mid
                d = d / max(np.linalg.norm(d), 1e-9) * 0.45 * span
                ax_zoom.annotate(lab, mid + d, xytext=mid + 0.75 * d, fontsize=8, color="0.35", ha="center",
                                 arrowprops=dict(arrowstyle="->", color="0.6", lw=0.8))
        ax_zoom.set_title("the searched region enlarged (numbers: evaluation order)", fontsize=10)
    else:
        ax_w, ax_b = axes
        xs = np.arange(1, len(stage_w) + 1)
        sc = ax_w.scatter(xs, [t["S"] for t in stage_w], c=[t["S"] for t in stage_w], cmap="viridis", vmin=vmin, vmax=vmax,
                          edgecolors="black", linewidths=0.3)
        ax_w.set_xlabel("weights-stage candidate (evaluation order)", fontsize=10)
        ax_w.set_ylabel("similarity score S", fontsize=10)
        ax_w.set_title(f"weights stage over the {k}-object simplex", fontsize=10)
        ax_w.axhline(threshold, color="red", ls="--", lw=1)
        ax_w.grid(True, alpha=0.3)
    if stage_b:
        weak = int(np.argmax(np.ptp([[t[f"beta{i}"] for i in range(1, k + 1)] for t in stage_b], axis=0)))
        pts = sorted((t[f"beta{weak + 1}"], t["S"], int(t.get("round", 1))) for t in stage_b)
        for rnd in sorted({p[2] for p in pts}):
            sub = [(b, s) for b, s, r in pts if r == rnd]
            ax_b.plot(*zip(*sub), "s-", color=f"C{rnd - 1}", ms=5, lw=1, label=f"round {rnd}")
        ax_b.set_xlabel(f"\N{GREEK SMALL LETTER BETA}{weak + 1} ({labels[weak]}, the weakest object)", fontsize=10)
        ax_b.legend(fontsize=8, frameon=False)
    else:
        ax_b.text(0.5, 0.5, "no beta stage\n(the weights stage passed,\nor the ablation row has none)", ha="center",
                  va="center", transform=ax_b.transAxes, fontsize=10, color="0.4")
    ax_b.axhline(threshold, color="red", ls="--", lw=1, label=f"threshold {threshold:g}")
    ax_b.set_title("beta stage (at the stage's best weights)", fontsize=10)
    ax_b.grid(True, alpha=0.3)
    if sc is not None:
        fig.colorbar(sc, ax=axes[-2] if k == 3 else axes[0], label="S", shrink=0.8)
    if best is not None:
        w = "/".join(f"{best[f'w{i}']:.3f}" for i in range(1, k + 1)) if "w1" in best else "1/K"
        b = "/".join(f"{best[f'beta{i}']:.1f}" for i in range(1, k + 1))
        fig.suptitle(f"EAA search over {k} objects: chosen weights {w}, \N{GREEK SMALL LETTER BETA} {b}, "
                     f"S = {best['S']:.3f} (threshold {threshold:g})", fontsize=12)
    fig.canvas.draw()
    return Image.fromarray(np.asarray(fig.canvas.buffer_rgba())[..., :3].copy())

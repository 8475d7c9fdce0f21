"""Outputs of one fusion: fused.png, report.json and search.png (the search drawn with matplotlib), written as one set."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from vmdiff_jax.app.inputs import displayable, png_bytes
from vmdiff_jax.app.outputs import write_result_set
from vmdiff_jax.engine.fusion_result import FusionResult


RESULT_FILES = ("fused.png", "search.png", "report.json")


def _font(size: int) -> ImageFont.FreeTypeFont:
    """matplotlib's DejaVu Sans (it has the Greek letters Pillow's default font lacks)."""
    from matplotlib import font_manager

    return ImageFont.truetype(font_manager.findfont("DejaVu Sans"), size)


def _searched_beta(entries: Sequence[dict], base: float) -> int:
    """Which beta (0: beta1, 1: beta2) a round's beta stage searched: the one that varies
    over its candidates, else the one that left the alpha stage's common value `base`."""
    b = np.array([[t["beta1"], t["beta2"]] for t in entries], float)
    spread = b.max(0) - b.min(0)
    if spread.max() > 0:
        return int(np.argmax(spread))
    return int(b[0, 0] == base and b[0, 1] != base)


def score_plot(trajectory: Sequence[dict], threshold: float, width_px: int = 1000) -> Image.Image:
    """Two panels drawn with matplotlib: S against alpha (alpha stage) and against the searched
    beta (beta stage); one colour per round, the threshold, the chosen (best) candidate starred."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    dpi = 100
    fig = Figure(figsize=(width_px / dpi, 4.4), dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    ax_a, ax_b = fig.subplots(1, 2, sharey=True)
    traj = list(trajectory)
    rounds = sorted({int(t.get("round", 1)) for t in traj}) or [1]
    colors = {k: f"C{i % 10}" for i, k in enumerate(rounds)}
    best = max(range(len(traj)), key=lambda i: traj[i]["S"]) if traj else None
    searched = {}
    for k in rounds:
        entries = [t for t in traj if int(t.get("round", 1)) == k and t.get("stage") == "beta"]
        alpha_stage = [t for t in traj if int(t.get("round", 1)) == k and t.get("stage") == "alpha"]
        if entries:
            searched[k] = _searched_beta(entries, alpha_stage[0]["beta1"] if alpha_stage else 1.0)

    def x_of(t):
        if t.get("stage") == "beta":
            return t["beta1"] if searched.get(int(t.get("round", 1)), 0) == 0 else t["beta2"]
        return t["alpha"]

    for ax, stage in ((ax_a, "alpha"), (ax_b, "beta")):
        for k in rounds:
            pts = sorted((x_of(t), t["S"]) for t in traj if t.get("stage") == stage and int(t.get("round", 1)) == k)
            if not pts:
                continue
            xs, ys = zip(*pts)
            ax.plot(xs, ys, "-", color=colors[k], lw=1, alpha=0.5)
            ax.plot(xs, ys, "o" if stage == "alpha" else "s", color=colors[k], ms=5)
            start = [t for t in traj if t.get("stage") == "alpha" and int(t.get("round", 1)) == k]
            if stage == "beta" and start:  # where the beta stage starts: the alpha stage's best, at the common beta
                s0 = max(start, key=lambda t: t["S"])
                ax.plot([s0["beta1"]], [s0["S"]], "o", mfc="white", mec=colors[k], ms=7)
        ax.grid(True, alpha=0.3)
        ax.tick_params(labelsize=10)
    ax_a.set_xlabel("\N{GREEK SMALL LETTER ALPHA}  (MDeNoise mixing weight of image 2)", fontsize=11)
    which = sorted({v + 1 for v in searched.values()})
    ax_b.set_xlabel("searched \N{GREEK SMALL LETTER BETA}" + (f"{which[0]}" if len(which) == 1 else "")
                    + "  (BNoise weight of the weaker image)", fontsize=11)
    ax_a.set_ylabel("similarity score S", fontsize=11)
    base = next((t["beta1"] for t in traj if t.get("stage") == "alpha"), None)
    ax_a.set_title("alpha stage" + ("" if base is None else f" (\N{GREEK SMALL LETTER BETA}1 = \N{GREEK SMALL LETTER BETA}2 = {base:g})"),
                   fontsize=11)
    ax_b.set_title("beta stage (at the round's best \N{GREEK SMALL LETTER ALPHA})" if searched else "beta stage (none: the alpha stage passed)", fontsize=11)
    ys = [t["S"] for t in traj] or [0.0]
    lo, hi = min(ys), max(ys)
    span = max(hi - lo, 1e-3)
    th_visible = lo - span <= threshold <= hi + span
    for ax in (ax_a, ax_b):
        if th_visible:
            ax.axhline(threshold, color="red", ls="--", lw=1.2)
    note = ""
    if not th_visible:
        note = (f"\nthreshold {threshold:g} lies above the plotted range: no candidate reached it" if threshold > hi
                else f"\nthreshold {threshold:g} lies below the plotted range: every candidate passed it")
    if best is not None:
        t = traj[best]
        ax = ax_a if t.get("stage") == "alpha" else ax_b
        ax.plot([x_of(t)], [t["S"]], marker="*", ms=18, mfc="gold", mec="black", ls="none", zorder=5)
        fig.suptitle(f"EAA search: S of every candidate; chosen \N{GREEK SMALL LETTER ALPHA} = {t['alpha']:.4f}, "
                     f"\N{GREEK SMALL LETTER BETA} = ({t['beta1']:.2f}, {t['beta2']:.2f}), S = {t['S']:.3f}" + note, fontsize=12)
    mixed = len(which) > 1
    handles = [Line2D([], [], color=colors[k], marker="o", lw=1,
                      label=f"round {k}" + (f" (\N{GREEK SMALL LETTER BETA}{searched[k] + 1} searched)" if mixed and k in searched else ""))
               for k in rounds]
    handles += [Line2D([], [], color="gray", marker="o", ls="none", label="alpha-stage candidate"),
                Line2D([], [], color="gray", marker="s", ls="none", label="beta-stage candidate")]
    if searched:
        handles.append(Line2D([], [], color="gray", marker="o", mfc="white", ms=7, ls="none", label="alpha stage's best (beta stage's start)"))
    if best is not None:
        handles.append(Line2D([], [], marker="*", ms=14, mfc="gold", mec="black", ls="none", label="chosen"))
    if th_visible:
        handles.append(Line2D([], [], color="red", ls="--", label=f"threshold {threshold:g}"))
    fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 5), fontsize=9, frameon=False)
    fig.canvas.draw()
    return Image.fromarray(np.asarray(fig.canvas.buffer_rgba())[..., :3].copy())


def search_figure(trajectory: Sequence[dict], thumbs: Sequence[np.ndarray] | None, threshold: float,
                  labels: Sequence[str] | None = None, radius: float | None = None) -> Image.Image:
    """`score_plot` (K >= 3 labels: simplex_plot.simplex_plot, radius the weights' box) above a
    contact sheet of the candidates' thumbnails in evaluation order, each labelled with its
    parameters, score and round (the chosen one framed in green)."""
    many = labels is not None and len(labels) > 2
    if many:
        from vmdiff_jax.app.simplex_plot import simplex_plot

        plot = simplex_plot(trajectory, threshold, labels, radius)
    else:
        plot = score_plot(trajectory, threshold)
    if not thumbs:
        return plot
    W, H = plot.size
    ts, gap, text_h = 100, 6, 30
    cols = max(1, (W - gap) // (ts + gap))
    n = min(len(thumbs), len(trajectory))
    rows = (n + cols - 1) // cols
    sheet = Image.new("RGB", (W, H + 24 + rows * (ts + text_h)), "white")
    sheet.paste(plot, (0, 0))
    d = ImageDraw.Draw(sheet)
    first = "k1w = round 1, weights stage" if many else "k1\N{GREEK SMALL LETTER ALPHA} = round 1, alpha stage"
    d.text((gap, H + 4), f"candidates in evaluation order ({first}; the chosen one framed in green)", fill="black", font=_font(13))
    best = int(np.argmax([t["S"] for t in trajectory])) if trajectory else -1
    f = _font(11)
    for i in range(n):
        th, t = thumbs[i], trajectory[i]
        x, y = gap + (i % cols) * (ts + gap), H + 24 + (i // cols) * (ts + text_h)
        sheet.paste(Image.fromarray(np.asarray(th, np.uint8)).resize((ts, ts)), (x, y))
        if i == best:
            d.rectangle([x - 3, y - 3, x + ts + 2, y + ts + 2], outline=(0, 160, 0), width=3)
        stage = {"alpha": "\N{GREEK SMALL LETTER ALPHA}", "beta": "\N{GREEK SMALL LETTER BETA}", "weights": "w"}.get(t.get("stage"), "")
        if many:
            k = len(labels)
            if t.get("stage") == "beta":  # the weights are the stage's start; the betas vary
                text = "\N{GREEK SMALL LETTER BETA} " + "/".join(f"{t[f'beta{i}']:.1f}" for i in range(1, k + 1))
            else:
                text = "w " + "/".join(f"{t[f'w{i}']:.2f}".lstrip("0") for i in range(1, k + 1))
        else:
            text = f"\N{GREEK SMALL LETTER ALPHA}{t['alpha']:.3f} \N{GREEK SMALL LETTER BETA}{t['beta1']:.1f}/{t['beta2']:.1f}"
        d.text((x, y + ts + 2), text, fill="black", font=f)
        d.text((x, y + ts + 15), f"S {t['S']:.3f} k{t.get('round', 0)}{stage}", fill="black", font=f)
    return sheet


def _clean(o):
    """Every string made valid UTF-8 (images.displayable: non-UTF-8 file names' bytes as \\xNN)."""
    if isinstance(o, str):
        return displayable(o)
    if isinstance(o, dict):
        return {_clean(k): _clean(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_clean(v) for v in o]
    return o


def report_json(report: dict[str, Any]) -> bytes:
    """report.json's bytes: sorted keys, UTF-8 (non-ASCII labels kept readable)."""
    text = json.dumps(_clean(report), indent=2, sort_keys=True, ensure_ascii=False, default=_json_default) + "\n"
    return text.encode("utf-8")


def save_result(result: FusionResult, out: str | Path, extra: dict[str, Any] | None = None) -> None:
    """fused.png, search.png (drawn against the result's own threshold) and report.json as one
    result set: `out` is replaced whole (outputs.write_result_set), never a mix of two runs.
    extra: more top-level report fields."""
    eaa = result.settings.get("eaa", {})
    radius = (eaa["alpha_hi"] - eaa["alpha_lo"]) / 2 if "alpha_hi" in eaa and "alpha_lo" in eaa else None
    figure = search_figure(result.trajectory, result.thumbs, result.threshold, result.labels, radius)
    write_result_set(Path(out), {"fused.png": png_bytes(result.image), "search.png": png_bytes(figure),
                                 "report.json": report_json(result.report(extra))})


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")

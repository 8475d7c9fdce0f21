"""search.png: the score plot (matplotlib) above the candidates' contact sheet."""

import numpy as np

from PIL import Image

from vmdiff_jax.app.report import _searched_beta, save_result, score_plot, search_figure
from vmdiff_jax.engine.fusion_result import FusionResult


def _trajectory():
    t = []
    for k, searched in ((1, 0), (2, 1)):
        for a in (0.45, 0.5, 0.55):
            t.append(dict(stage="alpha", round=k, alpha=a, beta1=1.0, beta2=1.0, S=2.0 + k * 0.1 - abs(a - 0.5)))
        for b in (1.5, 2.0):
            betas = (b, 1.0) if searched == 0 else (1.0, b)
            t.append(dict(stage="beta", round=k, alpha=0.5, beta1=betas[0], beta2=betas[1], S=2.3 + 0.05 * b))
    return t


def test_searched_beta():
    assert _searched_beta([dict(beta1=1.5, beta2=1.0), dict(beta1=2.0, beta2=1.0)], 1.0) == 0
    assert _searched_beta([dict(beta1=0.5, beta2=1.3), dict(beta1=0.5, beta2=2.1)], 1.0) == 1
    assert _searched_beta([dict(beta1=1.0, beta2=1.7)], 1.0) == 1  # one candidate: the one that left 1.0
    assert _searched_beta([dict(beta1=1.7, beta2=1.0)], 1.0) == 0


def test_search_figure_layout():
    t = _trajectory()
    plot = np.asarray(score_plot(t, 2.4))
    assert plot.shape == (440, 1000, 3) and plot.std() > 20
    red = (plot[..., 0] > 200) & (plot[..., 1] < 60) & (plot[..., 2] < 60)
    assert red.sum() > 500  # the threshold line (2.4 lies within the scores' range here)
    thumbs = [np.full((96, 96, 3), 40 * (i % 6), np.uint8) for i in range(len(t))]
    fig = np.asarray(search_figure(t, thumbs, 2.4))
    cols = (1000 - 6) // 106
    rows = -(-len(t) // cols)
    assert fig.shape == (440 + 24 + rows * 130, 1000, 3)
    best = int(np.argmax([c["S"] for c in t]))
    x, y = 6 + (best % cols) * 106, 440 + 24 + (best // cols) * 130
    frame = fig[y - 3, x:x + 100]
    assert ((frame[:, 1] > 140) & (frame[:, 0] < 40)).all()  # the chosen candidate framed in green


def _red_rows(image) -> set[int]:
    a = np.asarray(image)
    red = (a[..., 0] > 200) & (a[..., 1] < 60) & (a[..., 2] < 60)
    return set(np.nonzero(red.sum(1) > 200)[0].tolist())  # rows crossed by the dashed threshold line


def test_search_png_draws_the_results_own_threshold(tmp_path):
    """save_result draws the threshold the search ran with (settings["eaa"]["threshold"]), not 2.4."""
    t = _trajectory()
    thumbs = [np.full((96, 96, 3), 40 * (i % 6), np.uint8) for i in range(len(t))]
    best = max(t, key=lambda c: c["S"])
    result = FusionResult(image=np.zeros((32, 32, 3), np.uint8), alpha=best["alpha"], beta=(best["beta1"], best["beta2"]),
                          score=best["S"], subscores={k: 0.5 for k in ("S", "d1", "d2", "n1", "n2", "c1", "c2")}, calls=1,
                          rounds=1, accepted=False, trajectory=t, timings={}, labels=("a", "b"), seed=0,
                          schedule="paper", settings={"eaa": {"threshold": 2.15}}, thumbs=thumbs)
    assert result.threshold == 2.15 and result.report()["settings"]["eaa"]["threshold"] == 2.15
    save_result(result, tmp_path / "out")
    with Image.open(tmp_path / "out" / "search.png") as im:
        drawn = np.asarray(im.convert("RGB"))
    assert np.array_equal(drawn, np.asarray(search_figure(t, thumbs, 2.15)))
    ours, default = _red_rows(drawn), _red_rows(search_figure(t, thumbs, 2.4))
    assert ours and default and not ours & default  # the line sits elsewhere than 2.4's

"""The EAA search for K objects: mixing weights w on the simplex, betas, eps (`steps`).

For K = 2 the simplex is the segment w = (1 - alpha, alpha) and the search is `search.steps`
itself (the golden section of alpha is the exact line search there), so two objects fused
through here choose what `fuse` chooses. For K >= 3 (the paper schedule; the authors' code
has no K-object path):

  for k = 1..max_rounds:
    eps_b = BNoise(eps_k; base, ..., base)            SCat of the K token sets
    weights: a pattern search from the centre 1/K     K (K - 1) candidates a request, batched
    accept if S > threshold
    beta: raise the weakest object's beta (smallest d_i + n_i) over the grid points above
          base (the others keep base), golden section as for pairs, at the stage's best w
    accept if S > threshold; else resample eps

The pattern search stays in the box B = {w on the simplex : |w_i - 1/K| <= r}, r =
(alpha_hi - alpha_lo) / 2 (alpha in [0.4, 0.6] keeps both pair weights within 0.1 of 1/2).
Its K (K - 1) moves from w with step h move h of weight from one object to another (cut to
the box's edge; for K = 2 these are alpha +- h), all of them one batched request; the best
move is taken if it beats w, else h shrinks by 0.618; it stops when h < alpha_tol or after
alpha_max_iter steps; a point met twice is not evaluated again. (Exchanges rather than the K
moves toward the vertices: S has kinks, where d_i or n_i cross, and a search over the K vertex
directions stalls on them, one weight right and the other two off.) The moves are symmetric in the objects, so permuting the inputs permutes
every candidate the search evaluates (and what it picks), up to ties and float summation.
The baseline rows (ablation baseline1 / baseline2) score one candidate at w = 1/K; "alpha"
runs the weights stage only. A candidate is accepted at S > threshold x K / 2 (`threshold`).
"""

from __future__ import annotations

from typing import Any, Generator

import numpy as np

from vmdiff_jax.method import golden, search
from vmdiff_jax.method import score as score_lib
from vmdiff_jax.method.hsp import HSPConfig
from vmdiff_jax.method.requests import EAAResult, Record, Request

WEIGHT_DECIMALS = 12  # a weight vector's identity in the cache of evaluated points


def threshold(pair_threshold: float, objects: int) -> float:
    """The acceptance threshold of K objects: the pairs' threshold times K / 2 (S sums 2K terms of
    which a pair has 4: the same level per object)."""
    return pair_threshold * objects / 2.0


def radius(cfg: search.EAAConfig) -> float:
    """Half-width r of the weights' box around 1/K: (alpha_hi - alpha_lo) / 2."""
    return (cfg.alpha_hi - cfg.alpha_lo) / 2.0


def moves(w: np.ndarray, h: float, r: float) -> np.ndarray:
    """The K (K - 1) exchange moves from w (K,) with step h: weight i up by h, weight j down by h,
    for every ordered pair i != j (i major), each cut to the box |w_i - 1/K| <= r; moves of
    (almost) zero length are dropped. -> (m, K), m <= K (K - 1)."""
    k = w.shape[0]
    lo, hi = 1.0 / k - r, 1.0 / k + r
    out = []
    for i in range(k):
        for j in range(k):
            if i != j:
                t = min(h, hi - w[i], w[j] - lo)  # how far the exchange can go inside the box
                if t > 1e-12:
                    m = w.copy()
                    m[i] += t
                    m[j] -= t
                    out.append(m)
    return np.array(out).reshape(-1, k)


def pattern_search(k: int, r: float, tol: float, max_iter: int) -> Generator[np.ndarray, np.ndarray, None]:
    """The weights strategy (module doc): yields candidate rows (m, K), is sent their scores (m,).
    The first request is the centre 1/K and its K (K - 1) moves at h = r; then one request a step."""
    w = np.full(k, 1.0 / k)
    if max_iter < 1 or r < tol:
        yield w[None]
        return
    h, s_w, steps = r, None, 0
    seen: dict[tuple, float] = {}
    while steps < max_iter and h >= tol:
        cand = moves(w, h, r)
        points = ([w] if s_w is None else []) + list(cand)
        fresh = list({_key(p): p for p in points if _key(p) not in seen}.values())
        if fresh:
            scores = yield np.array(fresh)
            seen.update(zip((_key(p) for p in fresh), (float(x) for x in np.asarray(scores).reshape(-1))))
        steps += 1
        if s_w is None:
            s_w = seen[_key(w)]
        s = [seen[_key(p)] for p in cand]
        j = int(np.argmax(s)) if s else -1  # the first maximum
        if j >= 0 and s[j] > s_w:
            w, s_w = cand[j], s[j]
        else:
            h *= golden.INV_PHI


def steps(cfg: search.EAAConfig = search.EAAConfig(), schedule: str = "paper", costs: HSPConfig = HSPConfig(),
          objects: int = 2) -> Generator[Request, Any, EAAResult]:
    """The EAA search of K = `objects` inputs as a generator of requests (requests.py); its return
    value is the EAAResult (weights (K,), beta (K,), flat sub-scores). K = 2: `search.steps`."""
    if objects == 2:
        return (yield from search.steps(cfg, schedule, costs))
    if objects < 2:
        raise ValueError(f"need at least two objects, got {objects}")
    if schedule != "paper":
        raise ValueError(f"the {schedule!r} schedule follows the authors' two-object code; {objects} objects "
                         f"run the 'paper' schedule")
    rec = Record(threshold(cfg.threshold, objects), costs, objects)
    if cfg.ablation in ("baseline1", "baseline2"):
        yield from search.fixed(rec, cfg)
        return rec.result()
    base = np.full(objects, cfg.base_beta)
    beta_points = golden.grid_strategy(cfg.beta_tol_index(), cfg.beta_max_iter, 1)
    for k in range(1, cfg.max_rounds + 1):
        (eps_b,) = yield from rec.bnoise(k, base[None])
        rec.stage_best = None
        yield from search.run_strategy(
            pattern_search(objects, radius(cfg), cfg.alpha_tol, cfg.alpha_max_iter),
            lambda ws: rec.mdenoise([eps_b] * len(ws), ws, np.repeat(base[None], len(ws), 0), "weights", k))
        star = rec.stage_best
        if rec.accepted():
            break
        grid = cfg.raise_grid() if cfg.ablation == "full" else ()
        if grid:
            weakest = int(score_lib.weakest_object(rec.vector(star, "d"), rec.vector(star, "n")))
            yield from search.beta_stage(rec, k, rec.vector(star, "w"), weakest, cfg.base_beta,
                                         golden.on_grid(grid, beta_points))
            if rec.accepted():
                break
    return rec.result()


def _key(w: np.ndarray) -> tuple:
    return tuple(np.round(np.asarray(w, np.float64), WEIGHT_DECIMALS))

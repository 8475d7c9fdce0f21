"""Scalar maximisers of a batched objective, written as steppable generators.

Each strategy is a generator that yields an array of candidates (m,) and is sent back their
scores (m,); a driver decides how the scores are computed (one host call, a model batch,
or a request packed with other pairs' requests by `scheduler.run`). `maximise` drives one
with a plain objective and keeps the best point ever evaluated.

Strategies:
- `golden`: golden section reusing the kept interior point (2 candidates, then 1 per step).
- `nsection`: n equally spaced points per step (batch >= 2), nothing recomputed.
- `golden_pairs`: the authors' loop: both interior points generated anew every iteration,
  optionally rounded (their code rounds to 5 decimals), ties keep the upper bracket.
- `on_grid`: any continuous strategy over grid indices, its points snapped to the grid; a
  grid point is never evaluated twice (a snapped point already evaluated is free).
- `authors_grid_walk`: the authors' beta walk, step for step (float32 arange candidates).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Generator, Sequence

import numpy as np

from vmdiff_jax.nn import checks

INV_PHI = (math.sqrt(5.0) - 1.0) / 2.0  # 0.618..., the golden-section shrink factor
PHI = (1.0 + 5.0**0.5) / 2.0  # the authors' constant: their points are low + (high - low) / PHI

Points = Generator[np.ndarray, np.ndarray, None]  # yields candidates (m,), is sent scores (m,)
Objective = Callable[[np.ndarray], Any]  # candidates (m,) -> scores (m,), maximised


def golden(lo: float, hi: float, tol: float, max_iter: int, snap: Callable[[float], float] | None = None) -> Points:
    """Golden section with reuse on [lo, hi] until the bracket is <= tol or max_iter steps:
    on [0.4, 0.6] with tol 0.002, 11 candidates in 10 steps (2, then 1 per step).

    snap (grids): the bracket stays continuous but the two interior points are evaluated
    at snap(x), kept strictly ordered (a point snapping onto the other moves one unit away).
    """
    a, b = float(lo), float(hi)
    if b - a <= tol or max_iter < 1:
        yield np.array([(a + b) / 2])
        return
    x1, x2 = b - INV_PHI * (b - a), a + INV_PHI * (b - a)
    p1, p2 = x1, x2
    if snap is not None:
        p1, p2 = snap(x1), snap(x2)
        p2 = max(p2, p1 + 1)
    f1, f2 = (yield np.array([p1, p2]))
    steps = 1
    while True:
        left = f1 >= f2  # the maximum lies in [a, x2]: x1 becomes the upper interior point
        if left:
            b, x2, p2, f2 = x2, x1, p1, f1
            x1 = p1 = b - INV_PHI * (b - a)
            if snap is not None:
                p1 = min(snap(x1), p2 - 1)
        else:
            a, x1, p1, f1 = x1, x2, p2, f2
            x2 = p2 = a + INV_PHI * (b - a)
            if snap is not None:
                p2 = max(snap(x2), p1 + 1)
        if b - a <= tol or steps >= max_iter:
            return
        (fn,) = yield np.array([p1 if left else p2])
        steps += 1
        if left:
            f1 = fn
        else:
            f2 = fn


def nsection(lo: float, hi: float, tol: float, max_iter: int, n: int, integer: bool = False) -> Points:
    """n equally spaced interior points per step (points already evaluated are not asked
    again); the new bracket is the pair of evaluated neighbours of the best point.
    integer (grids): the n unevaluated integers nearest to the n equally spaced points."""
    a, b = float(lo), float(hi)
    seen: dict[float, float] = {}
    steps = 0
    while b - a > tol and steps < max_iter:
        targets = a + (b - a) * np.arange(1, n + 1) / (n + 1)
        fresh: list[float] = []
        for t in targets:
            if integer:
                free = [float(i) for i in range(math.ceil(a), math.floor(b) + 1) if float(i) not in seen and float(i) not in fresh]
                if free:
                    fresh.append(min(free, key=lambda i: (abs(i - t), i)))
            elif not any(math.isclose(t, s, rel_tol=0, abs_tol=1e-12 * (b - a)) for s in seen):
                fresh.append(float(t))
        if not fresh:
            return
        fresh.sort()
        scores = yield np.array(fresh)
        steps += 1
        seen.update(zip(fresh, (float(s) for s in scores)))
        pts = sorted(x for x in seen if a <= x <= b)
        k = max(range(len(pts)), key=lambda i: (seen[pts[i]], -i))  # first maximum
        a, b = (pts[k - 1] if k > 0 else a), (pts[k + 1] if k + 1 < len(pts) else b)


def golden_pairs(lo: float, hi: float, tol: float, max_iter: int, decimals: int | None = None) -> Points:
    """The authors' golden section: per iteration both points, upper first,
    [round(low + w / PHI), round(high - w / PHI)], generated anew (no reuse);
    S(upper) >= S(lower) moves low to the lower point (a tie keeps the upper bracket), else
    high to the upper point. 10 iterations, 20 candidates on [0.4, 0.6] with tol 0.002."""
    low, high = float(lo), float(hi)
    it = 0
    while (high - low) > tol and it < max_iter:
        it += 1
        upper, lower = low + (high - low) / PHI, high - (high - low) / PHI
        if decimals is not None:
            upper, lower = round(upper, decimals), round(lower, decimals)
        s_upper, s_lower = (yield np.array([upper, lower]))
        if s_upper >= s_lower:
            low = lower
        else:
            high = upper


def _snap(x: float, last: int) -> int:
    return min(max(int(math.floor(x + 0.5)), 0), last)


def on_grid(grid: Sequence[float], strategy: Callable[[float, float], Points]) -> Points:
    """`strategy(0, len(grid) - 1)` run over grid indices with its points snapped to the
    nearest index; yields grid values. A point whose index was evaluated before gets its
    cached score (no evaluation); a grid of one or two points is evaluated whole."""
    grid = np.asarray(grid, dtype=np.float64).reshape(-1)
    if grid.size == 0:
        raise ValueError("empty grid")
    last = grid.size - 1
    if last <= 1:
        yield grid.copy()
        return
    inner = strategy(0.0, float(last))
    cache: dict[int, float] = {}
    try:
        xs = next(inner)
        while True:
            idx = [_snap(float(x), last) for x in xs]
            new = list(dict.fromkeys(i for i in idx if i not in cache))
            if new:
                scores = yield grid[new]
                cache.update(zip(new, (float(s) for s in np.asarray(scores).reshape(-1))))
            xs = inner.send(np.array([cache[i] for i in idx]))
    except StopIteration:
        return


def float32_arange(start: float, end: float, step: float) -> list[float]:
    """torch.arange(start, end, step).tolist() for Python floats (float32 values computed as
    float32(start + i * step) in double, ceil((end - start) / step) of them)."""
    n = max(0, math.ceil((end - start) / step))
    return [float(np.float32(start + i * step)) for i in range(n)]


def authors_grid_walk(lo: float, hi: float, step: float, tol: float, max_iter: int) -> Points:
    """The authors' beta walk (`run_single.py` `search_beta`), step for step.

    Per iteration: candidates float32_arange(max(low, lo), min(high + step / 2, hi), step)
    minus those already evaluated (exact float equality: after the bracket moves, float32
    values can shift and a grid point come back; `hi` itself is never a candidate); stop if
    none is left; mid1 = the candidate nearest low + (high - low) / PHI, removed; mid2 = the
    remaining one nearest high - (high - low) / PHI (one candidate left: both slots take it);
    S(mid1) >= S(mid2) moves low to mid2, else high to mid1 (the bracket snaps to evaluated
    values). Yields [mid1, mid2]."""
    low, high = float(lo), float(hi)
    evaluated: set[float] = set()
    it = 0
    while (high - low) > tol and it < max_iter:
        it += 1
        values = sorted(v for v in float32_arange(max(low, lo), min(high + step / 2, hi), step) if v not in evaluated)
        if not values:
            return
        ideal1, ideal2 = low + (high - low) / PHI, high - (high - low) / PHI
        if len(values) == 1:
            mid1 = mid2 = values[0]
        else:
            mid1 = min(values, key=lambda v: abs(v - ideal1))
            values.remove(mid1)
            mid2 = min(values, key=lambda v: abs(v - ideal2))
        evaluated.update((mid1, mid2))
        s1, s2 = (yield np.array([mid1, mid2]))
        if s1 >= s2:
            low = mid2
        else:
            high = mid1


# ----------------------------------------------------------------------------------------
# host drivers


@dataclasses.dataclass(frozen=True)
class SearchResult:
    """Best point ever evaluated (first maximum) and its score; `evaluations` counts
    candidates, `rounds` objective calls; trajectory: (x, score, round) in evaluation order."""

    x: float
    score: float
    evaluations: int
    rounds: int
    trajectory: list


def maximise(objective: Objective, points: Points) -> SearchResult:
    """Drive a strategy with `objective` (candidates (m,) -> scores (m,), one call per step)."""
    trajectory: list[tuple[float, float, int]] = []
    best_x, best_s, rounds = None, -math.inf, 0
    try:
        xs = next(points)
        while True:
            xs = np.asarray(xs, dtype=np.float64).reshape(-1)
            scores = np.asarray(objective(xs), dtype=np.float64).reshape(-1)
            if scores.shape != xs.shape:
                raise ValueError(f"objective returned {scores.shape[0]} scores for {xs.shape[0]} candidates")
            rounds += 1
            for x, s in zip(xs, scores):
                trajectory.append((float(x), float(s), rounds))
                if best_x is None or s > best_s:
                    best_x, best_s = float(x), float(s)
            xs = points.send(scores)
    except StopIteration:
        pass
    return SearchResult(best_x, best_s, len(trajectory), rounds, trajectory)


def interval_strategy(tol: float, max_iter: int, batch: int = 1, reuse: bool = True,
                      decimals: int | None = None, snap: Callable[[float], float] | None = None
                      ) -> Callable[[float, float], Points]:
    """The strategy for (lo, hi): golden (batch 1, reuse; `snap` for grids), the authors'
    pairs (reuse=False) or n-section (batch >= 2)."""
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    if not reuse and batch != 1:
        raise ValueError("reuse=False is the authors' 2-point loop; use batch=1 with it")
    if batch >= 2:
        return lambda lo, hi: nsection(lo, hi, tol, max_iter, batch, integer=snap is not None)
    if not reuse:
        return lambda lo, hi: golden_pairs(lo, hi, tol, max_iter, decimals)
    return lambda lo, hi: golden(lo, hi, tol, max_iter, snap)


def golden_section(objective: Objective, lo: float, hi: float, tol: float, max_iter: int, batch: int = 1,
                   reuse: bool = True, decimals: int | None = None) -> SearchResult:
    """Maximise a unimodal objective on [lo, hi] (see `interval_strategy`); best ever evaluated."""
    checks.function("objective", objective)
    lo, hi = checks.number("lo", lo), checks.number("hi", hi)
    if not hi > lo:
        raise ValueError(f"need lo < hi, got [{lo}, {hi}]")
    checks.number("tol", tol, above=0.0)
    checks.integer("max_iter", max_iter, 1)
    checks.integer("batch", batch, 1)
    if decimals is not None:
        checks.integer("decimals", decimals, 0)
    return maximise(objective, interval_strategy(tol, max_iter, batch, reuse, decimals)(lo, hi))


def golden_section_grid(objective: Objective, grid: Sequence[float], tol_index: float, max_iter: int,
                        batch: int = 1) -> SearchResult:
    """Maximise over grid values: golden section (batch 1) or n-section over indices, snapped
    (`on_grid`); tol_index in index units. No grid point is evaluated twice."""
    return maximise(objective, on_grid(grid, grid_strategy(tol_index, max_iter, batch)))


def grid_strategy(tol_index: float, max_iter: int, batch: int = 1) -> Callable[[float, float], Points]:
    """The paper's grid search over indices: golden section with its points snapped to
    integers (batch 1) or n-section (batch >= 2); wrap it with `on_grid`."""
    return interval_strategy(tol_index, max_iter, batch, snap=lambda x: float(math.floor(x + 0.5)))

"""Efficient Adaptive Adjustment (EAA): the zero-order search over theta = {alpha, beta1, beta2, eps}.

Two layers:
- scalar maximisers of a batched objective (candidates (m,) -> scores (m,) in ONE call):
  `golden_section` on an interval and `golden_section_grid` on a discrete grid. With
  batch=1 they are golden-section searches that reuse the kept interior point; with
  batch=n >= 2 each round evaluates n equally spaced points (n-section); reuse=False is
  the authors' path (both interior points generated anew every iteration).
- `eaa(problem, cfg, schedule)`: the hierarchical search driving a `FusionProblem`
  (BNoise = `blend`, MDeNoise + scoring = `mix`), in the paper's schedule (K rounds of
  alpha search, then the weaker object's beta, then eps resampling) or the authors' one.
  The cost in image-model-calls is counted here from the cost model: a `blend` of n beta
  pairs costs n * bnoise_calls, a `mix` of n alphas n * mdenoise_calls.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, Callable, Protocol, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from vmdiff_jax import score as score_lib

INV_PHI = (math.sqrt(5.0) - 1.0) / 2.0  # 0.618..., the golden-section shrink factor

Objective = Callable[[np.ndarray], Any]  # candidates (m,) -> scores (m,), maximised


@dataclasses.dataclass(frozen=True)
class SearchResult:
    """Best point ever evaluated and its score; `evaluations` counts candidates, `rounds` objective calls.

    trajectory: one (x, score, round) per evaluated candidate, in evaluation order.
    index: the grid index of x (grid searches only).
    """

    x: float
    score: float
    evaluations: int
    rounds: int
    trajectory: list
    index: int | None = None


class _Counter:
    """Calls the objective on a batch, records every candidate, tracks the best ever (first maximum wins)."""

    def __init__(self, objective: Objective):
        self.objective = objective
        self.rounds = 0
        self.trajectory: list[tuple[float, float, int]] = []
        self.best_x: float | None = None
        self.best_score = -math.inf

    def __call__(self, xs) -> np.ndarray:
        xs = np.asarray(xs, dtype=np.float64).reshape(-1)
        scores = np.asarray(self.objective(xs), dtype=np.float64).reshape(-1)
        if scores.shape != xs.shape:
            raise ValueError(f"objective returned {scores.shape[0]} scores for {xs.shape[0]} candidates")
        self.rounds += 1
        for x, s in zip(xs, scores):
            self.trajectory.append((float(x), float(s), self.rounds))
            if s > self.best_score or self.best_x is None:
                self.best_x, self.best_score = float(x), float(s)
        return scores

    def result(self, index: int | None = None) -> SearchResult:
        return SearchResult(self.best_x, self.best_score, len(self.trajectory), self.rounds, self.trajectory, index)


def golden_section(
    objective: Objective,
    lo: float,
    hi: float,
    tol: float,
    max_iter: int,
    batch: int = 1,
    reuse: bool = True,
) -> SearchResult:
    """Maximise a unimodal objective on [lo, hi] until the bracket is <= tol wide or max_iter rounds.

    batch=1, reuse=True: golden section reusing the kept interior point (2 candidates in
      the first call, then 1 per call): on [0.4, 0.6] with tol 0.002, 11 evaluations.
    batch=1, reuse=False: the authors' loop, both interior points generated anew every
      iteration (one call of 2 per iteration): 10 iterations, 20 evaluations.
    batch=n >= 2: n-section, n equally spaced points per call (points already evaluated are
      not recomputed); the new bracket is the pair of evaluated neighbours of the best point.
    Returns the best point ever evaluated (not the bracket centre).
    """
    if not hi > lo:
        raise ValueError(f"need lo < hi, got [{lo}, {hi}]")
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    if not reuse and batch != 1:
        raise ValueError("reuse=False is the authors' 2-point loop; use batch=1 with it")
    f = _Counter(objective)
    a, b = float(lo), float(hi)
    if b - a <= tol or max_iter < 1:
        f([(a + b) / 2])
        return f.result()
    if batch >= 2:
        _nsection(f, a, b, tol, max_iter, batch)
    elif not reuse:
        while b - a > tol and f.rounds < max_iter:
            x1, x2 = b - INV_PHI * (b - a), a + INV_PHI * (b - a)
            f1, f2 = f([x1, x2])
            if f1 >= f2:
                b = x2
            else:
                a = x1
    else:
        x1, x2 = b - INV_PHI * (b - a), a + INV_PHI * (b - a)
        f1, f2 = f([x1, x2])
        while True:
            if f1 >= f2:  # the maximum lies in [a, x2]; x1 becomes the upper interior point
                b, x2, f2 = x2, x1, f1
                x1 = b - INV_PHI * (b - a)
                new = "x1"
            else:  # the maximum lies in [x1, b]
                a, x1, f1 = x1, x2, f2
                x2 = a + INV_PHI * (b - a)
                new = "x2"
            if b - a <= tol or f.rounds >= max_iter:
                break
            if new == "x1":
                (f1,) = f([x1])
            else:
                (f2,) = f([x2])
    return f.result()


def golden_evaluations(lo: float, hi: float, tol: float) -> int:
    """Evaluations golden section with reuse needs to shrink [lo, hi] to <= tol: k + 1 for k shrink steps."""
    k = max(1, math.ceil(math.log(tol / (hi - lo)) / math.log(INV_PHI) - 1e-12))
    return k + 1


def golden_section_jax(objective, lo: float, hi: float, tol: float):
    """Golden section with reuse as ONE pure, jittable, vmappable function (lax.scan).

    objective: jnp (m,) candidates -> (m,) scores, traceable (e.g. a jitted model + score).
    The number of evaluations is static (`golden_evaluations`), the same points as
    `golden_section(..., batch=1)`; vmap it over pairs to search many at once on a TPU slice.
    Returns (best x, best score, xs (n,), scores (n,)) in evaluation order.
    """
    n = golden_evaluations(lo, hi, tol)
    r = INV_PHI
    a, b = jnp.float32(lo), jnp.float32(hi)
    x1, x2 = b - r * (b - a), a + r * (b - a)
    f1, f2 = objective(jnp.stack([x1, x2]))

    def step(carry, _):
        a, b, x1, x2, f1, f2 = carry
        left = f1 >= f2  # keep [a, x2]: x1 becomes the upper point, a new lower point is evaluated
        na, nb = jnp.where(left, a, x1), jnp.where(left, x2, b)
        nx1 = jnp.where(left, nb - r * (nb - na), x2)
        nx2 = jnp.where(left, x1, na + r * (nb - na))
        new = jnp.where(left, nx1, nx2)
        fn = objective(new[None])[0]
        nf1, nf2 = jnp.where(left, fn, f2), jnp.where(left, f1, fn)
        return (na, nb, nx1, nx2, nf1, nf2), (new, fn)

    _, (xs, fs) = jax.lax.scan(step, (a, b, x1, x2, f1, f2), None, length=n - 2)
    xs = jnp.concatenate([jnp.stack([x1, x2]), xs])
    fs = jnp.concatenate([jnp.stack([f1, f2]), fs])
    i = jnp.argmax(fs)
    return xs[i], fs[i], xs, fs


def _nsection(f: _Counter, a: float, b: float, tol: float, max_iter: int, n: int) -> None:
    seen: dict[float, float] = {}
    while b - a > tol and f.rounds < max_iter:
        xs = a + (b - a) * np.arange(1, n + 1) / (n + 1)
        fresh = [x for x in xs if not any(math.isclose(x, s, rel_tol=0, abs_tol=1e-12 * (b - a)) for s in seen)]
        if not fresh:
            break
        for x, s in zip(fresh, f(fresh)):
            seen[float(x)] = float(s)
        a, b = _neighbours_of_best(seen, a, b)


def _neighbours_of_best(seen: dict, a: float, b: float) -> tuple[float, float]:
    """The evaluated neighbours (or the bracket ends) of the best evaluated point inside [a, b]."""
    pts = sorted(x for x in seen if a <= x <= b)
    k = max(range(len(pts)), key=lambda i: (seen[pts[i]], -i))  # first maximum
    return (pts[k - 1] if k > 0 else a), (pts[k + 1] if k + 1 < len(pts) else b)


class _GridCounter:
    """Grid objective by index with a cache: no grid point is ever evaluated twice."""

    def __init__(self, objective: Objective, grid: np.ndarray):
        self.grid = grid
        self.f = _Counter(objective)
        self.cache: dict[int, float] = {}
        self.best: int | None = None  # first maximum in evaluation order

    def eval(self, idxs: Sequence[int]) -> None:
        new = [i for i in dict.fromkeys(int(i) for i in idxs) if i not in self.cache]
        if new:
            for i, s in zip(new, self.f(self.grid[new])):
                self.cache[i] = float(s)
                if self.best is None or s > self.cache[self.best]:
                    self.best = i

    def nearest_unvisited(self, x: float, lo: int, hi: int, exclude=()) -> int | None:
        free = [i for i in range(lo, hi + 1) if i not in self.cache and i not in exclude]
        return min(free, key=lambda i: (abs(i - x), i)) if free else None

    def result(self) -> SearchResult:
        return self.f.result(index=self.best)


def _snap(x: float) -> int:
    return int(math.floor(x + 0.5))


def golden_section_grid(
    objective: Objective,
    grid: Sequence[float],
    tol_index: float,
    max_iter: int,
    batch: int = 1,
    reuse: bool = True,
) -> SearchResult:
    """Maximise a unimodal objective over grid values, walking indices; no grid point is evaluated twice.

    The bracket is kept in continuous index units; candidates are the interior points
    snapped to the nearest index. Stops when the bracket is <= tol_index wide, after
    max_iter iterations, or when no new grid point is left to try.
    batch=1, reuse=True: golden section reusing the kept point (an interior point snapping
      onto the other is moved one index away; a snapped point already evaluated is free).
    batch=1, reuse=False: the authors' walk, 2 new candidates per iteration in one call;
      a snapped point already evaluated is replaced by the nearest unevaluated grid point,
      so every iteration costs exactly 2 (16 points, tol 2.5 indices: 4 iterations, 8).
    batch=n >= 2: n-section, n unevaluated points nearest to n equally spaced positions.
    """
    grid = np.asarray(grid, dtype=np.float64).reshape(-1)
    if grid.size == 0:
        raise ValueError("empty grid")
    if not reuse and batch != 1:
        raise ValueError("reuse=False is the authors' 2-point walk; use batch=1 with it")
    g = _GridCounter(objective, grid)
    last = grid.size - 1
    a, b = 0.0, float(last)
    if last <= 1 or b - a <= tol_index or max_iter < 1:
        g.eval(range(grid.size) if last <= 1 else [_snap((a + b) / 2)])
        return g.result()
    if batch >= 2:
        iters = 0
        while b - a > tol_index and iters < max_iter:
            lo_i, hi_i = math.ceil(a), math.floor(b)
            chosen: list[int] = []
            for t in a + (b - a) * np.arange(1, batch + 1) / (batch + 1):
                i = g.nearest_unvisited(float(t), lo_i, hi_i, exclude=chosen)
                if i is not None:
                    chosen.append(i)
            if not chosen:
                break
            g.eval(sorted(chosen))
            iters += 1
            a, b = _neighbours_of_best({float(i): s for i, s in g.cache.items()}, a, b)
    elif not reuse:
        iters = 0
        while b - a > tol_index and iters < max_iter:
            x1, x2 = b - INV_PHI * (b - a), a + INV_PHI * (b - a)
            i1 = g.nearest_unvisited(x1, 0, last)
            i2 = g.nearest_unvisited(x2, 0, last, exclude=(i1,))
            if i1 is None or i2 is None:
                g.eval([i for i in (i1, i2) if i is not None])
                break
            g.eval([i1, i2])
            iters += 1
            lo_i, hi_i = min(i1, i2), max(i1, i2)
            if g.cache[lo_i] >= g.cache[hi_i]:
                b = x2
            else:
                a = x1
    else:
        x1, x2 = b - INV_PHI * (b - a), a + INV_PHI * (b - a)
        i1, i2 = _snap(x1), _snap(x2)
        if i1 == i2:
            i2 = i1 + 1
        g.eval([i1, i2])
        iters = 1
        while True:
            if g.cache[i1] >= g.cache[i2]:  # maximum in [a, x2] (or at an evaluated point)
                b, x2, i2 = x2, x1, i1
                x1 = b - INV_PHI * (b - a)
                i1 = min(_snap(x1), i2 - 1)
                new = i1
            else:
                a, x1, i1 = x1, x2, i2
                x2 = a + INV_PHI * (b - a)
                i2 = max(_snap(x2), i1 + 1)
                new = i2
            if b - a <= tol_index or iters >= max_iter or not 0 <= new <= last:
                break
            g.eval([new])
            iters += 1
    return g.result()


# ----------------------------------------------------------------------------------------
# EAA


@dataclasses.dataclass
class Evaluation:
    """Scores of n candidates from one `mix` call: (n,) arrays of sub-scores and n opaque payloads."""

    d1: Any
    d2: Any
    c1: Any
    c2: Any
    n1: Any
    n2: Any
    S: Any
    payload: list

    @classmethod
    def from_subscores(cls, sub: score_lib.Subscores, payload: Sequence[Any] | None = None) -> "Evaluation":
        arrays = [np.asarray(x, dtype=np.float64).reshape(-1) for x in sub]
        n = arrays[0].shape[0]
        return cls(*arrays, payload=list(payload) if payload is not None else [None] * n)

    def __len__(self) -> int:
        return int(np.asarray(self.S).reshape(-1).shape[0])


class FusionProblem(Protocol):
    """What EAA drives (the pipeline implements it; tests use analytic fakes)."""

    def noise(self, round_k: int) -> Any:
        """Sample eps for outer round k (1-based). No model calls."""

    def blend(self, eps: Any, betas: np.ndarray) -> Any:
        """BNoise of eps for n beta pairs (n, 2) in one call -> a batch of n eps_b."""

    def mix(self, eps_b: Any, alphas: np.ndarray) -> Evaluation:
        """MDeNoise + scoring of n alphas (n,) in one call; eps_b is one (broadcast) or n aligned."""


def _uniform_grid(lo: float, hi: float, step: float) -> tuple[float, ...]:
    n = int(round((hi - lo) / step)) + 1
    return tuple(round(lo + step * i, 10) for i in range(n))


BETA_GRID = _uniform_grid(0.5, 3.5, 0.2)  # 0.5, 0.7, ..., 3.5 (16 points)


@dataclasses.dataclass(frozen=True)
class EAAConfig:
    """Search hyperparameters. Tolerances are in parameter units; calls are image-model-calls per candidate."""

    alpha_lo: float = 0.4
    alpha_hi: float = 0.6
    alpha_tol: float = 0.002
    alpha_max_iter: int = 15
    threshold: float = 2.4
    beta_grid: tuple[float, ...] = BETA_GRID
    beta_tol: float = 0.5
    beta_max_iter: int = 15
    max_rounds: int = 3  # K
    bnoise_calls: int = 22
    mdenoise_calls: int = 20
    batch: int = 1  # candidates per search round (paper schedule); >1 = n-section
    base_beta: float = 1.0  # b1 = b2 during the alpha stage; the stronger object's beta (paper)
    authors_stronger_beta: float = 0.5  # the stronger object's beta in the authors' beta stage

    @classmethod
    def tiny(cls) -> "EAAConfig":
        """A cheap search for demos: 4 alphas, at most 3 betas, one round."""
        return cls(alpha_tol=0.05, beta_tol=1.5, max_rounds=1)

    def beta_tol_index(self) -> float:
        grid = np.asarray(self.beta_grid, dtype=np.float64)
        if grid.size < 2:
            return 0.0
        step = np.diff(grid)
        if not np.allclose(step, step[0]):
            raise ValueError("beta_grid must be uniformly spaced (beta_tol is converted to index units)")
        return self.beta_tol / float(step[0])


@dataclasses.dataclass(frozen=True)
class EAAResult:
    """Best candidate ever seen. calls: image-model-calls; rounds: sequential blend/mix calls.

    trajectory: one dict per evaluated candidate {stage, round, alpha, beta1, beta2, S, d1, d2,
    n1, n2, c1, c2, calls_so_far} (calls_so_far counted after the call that produced it).
    """

    alpha: float
    beta: np.ndarray
    score: float
    subscores: dict
    payload: Any
    calls: int
    rounds: int
    wall_time: float
    trajectory: list
    accepted: bool


_SUBSCORES = ("S", "d1", "d2", "n1", "n2", "c1", "c2")


class _Run:
    """Counts calls from the cost model, records every candidate and keeps the best ever."""

    def __init__(self, problem: FusionProblem, cfg: EAAConfig):
        self.problem, self.cfg = problem, cfg
        self.calls = 0
        self.rounds = 0
        self.trajectory: list[dict] = []
        self.best: dict | None = None
        self.best_payload = None
        self.stage_best: dict | None = None

    def blend(self, eps, betas: np.ndarray):
        betas = np.asarray(betas, dtype=np.float64).reshape(-1, 2)
        out = self.problem.blend(eps, betas)
        self.calls += len(betas) * self.cfg.bnoise_calls
        self.rounds += 1
        return out

    def mix(self, eps_b, alphas, betas: np.ndarray, stage: str, k: int) -> np.ndarray:
        alphas = np.asarray(alphas, dtype=np.float64).reshape(-1)
        ev = self.problem.mix(eps_b, alphas)
        if len(ev) != len(alphas):
            raise ValueError(f"mix returned {len(ev)} candidates for {len(alphas)} alphas")
        self.calls += len(alphas) * self.cfg.mdenoise_calls
        self.rounds += 1
        arrays = {name: np.asarray(getattr(ev, name), dtype=np.float64).reshape(-1) for name in _SUBSCORES}
        for j, alpha in enumerate(alphas):
            entry = dict(stage=stage, round=k, alpha=float(alpha), beta1=float(betas[j, 0]), beta2=float(betas[j, 1]))
            entry.update({name: float(arrays[name][j]) for name in _SUBSCORES})
            entry["calls_so_far"] = self.calls
            self.trajectory.append(entry)
            if self.best is None or entry["S"] > self.best["S"]:
                self.best, self.best_payload = entry, ev.payload[j]
            if self.stage_best is None or entry["S"] > self.stage_best["S"]:
                self.stage_best = entry
        return arrays["S"]

    def accepted(self) -> bool:
        return self.best is not None and self.best["S"] > self.cfg.threshold

    def alpha_stage(self, eps_b, k: int, reuse: bool, batch: int) -> dict:
        cfg = self.cfg
        base = np.array([cfg.base_beta, cfg.base_beta])
        self.stage_best = None
        golden_section(
            lambda xs: self.mix(eps_b, xs, np.tile(base, (len(xs), 1)), "alpha", k),
            cfg.alpha_lo, cfg.alpha_hi, cfg.alpha_tol, cfg.alpha_max_iter, batch=batch, reuse=reuse,
        )
        return self.stage_best

    def beta_stage(self, eps, alpha: float, weaker: int, other_beta: float, k: int, reuse: bool, batch: int):
        cfg = self.cfg

        def objective(values):
            betas = np.full((len(values), 2), other_beta, dtype=np.float64)
            betas[:, weaker] = values
            eps_b = self.blend(eps, betas)
            return self.mix(eps_b, np.full(len(values), alpha), betas, "beta", k)

        self.stage_best = None
        golden_section_grid(objective, cfg.beta_grid, cfg.beta_tol_index(), cfg.beta_max_iter, batch=batch, reuse=reuse)

    def result(self, t0: float) -> EAAResult:
        b = self.best
        return EAAResult(
            alpha=b["alpha"], beta=np.array([b["beta1"], b["beta2"]]), score=b["S"],
            subscores={name: b[name] for name in _SUBSCORES}, payload=self.best_payload,
            calls=self.calls, rounds=self.rounds, wall_time=time.perf_counter() - t0,
            trajectory=self.trajectory, accepted=self.accepted(),
        )


def eaa(problem: FusionProblem, cfg: EAAConfig = EAAConfig(), schedule: str = "paper") -> EAAResult:
    """Search alpha, then the weaker object's beta, then eps; return the best candidate ever seen.

    schedule="paper": for k = 1..K: eps = noise(k); eps_b = BNoise(eps; 1, 1); golden section
      of alpha (reusing the kept point; cfg.batch > 1: n-section); accept if S > threshold;
      else fix alpha*, search the beta of the weaker object (smaller d_i + n_i) on the grid
      (the stronger keeps base_beta), each candidate re-running BNoise and MDeNoise; accept if
      S > threshold; else resample eps.
    schedule="authors": one round; alpha by the non-reusing golden section (2 per iteration);
      if not accepted, the weaker object is the smaller d_i + 3.13 c_i, the stronger's beta is
      0.5 and the weaker's beta is walked on the grid, 2 new candidates per iteration.
    """
    if schedule not in ("paper", "authors"):
        raise ValueError(f"schedule must be 'paper' or 'authors', got {schedule!r}")
    t0 = time.perf_counter()
    run = _Run(problem, cfg)
    base = np.array([[cfg.base_beta, cfg.base_beta]])
    rounds = cfg.max_rounds if schedule == "paper" else 1
    reuse, batch = (True, cfg.batch) if schedule == "paper" else (False, 1)
    for k in range(1, rounds + 1):
        eps = problem.noise(k)
        eps_b = run.blend(eps, base)
        star = run.alpha_stage(eps_b, k, reuse, batch)
        if run.accepted():
            break
        d, n, c = (np.array([star[f"{p}1"], star[f"{p}2"]]) for p in "dnc")
        if schedule == "paper":
            weaker, other_beta = int(score_lib.weaker_object(d, n)), cfg.base_beta
        else:
            weaker, other_beta = int(score_lib.weaker_object_authors(d, c)), cfg.authors_stronger_beta
        run.beta_stage(eps, star["alpha"], weaker, other_beta, k, reuse, batch)
        if run.accepted():
            break
    return run.result(t0)

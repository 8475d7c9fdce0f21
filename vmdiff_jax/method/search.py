"""Efficient Adaptive Adjustment (EAA): the zero-order search over theta = {alpha, beta1, beta2, eps}.

The search is a generator (`steps`) that asks for model work and is sent the answers
(requests.py): `BNoiseRequest` (BNoise of these beta pairs, outer round k) -> n eps_b values;
`MDeNoiseRequest` (MDeNoise + score of these mixing weights (1 - alpha, alpha) from these
eps_b) -> `Evaluation`. It never sees a model, so a driver decides how requests run: `eaa(problem, cfg, schedule)`
answers one pair's requests through a `FusionProblem` (tested on analytic fakes with exact
call counts); `scheduler.run` packs the requests of many pairs into shared model calls.

Two schedules (REFERENCE.md, "Efficient Adaptive Adjustment"):
- "paper": for k = 1..K: eps = noise(k); eps_b = BNoise(eps; base, base); golden section of
  alpha reusing the kept point (cfg.batch > 1: n-section); accept if S > threshold; else fix
  alpha*, raise the beta of the weaker object (smaller d_i + n_i) over the grid points above
  base_beta (the stronger keeps base_beta), each candidate re-running BNoise and MDeNoise;
  accept if S > threshold; else resample eps.
- "authors": their `run_single.py` step for step: one round; alpha by their two-point golden
  section (points rounded to 5 decimals, upper point first, ties keep the upper bracket);
  if not accepted, the weaker object is the smaller d_i + 3.13 c_i, the stronger's beta is
  0.5 and the weaker's is walked by `golden.authors_grid_walk`.
Cost is counted in image-model-calls: n BNoise candidates cost n * costs.bnoise_calls, n
MDeNoise candidates n * costs.mdenoise_calls, where `costs` is the HSPConfig the stages run
(22 and 20 for the paper's 20 steps).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Generator, Protocol

import numpy as np

from vmdiff_jax.method import golden
from vmdiff_jax.method.hsp import HSPConfig
from vmdiff_jax.method import score as score_lib
from vmdiff_jax.method.golden import INV_PHI, SearchResult, golden_section, golden_section_grid  # noqa: F401  (re-exported)
from vmdiff_jax.method.requests import (BNoiseRequest, EAAResult, Evaluation, MDeNoiseRequest, NoiseRequest,  # noqa: F401
                                        Record, Request, pair_weights)

SCHEDULES = ("paper", "authors")
# the paper's Table 2 rows: random noise + MDeNoise at alpha 0.5; + BNoise; + alpha search; + beta search
ABLATIONS = ("baseline1", "baseline2", "alpha", "full")
AUTHORS_DECIMALS = 5  # the authors round both alpha points to 5 decimals


def uniform_grid(lo: float, hi: float, step: float) -> tuple[float, ...]:
    n = int(round((hi - lo) / step)) + 1
    return tuple(round(lo + step * i, 10) for i in range(n))


BETA_GRID = uniform_grid(0.5, 3.5, 0.2)  # 0.5, 0.7, ..., 3.5 (16 points)


@dataclasses.dataclass(frozen=True)
class EAAConfig:
    """Search hyperparameters. Tolerances are in parameter units. (What a candidate costs in model
    calls is the stages' business: `HSPConfig.bnoise_calls` / `mdenoise_calls`.)"""

    alpha_lo: float = 0.4
    alpha_hi: float = 0.6
    alpha_tol: float = 0.002
    alpha_max_iter: int = 15
    threshold: float = 2.4
    beta_grid: tuple[float, ...] = BETA_GRID  # uniform; the authors walk [grid[0], grid[-1]) by its step
    beta_tol: float = 0.5
    beta_max_iter: int = 15
    max_rounds: int = 3  # K
    batch: int = 1  # candidates per search step (paper schedule); >1 = n-section
    base_beta: float = 1.0  # b1 = b2 during the alpha stage; the stronger object's beta (paper)
    authors_stronger_beta: float = 0.5  # the stronger object's beta in the authors' beta stage
    ablation: str = "full"  # ABLATIONS: which of the paper's Table 2 rows runs

    def __post_init__(self):
        if self.ablation not in ABLATIONS:
            raise ValueError(f"ablation must be one of {ABLATIONS}, got {self.ablation!r}")

    @classmethod
    def tiny(cls) -> "EAAConfig":
        """A cheap search for demos: 4 alphas, at most 3 betas, one round."""
        return cls(alpha_tol=0.05, beta_tol=1.5, max_rounds=1)

    def beta_step(self) -> float:
        grid = np.asarray(self.beta_grid, dtype=np.float64)
        if grid.size < 2:
            return 0.0
        step = np.diff(grid)
        if not np.allclose(step, step[0]):
            raise ValueError("beta_grid must be uniformly spaced (beta_tol is converted to index units)")
        return float(step[0])

    def beta_tol_index(self) -> float:
        step = self.beta_step()
        return self.beta_tol / step if step else 0.0

    def raise_grid(self) -> tuple[float, ...]:
        """The paper's beta candidates: the grid points above base_beta (beta is only raised)."""
        return tuple(b for b in self.beta_grid if b > self.base_beta)


def run_strategy(points: golden.Points, evaluate) -> Generator[Request, Any, None]:
    """Run a strategy (candidates (m,) or (m, K)) whose candidates are scored by the sub-generator evaluate(xs)."""
    try:
        xs = next(points)
        while True:
            scores = yield from evaluate(np.asarray(xs, dtype=np.float64))
            xs = points.send(scores)
    except StopIteration:
        return


def _alpha_stage(rec: Record, base: float, eps_b, k: int, points: golden.Points) -> Generator[Request, Any, dict]:
    rec.stage_best = None
    yield from run_strategy(points, lambda xs: rec.mdenoise([eps_b] * len(xs), pair_weights(xs), np.full((len(xs), 2), base),
                                                         "alpha", k))
    return rec.stage_best


def beta_stage(rec: Record, k: int, weights: np.ndarray, weaker: int, other: float, points: golden.Points):
    """Raise object `weaker`'s beta over the strategy's values (the others at `other`), each candidate
    BNoise'd anew and mixed at the fixed weights (K,) (any K)."""
    def evaluate(values):
        betas = np.full((len(values), rec.objects), other, dtype=np.float64)
        betas[:, weaker] = values
        eps_b = yield from rec.bnoise(k, betas)
        return (yield from rec.mdenoise(eps_b, np.repeat(weights[None], len(values), 0), betas, "beta", k))

    rec.stage_best = None
    yield from run_strategy(points, evaluate)


def fixed(rec: Record, cfg: "EAAConfig"):
    """The baseline rows, any K: one candidate at the equal weights 1/K from eps (baseline1) or from
    BNoise(eps; base, ..., base) (baseline2)."""
    base = np.full((1, rec.objects), cfg.base_beta)
    if cfg.ablation == "baseline1":
        eps_b = yield from rec.noise(1)
    else:
        (eps_b,) = yield from rec.bnoise(1, base)
    yield from rec.mdenoise([eps_b], np.full((1, rec.objects), 1.0 / rec.objects), base, "fixed", 1)


def _paper(rec: Record, cfg: EAAConfig):
    base = cfg.base_beta
    alpha_points = golden.interval_strategy(cfg.alpha_tol, cfg.alpha_max_iter, cfg.batch)
    beta_points = golden.grid_strategy(cfg.beta_tol_index(), cfg.beta_max_iter, cfg.batch)
    for k in range(1, cfg.max_rounds + 1):
        (eps_b,) = yield from rec.bnoise(k, [[base, base]])
        star = yield from _alpha_stage(rec, base, eps_b, k, alpha_points(cfg.alpha_lo, cfg.alpha_hi))
        if rec.accepted():
            return
        grid = cfg.raise_grid() if cfg.ablation == "full" else ()
        if grid:
            weaker = int(score_lib.weaker_object(rec.vector(star, "d"), rec.vector(star, "n")))
            yield from beta_stage(rec, k, rec.vector(star, "w"), weaker, base, golden.on_grid(grid, beta_points))
            if rec.accepted():
                return


def _authors(rec: Record, cfg: EAAConfig):
    base = cfg.base_beta
    (eps_b,) = yield from rec.bnoise(1, [[base, base]])
    points = golden.golden_pairs(cfg.alpha_lo, cfg.alpha_hi, cfg.alpha_tol, cfg.alpha_max_iter, AUTHORS_DECIMALS)
    star = yield from _alpha_stage(rec, base, eps_b, 1, points)
    if rec.accepted() or cfg.ablation != "full":
        return
    weaker = int(score_lib.weaker_object_authors(rec.vector(star, "d"), rec.vector(star, "c")))
    walk = golden.authors_grid_walk(cfg.beta_grid[0], cfg.beta_grid[-1], cfg.beta_step(), cfg.beta_tol, cfg.beta_max_iter)
    yield from beta_stage(rec, 1, rec.vector(star, "w"), weaker, cfg.authors_stronger_beta, walk)


def steps(cfg: EAAConfig = EAAConfig(), schedule: str = "paper", costs: HSPConfig = HSPConfig()
          ) -> Generator[Request, Any, EAAResult]:
    """The EAA search as a generator: it yields requests and is sent their answers; its return
    value (StopIteration.value) is the EAAResult (wall_time 0.0: the driver fills it in).
    costs: the stages' HSPConfig, whose bnoise_calls / mdenoise_calls count the calls."""
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    rec = Record(cfg.threshold, costs)
    if cfg.ablation in ("baseline1", "baseline2"):
        yield from fixed(rec, cfg)
    else:
        yield from (_paper if schedule == "paper" else _authors)(rec, cfg)
    return rec.result()


# ----------------------------------------------------------------------------------------
# one pair


class FusionProblem(Protocol):
    """What `eaa` drives (the pipeline implements it; tests use analytic fakes)."""

    def noise(self, round_k: int) -> Any:
        """Sample eps for outer round k (1-based). No model calls."""

    def blend(self, eps: Any, betas: np.ndarray) -> Any:
        """BNoise of eps for n beta pairs (n, 2) in one call -> a batch of n eps_b."""

    def mix(self, eps_b: Any, alphas: np.ndarray) -> Evaluation:
        """MDeNoise + scoring of n alphas (n,) in one call from n aligned eps_b (a stacked batch)."""


def eaa(problem: FusionProblem, cfg: EAAConfig = EAAConfig(), schedule: str = "paper",
        costs: HSPConfig = HSPConfig()) -> EAAResult:
    """Search alpha, then the weaker object's beta, then eps, for one pair; the best candidate
    ever seen. Each request becomes one `problem.blend` / `problem.mix` call."""
    for method in ("noise", "blend", "mix"):
        if not callable(getattr(problem, method, None)):
            raise TypeError(f"problem must be a FusionProblem (noise, blend, mix methods); {type(problem).__name__} "
                            f"has no {method}()")
    if not isinstance(cfg, EAAConfig):
        raise TypeError(f"cfg must be an EAAConfig, got {type(cfg).__name__}")
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    t0 = time.perf_counter()
    gen = steps(cfg, schedule, costs)
    noise: dict[int, Any] = {}
    answer = None
    try:
        while True:
            req = gen.send(answer)
            if isinstance(req, NoiseRequest):
                if req.round not in noise:
                    noise[req.round] = problem.noise(req.round)
                answer = noise[req.round]
            elif isinstance(req, BNoiseRequest):
                if req.round not in noise:
                    noise[req.round] = problem.noise(req.round)
                answer = list(problem.blend(noise[req.round], req.betas))
            else:
                answer = problem.mix(np.stack([np.asarray(e) for e in req.eps_b]), req.alphas)
    except StopIteration as stop:
        return dataclasses.replace(stop.value, wall_time=time.perf_counter() - t0)

"""Efficient Adaptive Adjustment (EAA): the zero-order search over theta = {alpha, beta1, beta2, eps}.

The search is a generator (`steps`) that asks for model work and is sent the answers:
`BNoiseRequest` (BNoise of these beta pairs, outer round k) -> n eps_b values;
`MDeNoiseRequest` (MDeNoise + score of these alphas from these eps_b) -> `Evaluation`.
It never sees a model, so a driver decides how requests run: `eaa(problem, cfg, schedule)`
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
from typing import Any, Generator, Protocol, Sequence

import numpy as np

from vmdiff_jax.method import golden
from vmdiff_jax.method.hsp import HSPConfig
from vmdiff_jax.method import score as score_lib
from vmdiff_jax.method.golden import INV_PHI, SearchResult, golden_section, golden_section_grid  # noqa: F401  (re-exported)

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


# ----------------------------------------------------------------------------------------
# requests and answers


@dataclasses.dataclass(frozen=True)
class NoiseRequest:
    """The plain noise eps of outer round k (no model call; the baseline1 row)."""

    round: int


@dataclasses.dataclass(frozen=True)
class BNoiseRequest:
    """BNoise of the pair's eps for outer round k under n SCat weight pairs betas (n, 2).
    Answer: a sequence of n opaque eps_b values."""

    round: int
    betas: np.ndarray


@dataclasses.dataclass(frozen=True)
class MDeNoiseRequest:
    """MDeNoise + scoring of n alphas (n,), candidate j starting from eps_b[j] (an element of
    an earlier BNoise answer). Answer: an `Evaluation` of n candidates."""

    alphas: np.ndarray
    eps_b: tuple


Request = NoiseRequest | BNoiseRequest | MDeNoiseRequest

_SUBSCORES = ("S", "d1", "d2", "n1", "n2", "c1", "c2")


@dataclasses.dataclass
class Evaluation:
    """Scores of n candidates: (n,) arrays of sub-scores and n opaque payloads (the images)."""

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

    def take(self, idx: Sequence[int]) -> "Evaluation":
        """The rows idx, in that order."""
        idx = list(idx)
        arrays = {f: np.asarray(getattr(self, f), np.float64).reshape(-1)[idx] for f in ("d1", "d2", "c1", "c2", "n1", "n2", "S")}
        return Evaluation(**arrays, payload=[self.payload[i] for i in idx])

    @staticmethod
    def concat(parts: Sequence["Evaluation"]) -> "Evaluation":
        """The rows of several evaluations, in order."""
        arrays = {f: np.concatenate([np.asarray(getattr(p, f), np.float64).reshape(-1) for p in parts])
                  for f in ("d1", "d2", "c1", "c2", "n1", "n2", "S")}
        return Evaluation(**arrays, payload=[x for p in parts for x in p.payload])


@dataclasses.dataclass(frozen=True)
class EAAResult:
    """Best candidate ever seen. calls: image-model-calls; rounds: sequential requests.

    trajectory: one dict per evaluated candidate {stage, round, alpha, beta1, beta2, S, d1, d2,
    n1, n2, c1, c2, calls_so_far} (calls_so_far counted after the request that produced it).
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


# ----------------------------------------------------------------------------------------
# the search as a generator


class _Record:
    """Counts calls from the cost model, records every candidate, keeps the best ever (first maximum)."""

    def __init__(self, cfg: EAAConfig, costs: HSPConfig):
        self.cfg = cfg
        self.costs = costs
        self.calls = 0
        self.rounds = 0
        self.trajectory: list[dict] = []
        self.best: dict | None = None
        self.best_payload = None
        self.stage_best: dict | None = None

    def noise(self, k: int) -> Generator[Request, Any, Any]:
        eps = yield NoiseRequest(k)
        return eps

    def bnoise(self, k: int, betas) -> Generator[Request, Any, list]:
        betas = np.asarray(betas, dtype=np.float64).reshape(-1, 2)
        out = list((yield BNoiseRequest(k, betas)))
        if len(out) != len(betas):
            raise ValueError(f"BNoise returned {len(out)} results for {len(betas)} beta pairs")
        self.calls += len(betas) * self.costs.bnoise_calls
        self.rounds += 1
        return out

    def mdenoise(self, eps_b: Sequence[Any], alphas, betas, stage: str, k: int) -> Generator[Request, Any, np.ndarray]:
        alphas = np.asarray(alphas, dtype=np.float64).reshape(-1)
        ev = yield MDeNoiseRequest(alphas, tuple(eps_b))
        if len(ev) != len(alphas):
            raise ValueError(f"MDeNoise returned {len(ev)} candidates for {len(alphas)} alphas")
        self.calls += len(alphas) * self.costs.mdenoise_calls
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

    def result(self) -> EAAResult:
        b = self.best
        return EAAResult(
            alpha=b["alpha"], beta=np.array([b["beta1"], b["beta2"]]), score=b["S"],
            subscores={name: b[name] for name in _SUBSCORES}, payload=self.best_payload,
            calls=self.calls, rounds=self.rounds, wall_time=0.0, trajectory=self.trajectory, accepted=self.accepted(),
        )


def _maximise(points: golden.Points, evaluate) -> Generator[Request, Any, None]:
    """Run a scalar strategy whose candidates are scored by the sub-generator evaluate(xs)."""
    try:
        xs = next(points)
        while True:
            scores = yield from evaluate(np.asarray(xs, dtype=np.float64))
            xs = points.send(scores)
    except StopIteration:
        return


def _alpha_stage(rec: _Record, eps_b, k: int, points: golden.Points) -> Generator[Request, Any, dict]:
    base = rec.cfg.base_beta
    rec.stage_best = None
    yield from _maximise(points, lambda xs: rec.mdenoise([eps_b] * len(xs), xs, np.full((len(xs), 2), base), "alpha", k))
    return rec.stage_best


def _beta_stage(rec: _Record, k: int, alpha: float, weaker: int, other: float, points: golden.Points):
    def evaluate(values):
        betas = np.full((len(values), 2), other, dtype=np.float64)
        betas[:, weaker] = values
        eps_b = yield from rec.bnoise(k, betas)
        return (yield from rec.mdenoise(eps_b, np.full(len(values), alpha), betas, "beta", k))

    rec.stage_best = None
    yield from _maximise(points, evaluate)


def _pair(star: dict, p: str) -> np.ndarray:
    return np.array([star[f"{p}1"], star[f"{p}2"]])


def _fixed(rec: _Record, cfg: EAAConfig):
    """The baseline rows: one candidate at alpha 0.5 from eps (baseline1) or BNoise(eps; base, base)."""
    base = cfg.base_beta
    if cfg.ablation == "baseline1":
        eps_b = yield from rec.noise(1)
    else:
        (eps_b,) = yield from rec.bnoise(1, [[base, base]])
    yield from rec.mdenoise([eps_b], [0.5], np.full((1, 2), base), "fixed", 1)


def _paper(rec: _Record, cfg: EAAConfig):
    base = cfg.base_beta
    alpha_points = golden.interval_strategy(cfg.alpha_tol, cfg.alpha_max_iter, cfg.batch)
    beta_points = golden.grid_strategy(cfg.beta_tol_index(), cfg.beta_max_iter, cfg.batch)
    for k in range(1, cfg.max_rounds + 1):
        (eps_b,) = yield from rec.bnoise(k, [[base, base]])
        star = yield from _alpha_stage(rec, eps_b, k, alpha_points(cfg.alpha_lo, cfg.alpha_hi))
        if rec.accepted():
            return
        grid = cfg.raise_grid() if cfg.ablation == "full" else ()
        if grid:
            weaker = int(score_lib.weaker_object(_pair(star, "d"), _pair(star, "n")))
            yield from _beta_stage(rec, k, star["alpha"], weaker, base, golden.on_grid(grid, beta_points))
            if rec.accepted():
                return


def _authors(rec: _Record, cfg: EAAConfig):
    base = cfg.base_beta
    (eps_b,) = yield from rec.bnoise(1, [[base, base]])
    points = golden.golden_pairs(cfg.alpha_lo, cfg.alpha_hi, cfg.alpha_tol, cfg.alpha_max_iter, AUTHORS_DECIMALS)
    star = yield from _alpha_stage(rec, eps_b, 1, points)
    if rec.accepted() or cfg.ablation != "full":
        return
    weaker = int(score_lib.weaker_object_authors(_pair(star, "d"), _pair(star, "c")))
    walk = golden.authors_grid_walk(cfg.beta_grid[0], cfg.beta_grid[-1], cfg.beta_step(), cfg.beta_tol, cfg.beta_max_iter)
    yield from _beta_stage(rec, 1, star["alpha"], weaker, cfg.authors_stronger_beta, walk)


def steps(cfg: EAAConfig = EAAConfig(), schedule: str = "paper", costs: HSPConfig = HSPConfig()
          ) -> Generator[Request, Any, EAAResult]:
    """The EAA search as a generator: it yields requests and is sent their answers; its return
    value (StopIteration.value) is the EAAResult (wall_time 0.0: the driver fills it in).
    costs: the stages' HSPConfig, whose bnoise_calls / mdenoise_calls count the calls."""
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    rec = _Record(cfg, costs)
    if cfg.ablation in ("baseline1", "baseline2"):
        yield from _fixed(rec, cfg)
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

"""What an EAA search asks its driver for, what it is answered, and its book-keeping.

A search (`search.steps` for two objects, `simplex.steps` for K) is a generator that yields
requests and is sent their answers; it never sees a model. The requests speak of K objects
(K = 2 for a pair):
- `NoiseRequest(round)`: the plain noise eps of outer round k (no model call);
- `BNoiseRequest(round, betas (n, K))`: BNoise of round k's eps under n SCat weight rows ->
  n opaque eps_b values;
- `MDeNoiseRequest(weights (n, K), eps_b)`: MDeNoise (the weighted spherical mean of the K
  contexts; pairs: rows (1 - alpha, alpha)) + scoring of n candidates -> an `Evaluation`.
`Record` issues them for a search, counts image-model-calls from the stages' `HSPConfig`,
keeps every candidate in a trajectory and the best one ever seen, and builds the `EAAResult`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Generator, Sequence

import numpy as np

from vmdiff_jax.method import score as score_lib
from vmdiff_jax.method.hsp import HSPConfig


@dataclasses.dataclass(frozen=True)
class NoiseRequest:
    """The plain noise eps of outer round k (no model call; the baseline1 row)."""

    round: int


@dataclasses.dataclass(frozen=True)
class BNoiseRequest:
    """BNoise of the pair's eps for outer round k under n SCat weight rows betas (n, K).
    Answer: a sequence of n opaque eps_b values."""

    round: int
    betas: np.ndarray

    @property
    def objects(self) -> int:
        return int(np.shape(self.betas)[1])


@dataclasses.dataclass(frozen=True)
class MDeNoiseRequest:
    """MDeNoise + scoring of n candidates with mixing weights (n, K) on the simplex, candidate j
    starting from eps_b[j] (an element of an earlier BNoise answer). Answer: an `Evaluation`."""

    weights: np.ndarray
    eps_b: tuple

    @property
    def objects(self) -> int:
        return int(np.shape(self.weights)[1])

    @property
    def alphas(self) -> np.ndarray:
        """The pairs' alpha of each candidate (the weight of object 2), (n,)."""
        if self.objects != 2:
            raise ValueError(f"alphas are the two-object mixing weights; this request mixes {self.objects}")
        return np.asarray(self.weights)[:, 1]


Request = NoiseRequest | BNoiseRequest | MDeNoiseRequest


def pair_weights(alphas) -> np.ndarray:
    """Rows (1 - alpha, alpha) (n, 2) of alphas (n,), in float64 (alpha itself kept exactly)."""
    a = np.asarray(alphas, dtype=np.float64).reshape(-1)
    return np.stack([1.0 - a, a], axis=1)


@dataclasses.dataclass
class Evaluation:
    """Scores of m candidates fusing K objects: d, c, nrm (m, K) (visual cosine, raw and normalised
    text similarity to each input), S (m,), and m opaque payloads (the images)."""

    d: np.ndarray
    c: np.ndarray
    nrm: np.ndarray
    S: np.ndarray
    payload: list

    def __post_init__(self):
        m = np.asarray(self.S).reshape(-1).shape[0]
        self.S = np.asarray(self.S, np.float64).reshape(m)
        self.d, self.c, self.nrm = (np.asarray(x, np.float64).reshape(m, -1) for x in (self.d, self.c, self.nrm))

    @classmethod
    def from_subscores(cls, sub: score_lib.Subscores | score_lib.ManySubscores,
                       payload: Sequence[Any] | None = None) -> "Evaluation":
        """From a pair's `Subscores` (d1, d2, c1, c2, n1, n2, S) or K objects' `ManySubscores`."""
        if isinstance(sub, score_lib.ManySubscores):
            d, c, nrm, s = sub
        else:
            d, c, nrm = (np.stack([np.asarray(a).reshape(-1), np.asarray(b).reshape(-1)], 1)
                         for a, b in ((sub.d1, sub.d2), (sub.c1, sub.c2), (sub.n1, sub.n2)))
            s = sub.S
        m = np.asarray(s).reshape(-1).shape[0]
        return cls(d, c, nrm, s, list(payload) if payload is not None else [None] * m)

    def __len__(self) -> int:
        return int(self.S.shape[0])

    @property
    def objects(self) -> int:
        return int(self.d.shape[1])

    def column(self, name: str) -> np.ndarray:
        """A sub-score by its flat name: "S", or "d3", "n1", "c2" (object i, 1-based) -> (m,)."""
        if name == "S":
            return self.S
        kind, i = name[0], int(name[1:]) - 1
        return {"d": self.d, "c": self.c, "n": self.nrm}[kind][:, i]

    def __getattr__(self, name: str):  # d1, d2, c1, c2, n1, n2, ... as (m,) columns
        if len(name) > 1 and name[0] in "dcn" and name[1:].isdigit():
            return self.column(name)
        raise AttributeError(name)

    def take(self, idx: Sequence[int]) -> "Evaluation":
        """The rows idx, in that order."""
        idx = list(idx)
        return Evaluation(self.d[idx], self.c[idx], self.nrm[idx], self.S[idx], [self.payload[i] for i in idx])

    @staticmethod
    def concat(parts: Sequence["Evaluation"]) -> "Evaluation":
        """The rows of several evaluations (of one K), in order."""
        return Evaluation(*(np.concatenate([getattr(p, f) for p in parts]) for f in ("d", "c", "nrm", "S")),
                          payload=[x for p in parts for x in p.payload])


def subscore_names(objects: int) -> tuple[str, ...]:
    """The flat sub-score names of K objects: S, d1..dK, n1..nK, c1..cK."""
    return ("S",) + tuple(f"{k}{i}" for k in "dnc" for i in range(1, objects + 1))


@dataclasses.dataclass(frozen=True)
class EAAResult:
    """Best candidate ever seen. calls: image-model-calls; rounds: sequential requests.

    weights (K,): its mixing weights (pairs: (1 - alpha, alpha)); alpha: object 2's weight for a
    pair, None for K > 2; beta (K,); subscores {S, d1..dK, n1..nK, c1..cK}; trajectory: one dict
    per evaluated candidate {stage, round, beta1..betaK, S, d1.., n1.., c1.., calls_so_far, and
    alpha (pairs) or w1..wK (K > 2)} (calls_so_far counted after the request that produced it).
    """

    alpha: float | None
    beta: np.ndarray
    score: float
    subscores: dict
    payload: Any
    calls: int
    rounds: int
    wall_time: float
    trajectory: list
    accepted: bool
    weights: np.ndarray | None = None


class Record:
    """Issues a search's requests: counts calls from the cost model, records every candidate,
    keeps the best ever (the first maximum) and the best of the current stage."""

    def __init__(self, threshold: float, costs: HSPConfig, objects: int = 2):
        self.threshold = threshold
        self.costs = costs
        self.objects = objects
        self.names = subscore_names(objects)
        self.calls = 0
        self.rounds = 0
        self.trajectory: list[dict] = []
        self.best: dict | None = None
        self.best_payload = None
        self.best_weights: np.ndarray | None = None
        self.stage_best: dict | None = None

    def noise(self, k: int) -> Generator[Request, Any, Any]:
        eps = yield NoiseRequest(k)
        return eps

    def bnoise(self, k: int, betas) -> Generator[Request, Any, list]:
        betas = np.asarray(betas, dtype=np.float64).reshape(-1, self.objects)
        out = list((yield BNoiseRequest(k, betas)))
        if len(out) != len(betas):
            raise ValueError(f"BNoise returned {len(out)} results for {len(betas)} beta rows")
        self.calls += len(betas) * self.costs.bnoise_calls
        self.rounds += 1
        return out

    def mdenoise(self, eps_b: Sequence[Any], weights, betas, stage: str, k: int) -> Generator[Request, Any, np.ndarray]:
        """Score candidates (weights (n, K), each from eps_b[j], BNoise'd with betas (n, K)) -> S (n,)."""
        weights = np.asarray(weights, dtype=np.float64).reshape(-1, self.objects)
        betas = np.asarray(betas, dtype=np.float64).reshape(-1, self.objects)
        ev = yield MDeNoiseRequest(weights, tuple(eps_b))
        if len(ev) != len(weights):
            raise ValueError(f"MDeNoise returned {len(ev)} candidates for {len(weights)} weight rows")
        self.calls += len(weights) * self.costs.mdenoise_calls
        self.rounds += 1
        columns = {name: ev.column(name) for name in self.names}
        for j, w in enumerate(weights):
            entry: dict = dict(stage=stage, round=k)
            if self.objects == 2:
                entry["alpha"] = float(w[1])
            else:
                entry.update({f"w{i + 1}": float(x) for i, x in enumerate(w)})
            entry.update({f"beta{i + 1}": float(b) for i, b in enumerate(betas[j])})
            entry.update({name: float(columns[name][j]) for name in self.names})
            entry["calls_so_far"] = self.calls
            self.trajectory.append(entry)
            if self.best is None or entry["S"] > self.best["S"]:
                self.best, self.best_payload, self.best_weights = entry, ev.payload[j], w
            if self.stage_best is None or entry["S"] > self.stage_best["S"]:
                self.stage_best = entry
        return columns["S"]

    def accepted(self) -> bool:
        return self.best is not None and self.best["S"] > self.threshold

    def vector(self, entry: dict, prefix: str) -> np.ndarray:
        """An entry's per-object values (K,): prefix "d", "n", "c", "beta" or "w"."""
        if prefix == "w" and self.objects == 2:
            return pair_weights([entry["alpha"]])[0]
        return np.array([entry[f"{prefix}{i}"] for i in range(1, self.objects + 1)])

    def result(self) -> EAAResult:
        b = self.best
        return EAAResult(
            alpha=b["alpha"] if self.objects == 2 else None, beta=self.vector(b, "beta"), score=b["S"],
            subscores={name: b[name] for name in self.names}, payload=self.best_payload,
            calls=self.calls, rounds=self.rounds, wall_time=0.0, trajectory=self.trajectory, accepted=self.accepted(),
            weights=np.asarray(self.best_weights, np.float64),
        )

"""Continuous batching of many pairs' searches into shared model calls.

Each active pair runs its own search generator (`simplex.steps` for its number of objects K:
`search.steps` for a pair). A step gathers the waiting requests of every active pair, picks ONE
kind and K (BNoise or MDeNoise of K objects: the calls' shapes depend on both; the one with the
most waiting candidates), packs those requests' candidates into calls padded to a small fixed set of
bucket sizes (one compilation per bucket, never per round), answers each pair with its own
rows, and starts the next pending pair as soon as one finishes. A pair's search sees only
its own answers, so its result does not depend on how many pairs share a call.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Hashable, Iterable, Protocol, Sequence

import numpy as np

from vmdiff_jax.method import search, simplex
from vmdiff_jax.method.hsp import HSPConfig
from vmdiff_jax.method.requests import BNoiseRequest, EAAResult, Evaluation, MDeNoiseRequest, NoiseRequest
from vmdiff_jax.method.search import EAAConfig


@dataclasses.dataclass(frozen=True)
class BNoiseItem:
    """One BNoise candidate: the pair's noise of outer round k under SCat weights beta (K,)."""

    pair: Hashable
    round: int
    beta: np.ndarray


@dataclasses.dataclass(frozen=True)
class MDeNoiseItem:
    """One MDeNoise candidate: mixing weights (K,) (pairs: (1 - alpha, alpha)) from one eps_b the
    backend returned for this pair."""

    pair: Hashable
    eps_b: Any
    weights: np.ndarray

    @property
    def alpha(self) -> float:
        """A pair's alpha: the weight of object 2."""
        return float(self.weights[1])


_END = object()


class PairFailed(Exception):
    """Raised by `Backend.start` for a pair that cannot run; str(e) is the reason."""


class Backend(Protocol):
    """The model side: runs padded batches of candidates drawn from several pairs."""

    def start(self, pair: Hashable) -> int:
        """Prepare the pair (images, conditioning, references) and return its number of objects
        (None counts as 2); raise PairFailed to skip it."""

    def noise(self, pair: Hashable, round_k: int):
        """The pair's plain noise eps of outer round k (no model call)."""

    def bnoise(self, items: Sequence[BNoiseItem], slots: int) -> list:
        """ONE model call of `slots` candidates (len(items) real): one eps_b per item, in order."""

    def mdenoise(self, items: Sequence[MDeNoiseItem], slots: int) -> Evaluation:
        """ONE MDeNoise + decode call of `slots` candidates, scored per item against its own
        pair: an Evaluation of len(items) rows."""

    def finish(self, pair: Hashable, result: EAAResult) -> None:
        """The pair's search ended: write its outputs, free its state."""


def bucket_sizes(max_slots: int, multiple: int = 1) -> tuple[int, ...]:
    """Padded call sizes: multiple * (1, 2, 3, 4, 6, 8, 12, 16, ...) (powers of two and the
    3/4 points between them from 4 up) to the first >= max_slots. The 3/4 points raise the
    mean occupancy of an IIOF run from 0.65-0.79 to 0.84-0.91 (benchmarks/pairs_per_call.py)
    for about 1.7x the compilations."""
    if max_slots < 1 or multiple < 1:
        raise ValueError(f"need max_slots >= 1 and multiple >= 1, got {max_slots}, {multiple}")
    sizes = [1]
    while sizes[-1] * multiple < max_slots:
        nxt = sizes[-1] * 2
        if nxt >= 4:
            sizes.append(nxt * 3 // 4)
            if sizes[-1] * multiple >= max_slots:
                break
        sizes.append(nxt)
    return tuple(s * multiple for s in sizes)


def max_request(cfg: EAAConfig, schedule: str, objects: int = 2) -> int:
    """The most candidates one request of a pair carries (2 for golden section's first step
    and the authors' pairs, cfg.batch for n-section; 1 + K (K - 1) for the first step of K > 2
    objects' pattern search)."""
    if objects > 2:
        return 1 + objects * (objects - 1)
    return max(2, cfg.batch) if schedule == "paper" else 2


@dataclasses.dataclass
class RunStats:
    """What a run did: pairs completed / failed (pair, reason), backend calls (sequential_calls =
    bnoise_batches + mdenoise_batches, each one padded batch of candidates) and padding."""

    completed: list = dataclasses.field(default_factory=list)
    failed: list = dataclasses.field(default_factory=list)
    sequential_calls: int = 0
    bnoise_batches: int = 0
    mdenoise_batches: int = 0
    real_slots: int = 0
    padded_slots: int = 0
    buckets_used: set = dataclasses.field(default_factory=set)

    @property
    def mean_occupancy(self) -> float:
        """Real candidates / padded slots over all calls (1.0 when nothing ran)."""
        return self.real_slots / self.padded_slots if self.padded_slots else 1.0


class _Active:
    """One pair's generator, its pending request and its wall clock."""

    def __init__(self, pair: Hashable, cfg: EAAConfig, schedule: str, costs: HSPConfig, objects: int):
        self.pair = pair
        self.t0 = time.perf_counter()
        self.gen = simplex.steps(cfg, schedule, costs, objects)
        self.request = next(self.gen)

    def answer(self, value) -> EAAResult | None:
        """Send the answer; the EAAResult when the search ended."""
        try:
            self.request = self.gen.send(value)
            return None
        except StopIteration as stop:
            return dataclasses.replace(stop.value, wall_time=time.perf_counter() - self.t0)


def _items(a: _Active) -> list:
    req = a.request
    if isinstance(req, BNoiseRequest):
        return [BNoiseItem(a.pair, req.round, np.asarray(b)) for b in req.betas]
    return [MDeNoiseItem(a.pair, e, np.asarray(w)) for e, w in zip(req.eps_b, req.weights)]


def run(pairs: Iterable[Hashable], backend: Backend, cfg: EAAConfig, schedule: str = "paper",
        pairs_per_call: int = 1, multiple: int = 1, costs: HSPConfig = HSPConfig(), objects: int = 2) -> RunStats:
    """Search every pair, up to `pairs_per_call` at once, sharing model calls (module doc).

    multiple: the padded sizes are multiples of it (the mesh's 'data' axis size); costs: the
    stages' HSPConfig (the searches count image-model-calls with it); objects: the most objects
    a pair of the run has (it sizes the largest call; a pair's own K comes from backend.start).
    """
    if pairs_per_call < 1:
        raise ValueError(f"pairs_per_call must be >= 1, got {pairs_per_call}")
    if schedule not in search.SCHEDULES:
        raise ValueError(f"schedule must be one of {search.SCHEDULES}, got {schedule!r}")
    buckets = bucket_sizes(pairs_per_call * max_request(cfg, schedule, objects), multiple)
    stats = RunStats()
    pending = iter(pairs)  # pulled one at a time: a pair is taken only when a slot frees
    active: list[_Active] = []

    def refill():
        while len(active) < pairs_per_call:
            pair = next(pending, _END)
            if pair is _END:
                return
            try:
                objects = backend.start(pair)
                a = _Active(pair, cfg, schedule, costs, 2 if objects is None else int(objects))
            except PairFailed as e:
                stats.failed.append((pair, str(e)))
                continue
            active.append(a)

    def answer_noise():
        """NoiseRequests need no model call: answer them at once (a search may then end)."""
        for a in list(active):
            result = None
            while result is None and isinstance(a.request, NoiseRequest):
                result = a.answer(backend.noise(a.pair, a.request.round))
            if result is not None:
                active.remove(a)
                backend.finish(a.pair, result)
                stats.completed.append(a.pair)

    refill()
    answer_noise()
    while active:
        waiting: dict[tuple, list] = {}  # (kind, K) -> the pairs waiting with such a request, in order
        for a in active:
            waiting.setdefault((type(a.request), a.request.objects), []).append(a)
        size = {key: sum(len(_items(a)) for a in group) for key, group in waiting.items()}
        # the most waiting candidates; ties: MDeNoise first, then fewer objects
        key = max(size, key=lambda g: (size[g], g[0] is MDeNoiseRequest, -g[1]))
        kind, group = key[0], waiting[key]
        items = [(a, it) for a in group for it in _items(a)]
        answers: list = []
        for i in range(0, len(items), buckets[-1]):
            chunk = [it for _, it in items[i:i + buckets[-1]]]
            slots = next(b for b in buckets if b >= len(chunk))
            if kind is BNoiseRequest:
                out = list(backend.bnoise(chunk, slots))
                stats.bnoise_batches += 1
            else:
                out = backend.mdenoise(chunk, slots)
                stats.mdenoise_batches += 1
            if len(out) != len(chunk):
                raise ValueError(f"backend returned {len(out)} results for {len(chunk)} candidates")
            answers.append(out)
            stats.sequential_calls += 1
            stats.real_slots += len(chunk)
            stats.padded_slots += slots
            stats.buckets_used.add(slots)
        rows = [x for part in answers for x in part] if kind is BNoiseRequest else Evaluation.concat(answers)
        start = 0
        for a in group:
            n = len(_items(a))
            mine = rows[start:start + n] if kind is BNoiseRequest else rows.take(range(start, start + n))
            start += n
            result = a.answer(mine)
            if result is not None:
                active.remove(a)
                backend.finish(a.pair, result)
                stats.completed.append(a.pair)
        refill()
        answer_noise()
    return stats

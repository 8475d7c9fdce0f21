"""Continuous batching of many pairs' searches into shared model calls.

Each active pair runs its own `search.steps` generator. A step gathers the waiting requests
of every active pair, picks ONE kind (BNoise or MDeNoise: the kind with the most waiting
candidates), packs those requests' candidates into calls padded to a small fixed set of
bucket sizes (one compilation per bucket, never per round), answers each pair with its own
rows, and starts the next pending pair as soon as one finishes. A pair's search sees only
its own answers, so its result does not depend on how many pairs share a call.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Hashable, Iterable, Protocol, Sequence

import numpy as np

from vmdiff_jax.method import search
from vmdiff_jax.method.hsp import HSPConfig
from vmdiff_jax.method.search import BNoiseRequest, EAAConfig, EAAResult, Evaluation, MDeNoiseRequest, NoiseRequest


@dataclasses.dataclass(frozen=True)
class BNoiseItem:
    """One BNoise candidate: the pair's noise of outer round k under SCat weights beta (2,)."""

    pair: Hashable
    round: int
    beta: np.ndarray


@dataclasses.dataclass(frozen=True)
class MDeNoiseItem:
    """One MDeNoise candidate: alpha from one eps_b the backend returned for this pair."""

    pair: Hashable
    eps_b: Any
    alpha: float


_END = object()


class PairFailed(Exception):
    """Raised by `Backend.start` for a pair that cannot run; str(e) is the reason."""


class Backend(Protocol):
    """The model side: runs padded batches of candidates drawn from several pairs."""

    def start(self, pair: Hashable) -> None:
        """Prepare the pair (images, conditioning, references); raise PairFailed to skip it."""

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


def max_request(cfg: EAAConfig, schedule: str) -> int:
    """The most candidates one request of a pair carries (2 for golden section's first step
    and the authors' pairs, cfg.batch for n-section)."""
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

    def __init__(self, pair: Hashable, cfg: EAAConfig, schedule: str, costs: HSPConfig):
        self.pair = pair
        self.t0 = time.perf_counter()
        self.gen = search.steps(cfg, schedule, costs)
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
    return [MDeNoiseItem(a.pair, e, float(x)) for e, x in zip(req.eps_b, req.alphas)]


def run(pairs: Iterable[Hashable], backend: Backend, cfg: EAAConfig, schedule: str = "paper",
        pairs_per_call: int = 1, multiple: int = 1, costs: HSPConfig = HSPConfig()) -> RunStats:
    """Search every pair, up to `pairs_per_call` at once, sharing model calls (module doc).

    multiple: the padded sizes are multiples of it (the mesh's 'data' axis size); costs: the
    stages' HSPConfig (the searches count image-model-calls with it).
    """
    if pairs_per_call < 1:
        raise ValueError(f"pairs_per_call must be >= 1, got {pairs_per_call}")
    if schedule not in search.SCHEDULES:
        raise ValueError(f"schedule must be one of {search.SCHEDULES}, got {schedule!r}")
    buckets = bucket_sizes(pairs_per_call * max_request(cfg, schedule), multiple)
    stats = RunStats()
    pending = iter(pairs)  # pulled one at a time: a pair is taken only when a slot frees
    active: list[_Active] = []

    def refill():
        while len(active) < pairs_per_call:
            pair = next(pending, _END)
            if pair is _END:
                return
            try:
                backend.start(pair)
            except PairFailed as e:
                stats.failed.append((pair, str(e)))
                continue
            active.append(_Active(pair, cfg, schedule, costs))

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
        waiting = {kind: [a for a in active if isinstance(a.request, kind)] for kind in (BNoiseRequest, MDeNoiseRequest)}
        size = {kind: sum(len(_items(a)) for a in group) for kind, group in waiting.items()}
        kind = MDeNoiseRequest if size[MDeNoiseRequest] >= size[BNoiseRequest] else BNoiseRequest
        group = waiting[kind]
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

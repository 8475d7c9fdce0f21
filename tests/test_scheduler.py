"""Continuous batching across pairs (scheduler.run) on analytic pairs: each pair's result
equals its one-pair search whatever the number of pairs per call; calls, padding, failures."""

import dataclasses

import numpy as np
import pytest

from vmdiff_jax.engine import scheduler
from vmdiff_jax.method.search import EAAConfig, Evaluation, eaa
from helpers import FakeProblem

CFG = EAAConfig()


def _problem(p: int) -> FakeProblem:
    """Pair p's analytic objective: alpha peaks and beta gains spread over pairs, some
    pairs accepted after the alpha stage, some needing beta, some resampling eps."""
    rng = np.random.default_rng(p)
    peaks = tuple(rng.uniform(2.0, 2.6, 3))
    return FakeProblem(peaks=peaks, a_star=tuple(rng.uniform(0.41, 0.59, 3)), weak=int(p % 2),
                       b_star=float(rng.uniform(1.2, 3.4)), gain=float(rng.uniform(0.0, 0.3)))


class FakeBackend:
    """Backend over one FakeProblem per pair; records every call's real and padded size."""

    def __init__(self, bad=()):
        self.problems, self.bad = {}, set(bad)
        self.calls, self.finished = [], {}

    def start(self, pair):
        if pair in self.bad:
            raise scheduler.PairFailed(f"pair {pair}: cannot read image")
        self.problems[pair] = _problem(pair)

    def bnoise(self, items, slots):
        assert len(items) <= slots
        self.calls.append(("bnoise", len(items), slots))
        out = []
        for it in items:
            prob = self.problems[it.pair]
            out.append(prob.blend(prob.noise(it.round), np.asarray(it.beta)[None])[0])
        return out

    def mdenoise(self, items, slots):
        assert len(items) <= slots
        self.calls.append(("mdenoise", len(items), slots))
        parts = [self.problems[it.pair].mix(np.asarray(it.eps_b)[None], np.array([it.alpha])) for it in items]
        return Evaluation.concat(parts)

    def finish(self, pair, result):
        assert pair not in self.finished
        self.finished[pair] = result


def _same(a, b):
    """Same candidates and choices; scores equal to float32 rounding (the fake scores a
    batch of rows with jnp, whose float32 results may differ in the last bit by batch size)."""
    assert (a.alpha, tuple(a.beta), a.calls, a.rounds, a.accepted) == (b.alpha, tuple(b.beta), b.calls, b.rounds, b.accepted)
    assert a.score == pytest.approx(b.score, abs=1e-6)
    key = ("stage", "round", "alpha", "beta1", "beta2", "calls_so_far")
    assert [tuple(e[k] for k in key) for e in a.trajectory] == [tuple(e[k] for k in key) for e in b.trajectory]
    np.testing.assert_allclose([e["S"] for e in a.trajectory], [e["S"] for e in b.trajectory], atol=1e-6)


@pytest.mark.parametrize("schedule", ["paper", "authors"])
@pytest.mark.parametrize("P", [1, 3, 8])
def test_each_pair_equals_its_one_pair_search(schedule, P):
    pairs = list(range(10))
    ref = {p: eaa(_problem(p), CFG, schedule) for p in pairs}
    be = FakeBackend()
    stats = scheduler.run(pairs, be, CFG, schedule, pairs_per_call=P)
    assert sorted(stats.completed) == pairs and not stats.failed
    for p in pairs:
        _same(be.finished[p], ref[p])
    buckets = scheduler.bucket_sizes(P * 2)
    assert {slots for _, _, slots in be.calls} <= set(buckets)  # padded to the fixed sizes only
    assert stats.sequential_calls == len(be.calls)
    assert stats.real_slots == sum(n for _, n, _ in be.calls) and stats.padded_slots == sum(s for _, _, s in be.calls)
    if P == 1:
        assert stats.sequential_calls == sum(r.rounds for r in ref.values())  # one call per request
    else:
        assert stats.sequential_calls < sum(r.rounds for r in ref.values()) / min(P, 3) * 1.5


def test_more_pairs_per_call_fewer_calls_and_nsection():
    pairs = list(range(16))
    calls = {}
    for P in (1, 4, 16):
        be = FakeBackend()
        stats = scheduler.run(pairs, be, CFG, "paper", pairs_per_call=P)
        calls[P] = stats.sequential_calls
        assert 0 < stats.mean_occupancy <= 1
    assert calls[16] < calls[4] < calls[1]
    cfg = dataclasses.replace(CFG, batch=4)
    be = FakeBackend()
    stats = scheduler.run(pairs[:5], be, cfg, "paper", pairs_per_call=2, multiple=2)
    assert {s for _, _, s in be.calls} <= set(scheduler.bucket_sizes(8, 2)) and all(s % 2 == 0 for _, _, s in be.calls)
    for p in pairs[:5]:
        _same(be.finished[p], eaa(_problem(p), cfg, "paper"))


def test_failed_pairs_are_recorded_and_others_complete():
    be = FakeBackend(bad={2, 5})
    stats = scheduler.run(range(8), be, CFG, "paper", pairs_per_call=3)
    assert sorted(stats.completed) == [0, 1, 3, 4, 6, 7]
    assert [p for p, _ in stats.failed] == [2, 5] and "cannot read image" in stats.failed[0][1]
    assert set(be.finished) == {0, 1, 3, 4, 6, 7}


def test_bucket_sizes_and_errors():
    assert scheduler.bucket_sizes(1) == (1,)
    assert scheduler.bucket_sizes(5) == (1, 2, 3, 4, 6)
    assert scheduler.bucket_sizes(8, 4) == (4, 8)
    assert scheduler.bucket_sizes(256) == (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256)
    with pytest.raises(ValueError):
        scheduler.bucket_sizes(0)
    with pytest.raises(ValueError):
        scheduler.run([0], FakeBackend(), CFG, "paper", pairs_per_call=0)
    with pytest.raises(ValueError):
        scheduler.run([0], FakeBackend(), CFG, "other")


def test_pairs_are_pulled_only_when_a_slot_frees():
    """A lazy iterable of pairs is consumed one pair at a time (batch claims a pair only
    when it is about to run it), never all at once."""
    pulled = []

    def pairs():
        for p in range(6):
            pulled.append(p)
            yield p

    class Watching(FakeBackend):
        def start(self, pair):
            assert len(pulled) <= len(self.finished) + 2 + 1  # 2 active at most, plus the one starting
            super().start(pair)

    be = Watching()
    stats = scheduler.run(pairs(), be, CFG, "paper", pairs_per_call=2)
    assert sorted(stats.completed) == list(range(6)) and pulled == list(range(6))

"""One compilation per bucket size, none across search rounds, fusions or pairs.

A demo fuse running all K = 3 outer rounds (alpha stage + beta stage each, the random demo
weights never pass the acceptance threshold) traces each stage once per call size it saw
(the scheduler's buckets 1 and 2 for one pair: golden section's first step carries 2
candidates, later steps 1), and a second fuse with other labels and another seed traces
nothing. A multi-pair run (3 pairs at once) traces the bnoise / mdenoise stages once per
bucket the scheduler used, however many rounds it ran. Counted twice: `VMDiff.compile_counts()`
(stages.py's trace counter) and JAX's own monitoring events (jaxpr traces and backend
compilations). The size (48) is used by no other test module, so nothing is cached before.
"""

import collections

import jax
import numpy as np
import pytest
from jax import monitoring
from jax._src import dispatch

from vmdiff_jax.engine import scheduler
from vmdiff_jax.method import search
from vmdiff_jax.engine.pairs import FusionInput
from vmdiff_jax.engine.demo import example_images
from vmdiff_jax.app.inputs import load_image
from vmdiff_jax.engine.pipeline import VMDiff

SIZE = 48
EAA = search.EAAConfig(alpha_tol=0.05, beta_tol=1.5, max_rounds=3)
TRACE, COMPILE = dispatch.JAXPR_TRACE_EVENT, dispatch.BACKEND_COMPILE_EVENT

# batch=1: the scheduler's buckets for one pair are 1 and 2; the reference pair's features
# (2 images) share bucket 2's executable. The text stages see token ids (1 or 2, 77) whatever
# the image size: another test module in this process may have compiled them already (0 or 1).
EXPECTED = {"condition": 1, "dino_patches": 2, "features": 2, "bnoise": 2, "mdenoise": 2}
TEXT_STAGES = ("pooled_text", "text_embed")


class Events:
    """Counts JAX compile-pipeline events per function name while active."""

    def __init__(self):
        self.counts = collections.Counter()
        self.active = False
        monitoring.register_event_duration_secs_listener(self._on)

    def _on(self, event, duration, **kw):
        if self.active and event in (TRACE, COMPILE):
            self.counts[(event, kw.get("fun_name", "?"))] += 1

    def close(self):
        monitoring.unregister_event_duration_listener(self._on)


def _delta(after, before):
    return {k: after[k] - before.get(k, 0) for k in after}


@pytest.fixture(scope="module")
def fused():
    (p1, l1), (p2, l2) = example_images(random=True)
    im1, im2 = load_image(p1, SIZE), load_image(p2, SIZE)
    pipe = VMDiff.demo(random=True, num_steps=3, size=SIZE, eaa_cfg=EAA)
    ev = Events()
    try:
        ev.active = True
        before = pipe.compile_counts()
        first = pipe.fuse(im1, im2, l1, l2, seed=0)
        counts_first = _delta(pipe.compile_counts(), before)
        events_first = collections.Counter(ev.counts)
        ev.counts.clear()
        before = pipe.compile_counts()
        second = pipe.fuse(im2, im1, "teapot", "cactus", seed=5)
        counts_second = _delta(pipe.compile_counts(), before)
        events_second = collections.Counter(ev.counts)
        # three pairs at once: buckets up to 6 (P = 3 pairs x 2 candidates)
        rng = np.random.default_rng(0)
        imgs = [rng.integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8) for _ in range(4)]
        done = {}
        before = pipe.compile_counts()
        stats = pipe.run_pairs(range(4), lambda p: FusionInput.pair(imgs[p], imgs[(p + 1) % 4], "cat", "owl", jax.random.key(p), p),
                               done.__setitem__, pairs_per_call=3)
        counts_multi = _delta(pipe.compile_counts(), before)
    finally:
        ev.close()
    return dict(first=first, second=second, counts_first=counts_first, counts_second=counts_second,
                events_first=events_first, events_second=events_second, stats=stats, counts_multi=counts_multi,
                done=done)


def test_search_ran_several_rounds(fused):
    r = fused["first"]
    rounds = {t["round"] for t in r.trajectory}
    assert rounds == {1, 2, 3}
    assert {t["stage"] for t in r.trajectory} == {"alpha", "beta"}
    assert r.rounds >= 15  # sequential BNoise / MDeNoise requests (5 or more a round)
    assert len(fused["second"].trajectory) > 0 and not np.array_equal(fused["first"].image, fused["second"].image)


def test_one_executable_per_bucket(fused):
    counts = fused["counts_first"]
    assert {k: counts[k] for k in EXPECTED} == EXPECTED
    assert all(counts[k] in (0, 1) for k in TEXT_STAGES), counts


def test_second_fuse_compiles_nothing(fused):
    assert all(v == 0 for v in fused["counts_second"].values()), fused["counts_second"]
    assert sum(fused["events_second"].values()) == 0, fused["events_second"]  # no trace, no compile at all


def test_monitoring_traces_match_trace_counts(fused):
    """Each stage was traced exactly once per executable during the first fuse."""
    traced = collections.Counter()
    for (event, name), n in fused["events_first"].items():
        if event == TRACE:
            traced[name] += n
    for name, n in EXPECTED.items():
        assert traced[name] == n, (name, traced)
    for name in TEXT_STAGES:
        assert traced[name] == fused["counts_first"][name], (name, traced)


def test_multi_pair_run_compiles_once_per_bucket(fused):
    """Four pairs, three at a time, many rounds: one new executable per bucket size never seen
    before (1 and 2 were compiled by the fuses), none per round."""
    stats, counts = fused["stats"], fused["counts_multi"]
    assert sorted(stats.completed) == [0, 1, 2, 3] and not stats.failed
    assert stats.sequential_calls > 20
    new = len(stats.buckets_used - {1, 2})
    assert new >= 1 and stats.buckets_used <= set(scheduler.bucket_sizes(3 * 2))
    assert counts["bnoise"] <= new and counts["mdenoise"] == new, (counts, stats.buckets_used)
    assert counts["condition"] == counts["pooled_text"] == counts["text_embed"] == 0
    assert len(fused["done"]) == 4

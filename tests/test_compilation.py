"""One compilation per input shape, none across search rounds or across fusions.

A demo fuse running all K = 3 outer rounds (alpha stage + beta stage each, the random demo
weights never pass the acceptance threshold) leaves one executable in each jitted function
of the pipeline per shape it saw, and a second fuse with other labels and another seed adds
none. Counted twice: `VMDiff.compile_counts()` (the jit caches) and JAX's own monitoring
events (jaxpr traces and backend compilations).
"""

import collections

import numpy as np
import pytest
from jax import monitoring
from jax._src import dispatch

from vmdiff_jax import search
from vmdiff_jax.demo import example_images
from vmdiff_jax.images import load_image
from vmdiff_jax.pipeline import VMDiff

EAA = search.EAAConfig(alpha_tol=0.05, beta_tol=1.5, max_rounds=3)
TRACE, COMPILE = dispatch.JAXPR_TRACE_EVENT, dispatch.BACKEND_COMPILE_EVENT

# batch=1: candidates go one at a time, the reference pair two at a time; the located
# object's crop (dino_patches) and the features then see n = 2 (the pair) and n = 1.
EXPECTED = {"blend": 1, "mix": 1, "features": 2, "dino_patches": 2, "condition": 1, "pooled": 1, "text_embed": 1}


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


@pytest.fixture(scope="module")
def fused():
    (p1, l1), (p2, l2) = example_images()
    im1, im2 = load_image(p1, 64), load_image(p2, 64)
    pipe = VMDiff.demo(num_steps=4, size=64, eaa_cfg=EAA)
    ev = Events()
    try:
        ev.active = True
        first = pipe.fuse(im1, im2, l1, l2, seed=0)
        counts_first = pipe.compile_counts()
        events_first = collections.Counter(ev.counts)
        ev.counts.clear()
        second = pipe.fuse(im2, im1, "teapot", "cactus", seed=5)
        counts_second = pipe.compile_counts()
        events_second = collections.Counter(ev.counts)
    finally:
        ev.close()
    return dict(first=first, second=second, counts_first=counts_first, counts_second=counts_second,
                events_first=events_first, events_second=events_second)


def test_search_ran_several_rounds(fused):
    r = fused["first"]
    rounds = {t["round"] for t in r.trajectory}
    assert rounds == {1, 2, 3}
    assert {t["stage"] for t in r.trajectory} == {"alpha", "beta"}
    assert r.rounds >= 15  # sequential blend / mix calls (3 outer rounds, alpha + beta stages)
    assert len(fused["second"].trajectory) > 0 and not np.array_equal(fused["first"].image, fused["second"].image)


def test_one_executable_per_shape(fused):
    assert fused["counts_first"] == EXPECTED


def test_second_fuse_compiles_nothing(fused):
    assert fused["counts_second"] == EXPECTED
    assert sum(fused["events_second"].values()) == 0, fused["events_second"]  # no trace, no compile at all


def test_monitoring_traces_match_jit_caches(fused):
    """Each pipeline function was traced exactly once per executable during the first fuse."""
    traced = collections.Counter()
    for (event, name), n in fused["events_first"].items():
        if event == TRACE:
            traced[name] += n
    for name, n in EXPECTED.items():
        assert traced[name] == n, (name, traced)

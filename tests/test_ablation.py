"""The paper's Table 2 rows as EAAConfig(ablation=...): which stages each runs and what it costs,
in the one-pair driver and in the scheduler (continuous batching), and from the command."""

import numpy as np
import pytest

from vmdiff_jax.engine import scheduler
from vmdiff_jax.method.hsp import HSPConfig
from vmdiff_jax.method.search import ABLATIONS, EAAConfig, eaa
from helpers import FakeProblem

COSTS = HSPConfig()  # 22 calls a BNoise candidate, 20 an MDeNoise one


def _run(ablation, **kw):
    prob = FakeProblem(peaks=(2.0, 2.1, 2.2), a_star=(0.45, 0.52, 0.58), gain=0.2, **kw)
    return prob, eaa(prob, EAAConfig(ablation=ablation), costs=COSTS)


def test_baseline1_is_one_mdenoise_of_the_plain_noise_at_one_half():
    prob, r = _run("baseline1")
    assert (prob.blend_rows, prob.mix_rows, prob.noise_rounds) == (0, 1, [1])
    assert r.calls == COSTS.mdenoise_calls == 20 and r.rounds == 1
    assert [(e["stage"], e["alpha"], e["beta1"], e["beta2"]) for e in r.trajectory] == [("fixed", 0.5, 1.0, 1.0)]


def test_baseline2_adds_one_bnoise():
    prob, r = _run("baseline2")
    assert (prob.blend_rows, prob.mix_rows) == (1, 1)
    assert r.calls == COSTS.bnoise_calls + COSTS.mdenoise_calls == 42 and r.alpha == 0.5


def test_alpha_row_searches_alpha_in_every_round_and_never_beta():
    prob, r = _run("alpha")
    stages = {e["stage"] for e in r.trajectory}
    assert stages == {"alpha"} and {e["round"] for e in r.trajectory} == {1, 2, 3}  # never accepted: K rounds
    assert prob.blend_rows == 3 and r.calls == 3 * 22 + 20 * prob.mix_rows
    assert abs(r.alpha - 0.58) < 0.01  # the best round's peak


def test_full_row_adds_the_beta_stage():
    prob, r = _run("full")
    assert {e["stage"] for e in r.trajectory} == {"alpha", "beta"}
    assert r.calls > _run("alpha")[1].calls and r.score >= _run("alpha")[1].score


def test_rows_order_their_cost():
    calls = [_run(a)[1].calls for a in ABLATIONS]
    assert calls == sorted(calls) and len(set(calls)) == 4


def test_unknown_row_refused():
    with pytest.raises(ValueError, match="ablation must be one of"):
        EAAConfig(ablation="beta")


class _Backend:
    def __init__(self):
        self.problems, self.done, self.noise_calls = {}, {}, 0

    def start(self, pair):
        self.problems[pair] = FakeProblem(peaks=(2.0,) * 3, a_star=(0.5 + 0.01 * pair,) * 3)

    def noise(self, pair, k):
        self.noise_calls += 1
        return self.problems[pair].noise(k)

    def bnoise(self, items, slots):
        return [self.problems[it.pair].blend(self.problems[it.pair].noise(it.round), np.asarray(it.beta)[None])[0]
                for it in items]

    def mdenoise(self, items, slots):
        from vmdiff_jax.method.search import Evaluation

        return Evaluation.concat([self.problems[it.pair].mix([it.eps_b], np.array([it.alpha])) for it in items])

    def finish(self, pair, result):
        self.done[pair] = result


@pytest.mark.parametrize("ablation", ABLATIONS)
def test_scheduler_runs_each_row_as_the_one_pair_driver(ablation):
    cfg = EAAConfig(ablation=ablation)
    b = _Backend()
    stats = scheduler.run(range(5), b, cfg, pairs_per_call=3, costs=COSTS)
    assert sorted(stats.completed) == list(range(5))
    for p, r in b.done.items():
        one = eaa(FakeProblem(peaks=(2.0,) * 3, a_star=(0.5 + 0.01 * p,) * 3), cfg, costs=COSTS)
        assert (r.alpha, tuple(r.beta), r.calls) == (one.alpha, tuple(one.beta), one.calls)
    assert (b.noise_calls > 0) == (ablation == "baseline1")
    if ablation == "baseline1":
        assert stats.bnoise_batches == 0 and stats.mdenoise_batches == 2  # 5 pairs, 3 a call

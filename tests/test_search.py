import dataclasses
import math

import numpy as np
import pytest

from helpers import FakeProblem
from vmdiff_jax.method import score
from vmdiff_jax.method.search import (
    BETA_GRID,
    INV_PHI,
    EAAConfig,
    Evaluation,
    eaa,
    golden_section,
    golden_section_grid,
)



CFG = EAAConfig()


def _check_common(res, fake, cfg=CFG):
    """Invariants of every run: counts, trajectory, best ever kept, sub-scores consistent."""
    assert res.calls == fake.image_model_calls()
    assert len(res.trajectory) == fake.mix_rows  # one entry per evaluated candidate
    calls = [e["calls_so_far"] for e in res.trajectory]
    assert calls == sorted(calls) and calls[-1] == res.calls
    best = max(res.trajectory, key=lambda e: e["S"])
    assert res.score == best["S"]
    assert res.alpha == best["alpha"] and tuple(res.beta) == (best["beta1"], best["beta2"])
    assert res.payload == dict(k=best["round"], alpha=best["alpha"], beta=(best["beta1"], best["beta2"]))
    sub = res.subscores
    assert sub["S"] == pytest.approx(float(score.similarity_score(sub["d1"], sub["d2"], sub["n1"], sub["n2"])), abs=1e-5)
    assert res.score == pytest.approx(fake.target(res.alpha, *res.beta, best["round"]), abs=1e-5)
    assert res.accepted == (res.score > cfg.threshold)
    assert res.wall_time >= 0


# ---------------------------------------------------------------- scalar searches


def test_golden_section_count_with_reuse_is_11():
    n_min = next(n for n in range(2, 50) if 0.2 * INV_PHI ** (n - 1) <= 0.002)
    assert n_min == 11
    for t in (0.4, 0.4321, 0.5, 0.5871, 0.6):
        r = golden_section(lambda x: -((x - t) ** 2), 0.4, 0.6, 0.002, 15)
        assert r.evaluations == 11 and r.rounds == 10
        assert abs(r.x - t) <= 0.002
        assert len(r.trajectory) == 11
        assert [rnd for _, _, rnd in r.trajectory] == [1, 1] + list(range(2, 11))


def test_golden_section_authors_no_reuse_is_20():
    widths = [0.2 * INV_PHI**i for i in range(1, 16)]
    iters = next(i for i, w in enumerate(widths, 1) if w <= 0.002)
    assert iters == 10
    sizes = []

    def f(x):
        sizes.append(len(x))
        return -np.abs(x - 0.4567)

    r = golden_section(f, 0.4, 0.6, 0.002, 15, reuse=False)
    assert r.evaluations == 20 and r.rounds == 10 and sizes == [2] * 10
    assert abs(r.x - 0.4567) <= 0.002
    # the discarded information: each iteration re-generates an interior point of the previous one
    xs = [x for x, _, _ in r.trajectory]
    assert len(set(np.round(xs, 12))) < 20


def test_golden_section_returns_best_ever_not_midpoint():
    # maximum at the edge: the final bracket midpoint is never the returned point
    r = golden_section(lambda x: x, 0.4, 0.6, 0.002, 15)
    xs = [x for x, _, _ in r.trajectory]
    assert r.x == max(xs) and r.score == max(s for _, s, _ in r.trajectory)
    assert 0.6 - r.x <= 0.002
    # a noisy spike evaluated early is kept even though the bracket moves away from it
    first = {}

    def spiky(x):
        out = -((x - 0.45) ** 2)
        if not first:
            first["x"] = x[0]
            out = out.copy()
            out[0] = 10.0
        return out

    r = golden_section(spiky, 0.4, 0.6, 0.002, 15)
    assert r.x == first["x"] and r.score == 10.0


def test_golden_section_max_iter():
    r = golden_section(lambda x: -x, 0.4, 0.6, 1e-9, 5)
    assert r.rounds == 5 and r.evaluations == 6


@pytest.mark.parametrize("n", [2, 3, 4, 6])
def test_nsection_finds_max_with_fewer_rounds(n):
    golden = golden_section(lambda x: -((x - 0.5432) ** 2), 0.4, 0.6, 0.002, 15)
    for t in (0.4, 0.4321, 0.5, 0.5432, 0.6):
        sizes = []

        def f(x):
            sizes.append(len(x))
            return -((x - t) ** 2)

        r = golden_section(f, 0.4, 0.6, 0.002, 15, batch=n)
        assert abs(r.x - t) <= 0.002
        assert r.rounds == len(sizes) and r.evaluations == sum(sizes) and max(sizes) <= n
        assert sizes[0] == n
        xs = [x for x, _, _ in r.trajectory]
        assert len(set(np.round(xs, 12))) == len(xs)  # nothing recomputed
        if n >= 3:
            assert r.rounds < golden.rounds


def _grid_problems():
    g = np.asarray(BETA_GRID)
    for p in range(len(g)):
        yield p, (lambda v, p=p: -((np.asarray(v) - g[p]) ** 2))
        yield p, (lambda v, p=p: np.where(np.asarray(v) < g[p], np.asarray(v) - g[p], -3.0 * (np.asarray(v) - g[p])))


@pytest.mark.parametrize("kw", [dict(), dict(batch=2), dict(batch=3), dict(batch=4)])
def test_grid_search_never_evaluates_a_point_twice_and_finds_max(kw):
    g = np.asarray(BETA_GRID)
    assert len(g) == 16 and g[0] == 0.5 and g[-1] == 3.5
    for tol in (2.5, 0.5):
        for p, f in _grid_problems():
            r = golden_section_grid(f, g, tol, 15, **kw)
            idx = [int(np.argmin(np.abs(g - x))) for x, _, _ in r.trajectory]
            assert len(set(idx)) == len(idx), (p, idx)
            assert r.rounds == len({rnd for _, _, rnd in r.trajectory})  # no empty objective call
            index = int(np.argmin(np.abs(g - r.x)))
            assert g[index] == r.x and r.score == max(s for _, s, _ in r.trajectory)
            assert abs(index - p) <= (tol if tol >= 1 else 0)
            if not kw and tol == 2.5:
                assert r.evaluations <= 5  # 15 * 0.618^(n-1) <= 2.5 -> n = 5


# ---------------------------------------------------------------- EAA


def test_paper_alpha_suffices():
    fake = FakeProblem(peaks=(2.5,), a_star=(0.5234,))
    res = eaa(fake, CFG, "paper")
    _check_common(res, fake)
    assert res.calls == 22 + 11 * 20 == 242 and res.calls <= 250
    assert res.rounds == 1 + 10
    assert abs(res.alpha - 0.5234) <= CFG.alpha_tol
    assert res.accepted and fake.noise_rounds == [1]
    assert {e["stage"] for e in res.trajectory} == {"alpha"}
    assert tuple(res.beta) == (1.0, 1.0)


def test_paper_beta_stage():
    fake = FakeProblem(peaks=(2.3,), a_star=(0.47,), weak=1, b_star=2.1, gain=0.2)
    res = eaa(fake, CFG, "paper")
    _check_common(res, fake)
    beta = [e for e in res.trajectory if e["stage"] == "beta"]
    assert 1 <= len(beta) <= 5
    assert res.calls == 242 + len(beta) * 42 and res.calls <= 470
    assert all(e["beta1"] == 1.0 and e["alpha"] == beta[0]["alpha"] for e in beta)  # stronger keeps 1, alpha* fixed
    b2 = [e["beta2"] for e in beta]
    assert len(set(b2)) == len(b2)  # no grid point twice
    assert all(b > CFG.base_beta for b in b2) and set(b2) <= set(CFG.raise_grid())  # beta is only raised
    assert res.accepted and fake.noise_rounds == [1]
    assert abs(res.beta[1] - 2.1) <= CFG.beta_tol and abs(res.alpha - 0.47) <= CFG.alpha_tol


def test_authors_counts_422_and_with_beta_stage():
    fake = FakeProblem(peaks=(2.5,))
    res = eaa(fake, CFG, "authors")
    _check_common(res, fake)
    assert res.calls == 422 and res.rounds == 1 + 10 and fake.mix_batches == [2] * 10
    assert abs(res.alpha - 0.5234) <= CFG.alpha_tol

    fake = FakeProblem(peaks=(2.3,), a_star=(0.47,), weak=1, b_star=2.1, gain=0.2)
    res = eaa(fake, CFG, "authors")
    _check_common(res, fake)
    beta = [e for e in res.trajectory if e["stage"] == "beta"]
    iters = len(beta) // 2
    assert len(beta) == 2 * iters and 3 <= iters <= 6
    assert res.calls == 422 + iters * (2 * 22 + 2 * 20) and res.calls in (674, 758, 842, 926)
    assert res.rounds == 1 + 10 + 2 * iters
    assert all(e["beta1"] == 0.5 for e in beta)  # stronger fixed at 0.5
    assert all(0.5 <= e["beta2"] < 3.5 for e in beta)  # 3.5 is never a candidate
    assert fake.noise_rounds == [1]  # no eps resampling


def test_authors_never_resample_even_when_not_accepted():
    fake = FakeProblem(peaks=(2.0, 2.9, 2.9), a_star=(0.5, 0.5, 0.5), gain=0.1)
    res = eaa(fake, CFG, "authors")
    _check_common(res, fake)
    assert fake.noise_rounds == [1] and not res.accepted
    assert res.calls > 422 and (res.calls - 422) % 84 == 0


def test_weaker_object_rule_per_schedule():
    # d2 > d1 but c1 > c2: paper (d + n) says object 2 is weaker, authors (d + 3.13 c) say object 1
    fake_kw = dict(peaks=(2.2,), a_star=(0.5,), weak=1, e_d=-0.032, e_n=0.01 / 0.30)
    fake = FakeProblem(**fake_kw)
    res = eaa(fake, dataclasses.replace(CFG, max_rounds=1), "paper")
    beta = [e for e in res.trajectory if e["stage"] == "beta"]
    assert beta and all(e["beta1"] == 1.0 for e in beta) and len({e["beta2"] for e in beta}) == len(beta)
    fake = FakeProblem(**fake_kw)
    res = eaa(fake, CFG, "authors")
    beta = [e for e in res.trajectory if e["stage"] == "beta"]
    assert beta and all(e["beta2"] == 0.5 for e in beta) and len({e["beta1"] for e in beta}) >= 5


def test_best_ever_is_kept_when_the_beta_stage_is_worse():
    # any beta of the weaker object away from 1 lowers S: the beta stage only finds worse candidates
    fake = FakeProblem(peaks=(2.3,), a_star=(0.55,))
    fake.target = lambda a, b1, b2, k: 2.3 - 40.0 * (a - 0.55) ** 2 - 0.3 * (b2 - 1.0) ** 2
    cfg = dataclasses.replace(CFG, max_rounds=1)
    res = eaa(fake, cfg, "paper")
    _check_common(res, fake, cfg)
    assert any(e["stage"] == "beta" for e in res.trajectory)
    best = max(res.trajectory, key=lambda e: e["S"])
    assert best["stage"] == "alpha" and tuple(res.beta) == (1.0, 1.0)
    assert res.payload["beta"] == (1.0, 1.0) and not res.accepted


def test_resampling_runs_K_rounds_and_keeps_the_best_round():
    fake = FakeProblem(peaks=(2.1, 2.35, 2.2), a_star=(0.45, 0.55, 0.5), gain=0.0)
    res = eaa(fake, CFG, "paper")
    _check_common(res, fake)
    assert fake.noise_rounds == [1, 2, 3] and not res.accepted
    assert {e["round"] for e in res.trajectory} == {1, 2, 3}
    assert res.payload["k"] == 2 and abs(res.alpha - 0.55) <= CFG.alpha_tol
    per_round = [[e for e in res.trajectory if e["round"] == k] for k in (1, 2, 3)]
    assert all({e["stage"] for e in r} == {"alpha", "beta"} for r in per_round)
    n_beta = sum(e["stage"] == "beta" for e in res.trajectory)
    assert res.calls == 3 * 242 + 42 * n_beta


def test_resampling_stops_early_when_threshold_met():
    fake = FakeProblem(peaks=(2.2, 2.5, 2.9), a_star=(0.45, 0.52, 0.5), gain=0.1)  # round 1 beta gets 2.3 < 2.4
    res = eaa(fake, CFG, "paper")
    _check_common(res, fake)
    assert fake.noise_rounds == [1, 2] and res.accepted
    assert res.payload["k"] == 2 and res.score > 2.4
    assert [e["stage"] for e in res.trajectory if e["round"] == 2] == ["alpha"] * 11


@pytest.mark.parametrize("n", [2, 4])
def test_eaa_nsection_batch(n):
    ref = FakeProblem(peaks=(2.3,), a_star=(0.47,), gain=0.2)
    r1 = eaa(ref, CFG, "paper")
    fake = FakeProblem(peaks=(2.3,), a_star=(0.47,), gain=0.2)
    cfg = dataclasses.replace(CFG, batch=n)
    res = eaa(fake, cfg, "paper")
    _check_common(res, fake, cfg)
    assert max(fake.mix_batches) == n
    assert abs(res.alpha - 0.47) <= CFG.alpha_tol and res.accepted
    assert res.rounds < r1.rounds
    b2 = [e["beta2"] for e in res.trajectory if e["stage"] == "beta"]
    assert len(set(b2)) == len(b2)


def test_config_and_errors():
    assert CFG.beta_tol_index() == pytest.approx(2.5)
    assert len(CFG.beta_grid) == 16 and CFG.beta_grid[8] == 2.1
    tiny = EAAConfig.tiny()
    fake = FakeProblem(peaks=(2.3,), gain=0.2)
    res = eaa(fake, tiny, "paper")
    _check_common(res, fake, tiny)
    assert res.calls < 242
    with pytest.raises(ValueError):
        eaa(fake, CFG, "other")
    with pytest.raises(ValueError):
        dataclasses.replace(CFG, beta_grid=(0.5, 1.0, 2.0)).beta_tol_index()

    class Bad(FakeProblem):
        def mix(self, eps_b, alphas):
            ev = super().mix(eps_b, alphas)
            return Evaluation.from_subscores(score.Subscores(*(np.asarray(a)[:1] for a in (ev.d1, ev.d2, ev.c1, ev.c2, ev.n1, ev.n2, ev.S))))

    with pytest.raises(ValueError):
        eaa(Bad(), CFG, "paper")
    assert math.isclose(INV_PHI, 0.6180339887, rel_tol=1e-9)

"""K-object fusion's pure parts: SCat of K sets, the spherical mean, the K-object score, and the
simplex search (on analytic fakes: what it finds, how many calls, order invariance)."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vmdiff_jax.engine import scheduler
from vmdiff_jax.method import mixing, score, search, simplex
from vmdiff_jax.method.hsp import HSPConfig
from vmdiff_jax.method.requests import BNoiseRequest, Evaluation, MDeNoiseRequest, NoiseRequest


def _tokens(k, n_tok=6, dim=48, seed=0):
    """K token sets that share a common direction (like Redux tokens of similar objects)."""
    keys = jax.random.split(jax.random.key(seed), k + 1)
    common = jax.random.normal(keys[0], (n_tok, dim))
    return jnp.stack([common + 0.9 * jax.random.normal(keys[i + 1], (n_tok, dim)) * (1 + 0.3 * i) for i in range(k)])


# ------------------------------------------------------------------ mixing


@pytest.mark.parametrize("method", mixing.METHODS)
def test_two_sets_mix_exactly_as_slerp(method):
    cs = _tokens(2)
    for a in (0.0, 0.3, 0.5, 0.61):
        ours = mixing.spherical_mean(cs, jnp.array([1 - a, a]), method=method)
        np.testing.assert_array_equal(np.asarray(ours), np.asarray(mixing.slerp(cs[0], cs[1], a, method=method)))


def test_the_karcher_iteration_of_two_sets_is_the_slerp_point():
    """The closed form used for K = 2 is what the K-way iteration converges to (one step, exactly)."""
    cs = np.asarray(_tokens(2), np.float64)
    u = cs / np.linalg.norm(cs, axis=-1, keepdims=True)
    for a in (0.2, 0.5, 0.7):
        m = np.asarray(mixing._karcher(jnp.asarray(u, jnp.float32), jnp.array([1 - a, a]).reshape(2, 1, 1), 12))
        norm = (1 - a) * np.linalg.norm(cs[0], axis=-1, keepdims=True) + a * np.linalg.norm(cs[1], axis=-1, keepdims=True)
        np.testing.assert_allclose(m * norm, np.asarray(mixing.slerp(cs[0], cs[1], a)), atol=3e-6)


@pytest.mark.parametrize("k", [3, 4])
def test_spherical_mean_vertices_norms_and_fixed_point(k):
    cs = _tokens(k, seed=k)
    for i in range(k):  # a vertex gives that input
        np.testing.assert_allclose(np.asarray(mixing.spherical_mean(cs, jnp.eye(k)[i])), np.asarray(cs[i]), rtol=1e-5, atol=1e-5)
    w = jnp.asarray(np.random.default_rng(k).dirichlet(np.ones(k)), jnp.float32)
    out = np.asarray(mixing.spherical_mean(cs, w), np.float64)
    x = np.asarray(cs, np.float64)
    norms = np.linalg.norm(x, axis=-1)
    np.testing.assert_allclose(np.linalg.norm(out, axis=-1), np.tensordot(np.asarray(w), norms, 1), rtol=1e-5)
    # the Karcher condition: the weighted log maps at the mean sum to zero
    m = out / np.linalg.norm(out, axis=-1, keepdims=True)
    u = x / norms[..., None]
    cos = np.clip(np.sum(u * m, -1, keepdims=True), -1, 1)
    perp = u - cos * m
    logs = np.arccos(cos) * perp / np.linalg.norm(perp, axis=-1, keepdims=True)
    grad = np.tensordot(np.asarray(w, np.float64), logs, 1)
    assert np.abs(grad).max() < 2e-5
    lerp = mixing.spherical_mean(cs, w, method="lerp")
    np.testing.assert_allclose(np.asarray(lerp), np.tensordot(np.asarray(w), x, 1), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="two token sets"):
        mixing.spherical_mean(cs, w, method="authors")
    with pytest.raises(ValueError, match="one per token set"):
        mixing.spherical_mean(cs, w[:-1])


@pytest.mark.parametrize("k", [3, 4])
def test_mixing_is_symmetric_in_the_objects(k):
    cs = _tokens(k, seed=10 + k)
    w = jnp.asarray(np.random.default_rng(1).dirichlet(np.ones(k)), jnp.float32)
    b = jnp.asarray(np.random.default_rng(2).uniform(0.5, 3.5, k), jnp.float32)
    base = mixing.spherical_mean(cs, w)
    blocks = np.asarray(mixing.scat_many(cs, b)).reshape(k, cs.shape[1], -1)
    for perm in itertools.permutations(range(k)):
        p = jnp.array(perm)
        np.testing.assert_allclose(np.asarray(mixing.spherical_mean(cs[p], w[p])), np.asarray(base), atol=2e-6)
        np.testing.assert_array_equal(np.asarray(mixing.scat_many(cs[p], b[p])).reshape(blocks.shape), blocks[list(perm)])


def test_scat_of_two_sets_is_scat():
    cs = _tokens(2)
    np.testing.assert_array_equal(np.asarray(mixing.scat_many(cs, jnp.array([1.0, 1.7]))),
                                  np.asarray(mixing.scat(cs[0], cs[1], jnp.float32(1.0), jnp.float32(1.7))))
    with pytest.raises(ValueError, match="one weight per token set"):
        mixing.scat_many(cs, jnp.ones(3))


# ------------------------------------------------------------------ score


def test_k_object_score():
    rng = np.random.default_rng(0)
    d, c = rng.uniform(0, 1, (5, 2)), rng.uniform(0.1, 0.45, (5, 2))
    pair = score.subscores(d[:, 0], d[:, 1], c[:, 0], c[:, 1])
    many = score.many_subscores(d, c)
    np.testing.assert_array_equal(np.asarray(many.S), np.asarray(pair.S))  # K = 2: the paper's S itself
    d3, c3 = rng.uniform(0, 1, (5, 3)), rng.uniform(0.1, 0.45, (5, 3))
    n3 = (c3 - 0.15) / 0.30
    by_hand = d3.sum(1) + n3.sum(1) - np.abs(d3 - d3.mean(1, keepdims=True)).sum(1) - np.abs(n3 - n3.mean(1, keepdims=True)).sum(1)
    got = score.many_subscores(d3, c3)
    np.testing.assert_allclose(np.asarray(got.S), by_hand, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(score.many_b_sim(d3, n3)), d3.sum(1) + n3.sum(1) - by_hand, rtol=1e-4)
    for perm in itertools.permutations(range(3)):
        np.testing.assert_allclose(np.asarray(score.many_subscores(d3[:, perm], c3[:, perm]).S), np.asarray(got.S), atol=1e-6)
    even = np.full((1, 4), 0.7)
    assert float(score.many_score(even, even)[0]) == pytest.approx(5.6, abs=1e-6)  # no spread, no penalty
    assert int(score.weakest_object(np.array([0.5, 0.2, 0.2]), np.array([0.5, 0.4, 0.4]))) == 1  # first of a tie


# ------------------------------------------------------------------ the simplex search


class Group:
    """An analytic K-object fusion: object i's fidelity falls off from the target weights w*, and
    raising object `weak`'s beta helps it (up to b_star); the constant `peak` sets the level."""

    def __init__(self, target, weak, peak=0.8, b_star=2.3):
        self.target, self.weak, self.peak, self.b_star = np.asarray(target, float), weak, peak, b_star

    def permuted(self, perm):
        inv = list(np.argsort(perm))
        return Group(self.target[list(perm)], inv[self.weak], self.peak, self.b_star)

    def evaluate(self, weights, betas):
        weights, betas = np.atleast_2d(weights), np.atleast_2d(betas)
        d = self.peak - 2.0 * np.abs(weights - self.target)
        d[:, self.weak] -= 0.3 - 0.1 * (1 - ((betas[:, self.weak] - self.b_star) / 2.0) ** 2)
        c = 0.15 + 0.3 * d
        return Evaluation.from_subscores(score.many_subscores(d, c))


def drive(gen, group):
    """Answer a search's requests from `group`; -> (EAAResult, requests as (kind, n))."""
    answer, asked = None, []
    try:
        while True:
            req = gen.send(answer)
            if isinstance(req, NoiseRequest):
                asked.append(("noise", 1))
                answer = ("eps", req.round, np.ones(len(group.target)))
            elif isinstance(req, BNoiseRequest):
                asked.append(("bnoise", len(req.betas)))
                answer = [("eps_b", req.round, b) for b in req.betas]
            else:
                assert isinstance(req, MDeNoiseRequest)
                asked.append(("mdenoise", len(req.weights)))
                answer = group.evaluate(req.weights, np.stack([e[2] for e in req.eps_b]))
    except StopIteration as stop:
        return stop.value, asked


COSTS = HSPConfig()


@pytest.mark.parametrize("k", [3, 4])
def test_weights_stage_finds_the_target_in_few_calls(k):
    target = np.full(k, 1 / k) + np.array([0.05, -0.03, -0.02, 0.0])[:k]  # inside the box, on the simplex
    cfg = search.EAAConfig(threshold=-99.0)  # accepted after the weights stage: no beta stage
    res, asked = drive(simplex.steps(cfg, objects=k, costs=COSTS), Group(target, weak=0))
    assert np.abs(res.weights - target).max() < 2 * cfg.alpha_tol
    assert res.accepted and res.weights.sum() == pytest.approx(1.0)
    assert asked[0] == ("bnoise", 1) and asked[1] == ("mdenoise", 1 + k * (k - 1))  # the centre and its moves, batched
    assert all(n <= k * (k - 1) for kind, n in asked[2:])
    n_md = sum(n for kind, n in asked if kind == "mdenoise")
    assert res.calls == COSTS.bnoise_calls + n_md * COSTS.mdenoise_calls
    assert len(res.trajectory) == n_md and n_md <= 1 + k * (k - 1) * cfg.alpha_max_iter
    assert {t["stage"] for t in res.trajectory} == {"weights"}
    for t in res.trajectory:  # every candidate in the box, on the simplex
        w = np.array([t[f"w{i}"] for i in range(1, k + 1)])
        assert w.sum() == pytest.approx(1.0) and np.abs(w - 1 / k).max() <= simplex.radius(cfg) + 1e-12


def test_beta_stage_raises_the_weakest_object_only():
    k, g = 3, Group([0.3, 0.36, 0.34], weak=2)
    cfg = search.EAAConfig(threshold=99.0, max_rounds=1)
    res, asked = drive(simplex.steps(cfg, objects=k, costs=COSTS), g)
    beta = [t for t in res.trajectory if t["stage"] == "beta"]
    assert beta and not res.accepted
    assert all(t["beta1"] == t["beta2"] == cfg.base_beta and t["beta3"] > cfg.base_beta for t in beta)
    assert res.beta[2] == pytest.approx(2.3, abs=0.21) and res.beta[0] == res.beta[1] == 1.0
    stage_w = max((t for t in res.trajectory if t["stage"] == "weights"), key=lambda t: t["S"])
    assert all(t["w1"] == stage_w["w1"] and t["w3"] == stage_w["w3"] for t in beta)  # at the stage's best weights
    assert res.calls == sum(n * (COSTS.bnoise_calls if kind == "bnoise" else COSTS.mdenoise_calls) for kind, n in asked)


@pytest.mark.parametrize("k", [3, 4])
def test_the_search_is_order_invariant(k):
    rng = np.random.default_rng(k)
    g = Group(rng.dirichlet(np.full(k, 30.0)), weak=1)
    cfg = search.EAAConfig(threshold=99.0, max_rounds=2)
    ref, ref_asked = drive(simplex.steps(cfg, objects=k, costs=COSTS), g)
    perms = list(itertools.permutations(range(k)))
    for perm in perms[1:] if k == 3 else perms[1::5]:
        res, asked = drive(simplex.steps(cfg, objects=k, costs=COSTS), g.permuted(perm))
        np.testing.assert_allclose(res.weights, ref.weights[list(perm)], atol=1e-12)
        np.testing.assert_allclose(res.beta, ref.beta[list(perm)], atol=1e-12)
        assert res.score == pytest.approx(ref.score, abs=1e-6) and res.calls == ref.calls and asked == ref_asked


def test_two_objects_run_the_pair_search():
    class Pair:
        def evaluate(self, weights, betas):
            a = np.asarray(weights)[:, 1]
            d = np.stack([0.9 - (a - 0.53) ** 2, 0.8 + 0.1 * (betas[:, 1] - 1) - (a - 0.53) ** 2], 1)
            return Evaluation.from_subscores(score.many_subscores(d, 0.15 + 0.3 * d))

    g = Pair()
    g.target = np.zeros(2)
    for cfg in (search.EAAConfig(), search.EAAConfig.tiny()):
        a, _ = drive(simplex.steps(cfg, objects=2, costs=COSTS), g)
        b, _ = drive(search.steps(cfg, costs=COSTS), g)
        assert a.trajectory == b.trajectory and a.alpha == b.alpha and np.array_equal(a.weights, [1 - a.alpha, a.alpha])


def test_k_object_rows_and_refusals():
    g = Group([1 / 3] * 3, weak=0)
    for row, first in (("baseline1", ("noise", 1)), ("baseline2", ("bnoise", 1))):
        res, asked = drive(simplex.steps(search.EAAConfig(ablation=row), objects=3, costs=COSTS), g)
        assert asked[0] == first and asked[-1] == ("mdenoise", 1) and len(res.trajectory) == 1
        assert res.weights == pytest.approx([1 / 3] * 3)
        assert res.calls == COSTS.mdenoise_calls + (COSTS.bnoise_calls if row == "baseline2" else 0)
    res, _ = drive(simplex.steps(search.EAAConfig(ablation="alpha", threshold=99.0), objects=3, costs=COSTS), g)
    assert {t["stage"] for t in res.trajectory} == {"weights"} and {t["round"] for t in res.trajectory} == {1, 2, 3}
    with pytest.raises(ValueError, match="'paper' schedule"):
        next(simplex.steps(search.EAAConfig(), "authors", COSTS, objects=3))
    with pytest.raises(ValueError, match="at least two"):
        next(simplex.steps(search.EAAConfig(), objects=1))


def test_acceptance_threshold_scales_with_k():
    assert simplex.threshold(2.4, 2) == 2.4 and simplex.threshold(2.4, 3) == pytest.approx(3.6)
    g = Group([1 / 3] * 3, weak=0, peak=0.95)  # S = 4.57 at the centre, the best there is at beta 1
    low, _ = drive(simplex.steps(search.EAAConfig(threshold=2.8), objects=3, costs=COSTS), g)  # 4.2 for K = 3
    assert low.accepted and {t["stage"] for t in low.trajectory} == {"weights"}
    assert low.score == pytest.approx(4.57, abs=0.01)
    high, _ = drive(simplex.steps(search.EAAConfig(threshold=3.2, max_rounds=1), objects=3, costs=COSTS), g)  # 4.8
    assert not high.accepted and "beta" in {t["stage"] for t in high.trajectory}


class Backend:
    """scheduler.Backend over analytic groups of several K; records each call's K and size."""

    def __init__(self, groups):
        self.groups, self.calls, self.done = groups, [], {}

    def start(self, pair):
        return len(self.groups[pair].target)

    def noise(self, pair, k):
        return None

    def bnoise(self, items, slots):
        self.calls.append(("bnoise", {len(it.beta) for it in items}, len(items), slots))
        return [(it.pair, np.asarray(it.beta)) for it in items]

    def mdenoise(self, items, slots):
        self.calls.append(("mdenoise", {len(it.weights) for it in items}, len(items), slots))
        for it in items:
            assert it.eps_b[0] == it.pair  # each row answered from its own group
        return Evaluation.concat([self.groups[it.pair].evaluate(it.weights, it.eps_b[1]) for it in items])

    def finish(self, pair, result):
        self.done[pair] = result


def test_scheduler_packs_groups_of_each_k_into_shared_calls():
    rng = np.random.default_rng(5)
    groups = {p: Group(rng.dirichlet(np.full(k, 40.0)), weak=p % k) for p, k in enumerate([2, 3, 3, 4, 2, 3])}
    cfg = search.EAAConfig(threshold=99.0, max_rounds=1)
    shared = Backend(groups)
    stats = scheduler.run(list(groups), shared, cfg, pairs_per_call=6, costs=COSTS, objects=4)
    assert sorted(stats.completed) == list(groups)
    assert all(len(ks) == 1 for _, ks, _, _ in shared.calls)  # one K a call
    assert max(n for *_, n, _ in shared.calls) > 5  # several groups share calls
    for p, g in groups.items():  # a group's result does not depend on who shared its calls
        alone, _ = drive(simplex.steps(cfg, objects=len(g.target), costs=COSTS), g)
        assert shared.done[p].trajectory == alone.trajectory

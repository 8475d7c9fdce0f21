import numpy as np
import pytest

from vmdiff_jax.method import score


def test_cosine_matches_numpy_and_is_scale_invariant():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(5, 768)), rng.normal(size=(5, 768))
    ref = np.sum(a * b, -1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))
    got = np.asarray(score.cosine(a, b))
    assert got.shape == (5,)
    np.testing.assert_allclose(got, ref, atol=1e-6)
    np.testing.assert_allclose(np.asarray(score.cosine(3.0 * a, 0.1 * b)), ref, atol=1e-6)
    np.testing.assert_allclose(np.asarray(score.cosine(a, a)), 1.0, atol=1e-6)
    assert np.all(np.isfinite(np.asarray(score.cosine(np.zeros((2, 4)), np.ones((2, 4))))))


def test_normalize_clip():
    np.testing.assert_allclose(np.asarray(score.normalize_clip(np.array([0.15, 0.45, 0.30]))), [0.0, 1.0, 0.5], atol=1e-6)


def test_similarity_score_and_b_sim():
    d1, d2, n1, n2 = 0.8, 0.6, 0.9, 0.5
    s = float(score.similarity_score(d1, d2, n1, n2))
    assert s == pytest.approx(0.8 + 0.6 + 0.9 + 0.5 - 0.2 - 0.4, abs=1e-6)
    assert s == pytest.approx(2 * 0.6 + 2 * 0.5, abs=1e-6)  # = 2 min(d) + 2 min(n)
    assert float(score.b_sim(d1, d2, n1, n2)) == pytest.approx(0.6, abs=1e-6)
    rng = np.random.default_rng(1)
    d1, d2, n1, n2 = rng.uniform(0, 1, size=(4, 7))
    s = np.asarray(score.similarity_score(d1, d2, n1, n2))
    assert s.shape == (7,)
    np.testing.assert_allclose(s, 2 * np.minimum(d1, d2) + 2 * np.minimum(n1, n2), atol=1e-6)
    np.testing.assert_allclose(s, d1 + d2 + n1 + n2 - np.asarray(score.b_sim(d1, d2, n1, n2)), atol=1e-6)


def test_weaker_object_paper_vs_authors_can_disagree():
    # object 1 - object 2: delta d = -0.032, delta c = +0.01
    # paper: -0.032 + 0.01 / 0.30 = +0.0013 -> object 2 (index 1) is weaker
    # authors: -0.032 + 3.13 * 0.01 = -0.0007 -> object 1 (index 0) is weaker
    d = np.array([0.500, 0.532])
    c = np.array([0.310, 0.300])
    n = np.asarray(score.normalize_clip(c))
    assert int(score.weaker_object(d, n)) == 1
    assert int(score.weaker_object_authors(d, c)) == 0
    # batched
    d_b = np.stack([d, d[::-1]])
    n_b = np.stack([n, n[::-1]])
    np.testing.assert_array_equal(np.asarray(score.weaker_object(d_b, n_b)), [1, 0])


def test_subscores_from_features():
    rng = np.random.default_rng(2)
    n, e = 3, 64
    fused_dino, ref_dino = rng.normal(size=(n, 768)), rng.normal(size=(2, 768))
    fused_clip, text = rng.normal(size=(n, e)), rng.normal(size=(2, e))
    ref_dino[0] = fused_dino[1] * 2.0  # candidate 1 is identical to input 1 (up to scale)

    def cos(a, b):
        return a @ b.T / np.outer(np.linalg.norm(a, axis=-1), np.linalg.norm(b, axis=-1))

    d, c = cos(fused_dino, ref_dino), cos(fused_clip, text)
    nn = (c - 0.15) / 0.30
    sub = score.subscores_from_features(fused_dino, ref_dino, fused_clip, text)
    assert isinstance(sub, score.Subscores)
    for got, ref in zip(sub, [d[:, 0], d[:, 1], c[:, 0], c[:, 1], nn[:, 0], nn[:, 1]]):
        assert np.asarray(got).shape == (n,)
        np.testing.assert_allclose(np.asarray(got), ref, atol=1e-5)
    s_ref = d.sum(1) + nn.sum(1) - np.abs(d[:, 0] - d[:, 1]) - np.abs(nn[:, 0] - nn[:, 1])
    np.testing.assert_allclose(np.asarray(sub.S), s_ref, atol=1e-5)
    assert float(sub.d1[1]) == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(ValueError):
        score.subscores_from_features(fused_dino, ref_dino[:1], fused_clip, text)

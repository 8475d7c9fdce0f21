"""The similarity score S that the EAA search maximises, and the balance figure B_sim.

Everything is pure jax.numpy, batched over candidates: the sub-scores of n candidate
images are arrays of shape (n,) (any leading shape works elementwise).

  d_i = cos(DINO(crop(I_i)), DINO(crop(I)))                visual similarity to input i
  c_i = cos(CLIP_image(crop(I)), CLIP_text("A  {T_i} ."))  raw text similarity to label i
  n_i = (c_i - 0.15) / 0.30                                normalised text similarity
  S   = d1 + d2 + n1 + n2 - |d1 - d2| - |n1 - n2|          accepted when S > 2.4

For N objects (`many_subscores`): S = sum_i d_i + sum_i n_i - sum_i |d_i - mean d| -
sum_i |n_i - mean n|, the fidelity of every object less its spread (the mean absolute
deviation, times N); for N = 2, sum_i |d_i - mean d| = |d1 - d2|, so it is the paper's S
(computed by `similarity_score` itself there). Symmetric in the objects.
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp

CLIP_SHIFT = 0.15
CLIP_SCALE = 0.30
AUTHORS_CLIP_WEIGHT = 3.13  # weaker object in the authors' code: smaller d_i + 3.13 * c_i


class Subscores(NamedTuple):
    """Per-candidate sub-scores, each an array of shape (n,): raw cosines d, c; normalised n; score S."""

    d1: jnp.ndarray
    d2: jnp.ndarray
    c1: jnp.ndarray
    c2: jnp.ndarray
    n1: jnp.ndarray
    n2: jnp.ndarray
    S: jnp.ndarray


def cosine(a, b, eps: float = 1e-8):
    """Cosine similarity over the last axis (broadcasting the leading ones): (..., D), (..., D) -> (...)."""
    a = jnp.asarray(a, jnp.float32)
    b = jnp.asarray(b, jnp.float32)
    a = a / jnp.maximum(jnp.linalg.norm(a, axis=-1, keepdims=True), eps)
    b = b / jnp.maximum(jnp.linalg.norm(b, axis=-1, keepdims=True), eps)
    return jnp.sum(a * b, axis=-1)


def normalize_clip(c):
    """Raw CLIP image-text cosine -> n = (c - 0.15) / 0.30 (about [0, 1] for typical cosines)."""
    return (jnp.asarray(c, jnp.float32) - CLIP_SHIFT) / CLIP_SCALE


def similarity_score(d1, d2, n1, n2):
    """S = d1 + d2 + n1 + n2 - |d1 - d2| - |n1 - n2|, elementwise (= 2 min(d1, d2) + 2 min(n1, n2))."""
    d1, d2, n1, n2 = (jnp.asarray(x, jnp.float32) for x in (d1, d2, n1, n2))
    return d1 + d2 + n1 + n2 - jnp.abs(d1 - d2) - jnp.abs(n1 - n2)


def b_sim(d1, d2, n1, n2):
    """Balance figure B_sim = |d1 - d2| + |n1 - n2|, elementwise (lower is more balanced).

    The paper reports B_sim without a formula; we read it as the two penalty terms of S,
    i.e. S = (d1 + d2 + n1 + n2) - B_sim.
    """
    d1, d2, n1, n2 = (jnp.asarray(x, jnp.float32) for x in (d1, d2, n1, n2))
    return jnp.abs(d1 - d2) + jnp.abs(n1 - n2)


def weaker_object(d, n):
    """Index (0 or 1) of the weaker object per the paper: the smaller d_i + n_i.

    d, n: (..., 2) -> int (...). A tie picks object 0 (the paper raises beta_2 only when S_1 > S_2).
    """
    return weakest_object(d, n)


def weaker_object_authors(d, c_raw):
    """Index (0 or 1) of the weaker object per the authors' code: the smaller d_i + 3.13 * c_i (raw cosine).

    d, c_raw: (..., 2) -> int (...). A tie picks object 0.
    """
    s = jnp.asarray(d, jnp.float32) + AUTHORS_CLIP_WEIGHT * jnp.asarray(c_raw, jnp.float32)
    return jnp.where(s[..., 1] < s[..., 0], 1, 0)


def subscores(d1, d2, c1, c2) -> Subscores:
    """All sub-scores from the raw cosines (arrays of one shape)."""
    d1, d2, c1, c2 = (jnp.asarray(x, jnp.float32) for x in (d1, d2, c1, c2))
    n1, n2 = normalize_clip(c1), normalize_clip(c2)
    return Subscores(d1, d2, c1, c2, n1, n2, similarity_score(d1, d2, n1, n2))


def subscores_from_features(fused_dino, ref_dino, fused_clip_img, clip_text) -> Subscores:
    """Sub-scores of n candidates from encoder features (normalised here; any scale accepted).

    fused_dino (n, Dd): DINOv2 features of the cropped candidates; ref_dino (2, Dd), or
    (n, 2, Dd) with each candidate's own pair: of the two cropped inputs; fused_clip_img
    (n, E): CLIP image embeddings of the cropped candidates; clip_text (2, E) or (n, 2, E):
    CLIP text embeddings of the two labels. -> Subscores of (n,) arrays.
    """
    ref_dino, clip_text = jnp.asarray(ref_dino, jnp.float32), jnp.asarray(clip_text, jnp.float32)
    if ref_dino.shape[-2] != 2 or clip_text.shape[-2] != 2:
        raise ValueError(f"need 2 reference rows, got ref_dino {ref_dino.shape}, clip_text {clip_text.shape}")
    return pair_subscores(many_subscores_from_features(fused_dino, ref_dino, fused_clip_img, clip_text))


class ManySubscores(NamedTuple):
    """Sub-scores of n candidates fusing N objects: d, c, nrm (n, N) (visual cosine, raw and
    normalised text similarity to each input), S (n,)."""

    d: jnp.ndarray
    c: jnp.ndarray
    nrm: jnp.ndarray
    S: jnp.ndarray


def spread(x):
    """sum_i |x_i - mean x| over the last axis: (..., N) -> (...) (|x1 - x2| for N = 2)."""
    x = jnp.asarray(x, jnp.float32)
    if x.shape[-1] == 2:
        return jnp.abs(x[..., 0] - x[..., 1])
    return jnp.sum(jnp.abs(x - jnp.mean(x, axis=-1, keepdims=True)), axis=-1)


def many_score(d, n):
    """S of N objects (module doc) from d, n (..., N) -> (...); N = 2: `similarity_score`."""
    d, n = jnp.asarray(d, jnp.float32), jnp.asarray(n, jnp.float32)
    if d.shape[-1] == 2:
        return similarity_score(d[..., 0], d[..., 1], n[..., 0], n[..., 1])
    return jnp.sum(d, axis=-1) + jnp.sum(n, axis=-1) - spread(d) - spread(n)


def many_b_sim(d, n):
    """B_sim of N objects: spread(d) + spread(n), (..., N) -> (...) (`b_sim` for N = 2)."""
    return spread(d) + spread(n)


def weakest_object(d, n):
    """Index of the weakest object, the smallest d_i + n_i (..., N) -> int (...); ties pick the
    first (for N = 2 the same as `weaker_object`)."""
    return jnp.argmin(jnp.asarray(d, jnp.float32) + jnp.asarray(n, jnp.float32), axis=-1)


def many_subscores(d, c) -> ManySubscores:
    """All sub-scores of N objects from the raw cosines d, c (n, N)."""
    d, c = jnp.asarray(d, jnp.float32), jnp.asarray(c, jnp.float32)
    nrm = normalize_clip(c)
    return ManySubscores(d, c, nrm, many_score(d, nrm))


def many_subscores_from_features(fused_dino, ref_dino, fused_clip_img, clip_text) -> ManySubscores:
    """Sub-scores of n candidates fusing N objects, each against its own references:
    fused_dino (n, Dd), ref_dino (n, N, Dd) or (N, Dd), fused_clip_img (n, E), clip_text (n, N, E) or (N, E)."""
    d = cosine(jnp.asarray(fused_dino, jnp.float32)[:, None, :], ref_dino)
    c = cosine(jnp.asarray(fused_clip_img, jnp.float32)[:, None, :], clip_text)
    return many_subscores(d, c)


def pair_subscores(sub: ManySubscores) -> Subscores:
    """Two objects' ManySubscores as a pair's Subscores (d1, d2, c1, c2, n1, n2, S)."""
    d, c, nrm, s = sub
    return Subscores(d[:, 0], d[:, 1], c[:, 0], c[:, 1], nrm[:, 0], nrm[:, 1], s)

"""The similarity score S that the EAA search maximises, and the balance figure B_sim.

Everything is pure jax.numpy, batched over candidates: the sub-scores of n candidate
images are arrays of shape (n,) (any leading shape works elementwise).

  d_i = cos(DINO(crop(I_i)), DINO(crop(I)))                visual similarity to input i
  c_i = cos(CLIP_image(crop(I)), CLIP_text("A  {T_i} ."))  raw text similarity to label i
  n_i = (c_i - 0.15) / 0.30                                normalised text similarity
  S   = d1 + d2 + n1 + n2 - |d1 - d2| - |n1 - n2|          accepted when S > 2.4
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
    s = jnp.asarray(d, jnp.float32) + jnp.asarray(n, jnp.float32)
    return jnp.where(s[..., 1] < s[..., 0], 1, 0)


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
    fused_dino = jnp.asarray(fused_dino, jnp.float32)
    ref_dino = jnp.asarray(ref_dino, jnp.float32)
    fused_clip_img = jnp.asarray(fused_clip_img, jnp.float32)
    clip_text = jnp.asarray(clip_text, jnp.float32)
    if ref_dino.shape[-2] != 2 or clip_text.shape[-2] != 2:
        raise ValueError(f"need 2 reference rows, got ref_dino {ref_dino.shape}, clip_text {clip_text.shape}")
    d = cosine(fused_dino[:, None, :], ref_dino)  # (n, 2)
    c = cosine(fused_clip_img[:, None, :], clip_text)  # (n, 2)
    return subscores(d[:, 0], d[:, 1], c[:, 0], c[:, 1])

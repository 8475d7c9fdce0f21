"""Object locators for the similarity score's crops: image -> box (x0, y0, x1, y1) or None.

Built in: `WholeImage` (the fallback: the whole frame) and `DinoForegroundLocator`, which
needs no extra weights: it separates DINOv2 patch tokens that differ from the image's
border (background) tokens and boxes them. The optional Grounding DINO locator lives in
`vmdiff_jax.engine.grounding` (the one module allowed to import torch).
"""

from __future__ import annotations

from typing import Callable, Optional, Protocol

import jax
import jax.numpy as jnp
import numpy as np

Box = tuple[float, float, float, float]


class Locator(Protocol):
    def __call__(self, image: np.ndarray) -> Optional[Box]:
        """image uint8 (H, W, 3) -> the most prominent object's box in pixels, or None."""


class WholeImage:
    """The whole frame (the fallback when no object is found)."""

    def __call__(self, image: np.ndarray) -> Box:
        h, w = image.shape[:2]
        return (0.0, 0.0, float(w), float(h))


def foreground_box(tokens, grid: int, min_frac: float = 0.02, max_frac: float = 0.9):
    """Box of the foreground patches of one image, in grid units, and whether it is valid.

    tokens (grid*grid, D) patch features. Background prototype = mean of the border
    patches; a patch is foreground when its cosine to the prototype is below the midpoint
    of the observed range. Returns (box (4,) float32 as x0, y0, x1, y1 in [0, grid], valid).
    """
    t = tokens.astype(jnp.float32)
    t = t / (jnp.linalg.norm(t, axis=-1, keepdims=True) + 1e-6)
    g = t.reshape(grid, grid, -1)
    border = jnp.concatenate([g[0], g[-1], g[1:-1, 0], g[1:-1, -1]], axis=0)
    proto = border.mean(0)
    proto = proto / (jnp.linalg.norm(proto) + 1e-6)
    dist = 1.0 - t @ proto
    thr = 0.5 * (dist.min() + dist.max())
    fg = (dist > thr).reshape(grid, grid)
    rows, cols = fg.any(1), fg.any(0)
    idx = jnp.arange(grid)
    y0 = jnp.min(jnp.where(rows, idx, grid))
    y1 = jnp.max(jnp.where(rows, idx, -1)) + 1
    x0 = jnp.min(jnp.where(cols, idx, grid))
    x1 = jnp.max(jnp.where(cols, idx, -1)) + 1
    frac = fg.mean()
    valid = (frac >= min_frac) & (frac <= max_frac) & (dist.max() - dist.min() > 1e-3)
    return jnp.stack([x0, y0, x1, y1]).astype(jnp.float32), valid


class DinoForegroundLocator:
    """Locator from DINOv2 patch tokens: `tokens_fn(images (B, H, W, 3), uint8 or float in [0, 1]) -> (B, P, D)` patch tokens
    of a square grid (the CLS token already dropped). Falls back to None when the foreground
    is implausibly small or large."""

    def __init__(self, tokens_fn: Callable[[np.ndarray], jax.Array]):
        self.tokens_fn = tokens_fn

    def batch(self, images: np.ndarray) -> list[Optional[Box]]:
        tokens = self.tokens_fn(images)
        grid = int(round(tokens.shape[1] ** 0.5))
        boxes, valid = jax.vmap(lambda t: foreground_box(t, grid))(tokens)
        boxes, valid = np.asarray(boxes), np.asarray(valid)
        out: list[Optional[Box]] = []
        for img, b, ok in zip(images, boxes, valid):
            h, w = img.shape[:2]
            out.append((b[0] * w / grid, b[1] * h / grid, b[2] * w / grid, b[3] * h / grid) if ok else None)
        return out

    def __call__(self, image: np.ndarray) -> Optional[Box]:
        return self.batch(image[None])[0]


def boxes_or_whole(locator, images: np.ndarray) -> np.ndarray:
    """(B, 4) float32 boxes for a batch of uint8 images: the locator's, else the whole image."""
    found = locator.batch(images) if hasattr(locator, "batch") else [locator(im) for im in images]
    whole = WholeImage()
    return np.asarray([b if b is not None else whole(im) for b, im in zip(found, images)], np.float32)

"""Pure numerical pieces shared by the models: attention (more follows in the FLUX port)."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def attention(q, k, v, *, mask=None, is_causal: bool = False, implementation: str | None = None):
    """Scaled dot-product attention. q (B, Lq, H, D), k/v (B, Lk, H, D) -> (B, Lq, H*D).

    mask: optional boolean, broadcastable to (B, H, Lq, Lk), True = attend.
    implementation: None (XLA) or 'cudnn' on GPUs (jax.nn.dot_product_attention).
    """
    b, lq, h, d = q.shape
    out = jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=is_causal, implementation=implementation)
    return out.reshape(b, lq, h * d)

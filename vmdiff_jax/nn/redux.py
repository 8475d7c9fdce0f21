"""FLUX.1 Redux image condition: SigLIP so400m tokens -> 4096-d T5-space tokens.

ReduxProjector is diffusers' ReduxImageEncoder (pipelines/flux/modeling_flux.py) and BFL's
`flux1-redux-dev.safetensors` (same parameter names): redux_up Linear(1152, 3 * 4096) ->
SiLU -> redux_down Linear(3 * 4096, 4096), applied token by token to SigLIP's
last_hidden_state (the attention-pool head is not used).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from vmdiff_jax.nn.vit import VisionTransformer


class ReduxProjector(nnx.Module):
    """(B, N, redux_dim) -> (B, N, txt_in_features)."""

    def __init__(self, redux_dim: int = 1152, txt_in_features: int = 4096, *, dtype=jnp.float32,
                 param_dtype=jnp.float32, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.redux_up = nnx.Linear(redux_dim, 3 * txt_in_features, **kw)
        self.redux_down = nnx.Linear(3 * txt_in_features, txt_in_features, **kw)

    def __call__(self, x):
        return self.redux_down(jax.nn.silu(self.redux_up(x)))


class ReduxEncoder(nnx.Module):
    """SigLIP vision tower + Redux projector. images (B, 384, 384, 3), SigLIP-normalized
    (mean 0.5, std 0.5) -> image condition tokens (B, 729, 4096)."""

    def __init__(self, siglip: VisionTransformer, redux: ReduxProjector):
        self.siglip = siglip
        self.redux = redux

    def __call__(self, images):
        hidden, _ = self.siglip(images, pooled=False)
        return self.redux(hidden)

    def encode_images(self, images):
        """Raw images (B, H, W, 3), uint8 or float in [0, 1] -> (B, 729, 4096): SiglipImageProcessor's
        preprocessing (bicubic 384 x 384, rescale, normalize 0.5 / 0.5; Pillow-exact on uint8), then the model."""
        from vmdiff_jax.nn.image_ops import siglip_preprocess

        return self(siglip_preprocess(images))

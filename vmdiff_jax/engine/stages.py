"""The jitted stages of VMDiff: pure functions of (graphdef, state, arrays), batched.

Each stage compiles once per input shape (and static config): the candidate axis of
`bnoise` / `mdenoise` / `features` is padded by the caller to a small fixed set of sizes, so
search rounds never recompile. Candidate rows are independent (each brings its own eps, the
token sets cs of its K objects and y), so one call can carry the candidates of several pairs
(of one K: the shapes depend on it); the caller places that axis
over the mesh's 'data' axis and the states replicated or FSDP over 'fsdp' (sharding.py).

`TRACES` counts how often each stage was traced (= compiled, one executable per trace) in
this process; `traces()` reads it.
"""

from __future__ import annotations

import collections
import functools

import jax
import jax.numpy as jnp
from flax import nnx

from vmdiff_jax.method import hsp
from vmdiff_jax.nn import image_ops
from vmdiff_jax.nn.vit import dino_features, dinov2

TRACES: collections.Counter = collections.Counter()
STAGES: list[str] = []  # the stage names, in definition order


def _stage(fn=None, *, static_argnames=()):
    """jax.jit a stage, counting its traces in TRACES[name]."""
    if fn is None:
        return functools.partial(_stage, static_argnames=static_argnames)

    @functools.wraps(fn)
    def traced(*args, **kw):
        TRACES[fn.__name__] += 1
        return fn(*args, **kw)

    jitted = jax.jit(traced, static_argnames=static_argnames)
    STAGES.append(fn.__name__)
    return jitted


@_stage
def condition(redux_def, redux_state, images_u8):
    """Redux tokens (B, L, D) of uint8 images (B, H, W, 3) (SigLIP preprocessing inside)."""
    return nnx.merge(redux_def, redux_state).encode_images(images_u8)


@_stage
def pooled_text(text_def, text_state, ids):
    """CLIP-L pooled vectors (B, Dy) of token ids (B, 77): FLUX's y."""
    return nnx.merge(text_def, text_state)(ids)[1]


@_stage
def text_embed(bigg_def, bigg_state, ids):
    """Unit CLIP bigG text embeddings (B, E) of token ids (B, 77)."""
    return nnx.merge(bigg_def, bigg_state).encode_text(ids, normalize=True)


@_stage
def dino_patches(dino_def, dino_state, images_u8):
    """DINOv2 patch tokens (B, P, Dd) (class token dropped) of uint8 images (B, H, W, 3): the locator's input."""
    return dinov2(nnx.merge(dino_def, dino_state), image_ops.dino_preprocess(images_u8))[:, 1:]


@_stage
def features(dino_def, dino_state, bigg_def, bigg_state, images, wy, wx):
    """DINOv2 features (B, Dd) and unit CLIP bigG image embeddings (B, E) of a crop of each float
    image (B, H, W, 3) in [0, 1] (the decode before rounding, as the authors score it): both see
    the crop resized to 224 x 224 by the float box matrices wy (B, 224, H), wx (B, 224, W)
    (bicubic with antialias, as torchvision's Resize on a float tensor: no 8-bit rounding, no
    clipping); only the normalization differs."""
    crop = image_ops.apply_resize(images.astype(jnp.float32), wy, wx)
    d_in = image_ops.normalize(crop, image_ops.IMAGENET_MEAN, image_ops.IMAGENET_STD)
    c_in = image_ops.normalize(crop, image_ops.CLIP_MEAN, image_ops.CLIP_STD)
    bigg = nnx.merge(bigg_def, bigg_state)
    return dino_features(nnx.merge(dino_def, dino_state), d_in), bigg.encode_image(c_in, normalize=True)


@_stage(static_argnames=("cfg",))
def bnoise(flux_def, flux_state, eps, cs, betas, y, *, cfg: hsp.HSPConfig):
    """BNoise of n candidate rows: eps (n, N, C), cs (n, K, L, D) (K objects' Redux tokens), betas
    (n, K), y (n, Dy) -> eps_b (n, N, C) float32."""
    return hsp.bnoise_candidates(nnx.merge(flux_def, flux_state), cfg, eps, cs, betas, y)


@_stage(static_argnames=("cfg",))
def mdenoise(flux_def, flux_state, vae_def, vae_state, eps_b, cs, weights, y, *, cfg: hsp.HSPConfig):
    """MDeNoise + decode of n candidate rows: eps_b (n, N, C), cs (n, K, L, D), weights (n, K) on the
    simplex (pairs: (1 - alpha, alpha)), y (n, Dy) -> float32 images (n, H, W, 3) in [0, 1] (the decode clipped; what the score sees; saved as
    image_ops.to_uint8 of it, round(255 x), as diffusers' numpy_to_pil)."""
    return hsp.mdenoise_candidates(nnx.merge(flux_def, flux_state), nnx.merge(vae_def, vae_state), cfg,
                                   eps_b, cs, weights, y)


def traces() -> dict[str, int]:
    """Traces (= compilations) of each stage in this process so far."""
    return {name: TRACES[name] for name in STAGES}

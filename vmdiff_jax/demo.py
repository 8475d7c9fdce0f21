"""Tiny random-weight versions of all seven networks, wired exactly as the real ones
(dimensions chained: SigLIP width -> Redux -> FLUX context, CLIP-L width -> FLUX pooled,
VAE 8x downsampling with 16 latent channels -> 64 packed channels), and the example photos.

RANDOM WEIGHTS: demo outputs are not meaningful images; they exercise every code path
(loading aside) in seconds on a CPU.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax.numpy as jnp
from flax import nnx

from vmdiff_jax import vit
from vmdiff_jax.clip_tokenizer import demo_tokenizer
from vmdiff_jax.flux import Flux, FluxConfig
from vmdiff_jax.redux import ReduxEncoder, ReduxProjector
from vmdiff_jax.vae import AutoEncoder, VAEConfig

EXAMPLES = Path(__file__).resolve().parent / "assets" / "examples"


def example_images() -> list[tuple[Path, str]]:
    """The two example photos kept in the package, with their labels."""
    return [(EXAMPLES / "apple.png", "apple"), (EXAMPLES / "rubber_duck.png", "rubber duck")]


def demo_configs(vocab_size: int) -> dict:
    """Configs of the tiny demo models (real input sizes: 384 SigLIP, 224 DINOv2 / CLIP, 77 tokens)."""
    ctx, text_w = 32, 32
    return dict(
        flux=FluxConfig.tiny(in_channels=64, out_channels=64, vec_in_dim=text_w, context_in_dim=ctx),
        vae=VAEConfig(ch=8, ch_mult=(1, 1, 2, 2), num_res_blocks=1, norm_groups=4, z_channels=16),
        clip_text=dataclasses.replace(vit.tiny_clip_text(), width=text_w, vocab_size=vocab_size, context_length=77),
        siglip=dataclasses.replace(vit.tiny_siglip(), patch_size=14, image_size=384),
        redux_out=ctx,
        dino=dataclasses.replace(vit.tiny_dinov2(), patch_size=14, image_size=112),
        bigg_vision=dataclasses.replace(vit.tiny_bigg_vision(), patch_size=14, image_size=224),
        bigg_text=dataclasses.replace(vit.tiny_bigg_text(), vocab_size=vocab_size, context_length=77),
    )


def demo_models(seed: int = 0, dtype=jnp.float32):
    """pipeline.Models of tiny random-weight networks (deterministic for a seed)."""
    from vmdiff_jax.pipeline import Models

    tok = demo_tokenizer()
    c = demo_configs(tok.vocab_size)
    rngs = nnx.Rngs(seed)
    kw = dict(dtype=dtype, param_dtype=dtype, rngs=rngs)
    siglip = vit.VisionTransformer(c["siglip"], **kw)
    return Models(
        flux=Flux(c["flux"], **kw),
        vae=AutoEncoder(c["vae"], **kw),
        clip_text=vit.TextTransformer(c["clip_text"], **kw),
        tokenizer=tok,
        redux=ReduxEncoder(siglip, ReduxProjector(c["siglip"].width, c["redux_out"], **kw)),
        dino=vit.VisionTransformer(c["dino"], **kw),
        bigg=vit.CLIP(c["bigg_vision"], c["bigg_text"], **kw),
        bigg_tokenizer=tok,
    )

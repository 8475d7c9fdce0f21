"""The built-in models: the demo world's trained tiny networks (`world_weights`, loaded from
vmdiff_jax/assets/world through the ordinary loaders), and tiny random-weight versions of all
seven networks (`demo_models`), wired exactly as the real ones (dimensions chained: SigLIP width
-> Redux -> FLUX context, CLIP-L width -> FLUX pooled, VAE 8x downsampling with 16 latent
channels -> 64 packed channels); and the example images of each.

The random models' outputs are not meaningful images: they exercise every code path (loading
aside) in seconds on a CPU, for the numerical tests. The world's models fuse the world's objects.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax.numpy as jnp
import numpy as np
from flax import nnx

from vmdiff_jax.nn import vit
from vmdiff_jax.checkpoints.tokenizer import load_tokenizer
from vmdiff_jax.nn.tokenizer import CLIPTokenizer
from vmdiff_jax.nn.flux import Flux, FluxConfig
from vmdiff_jax.engine.networks import Models
from vmdiff_jax.nn.redux import ReduxEncoder, ReduxProjector
from vmdiff_jax.nn.vae import AutoEncoder, VAEConfig

ASSETS = Path(__file__).resolve().parents[1] / "assets"
EXAMPLES = ASSETS / "examples"
TOKENIZER_FOLDER = ASSETS / "tokenizer"  # the demo's tiny BPE vocabulary (vocab.json + merges.txt)


def example_images(random: bool = False) -> list[tuple[Path, str]]:
    """The demo's example pair with its labels: the world's (red circle, blue square), or with
    random=True the two example photos kept in the package (apple, rubber duck)."""
    if random:
        return [(EXAMPLES / "apple.png", "apple"), (EXAMPLES / "rubber_duck.png", "rubber duck")]
    from vmdiff_jax.world.shipped import WORLD_DIR, example_files

    return example_files(WORLD_DIR)


def world_weights() -> dict[str, Path]:
    """{model name: path} of the demo world's shipped checkpoints (as `find_weights` gives them)."""
    from vmdiff_jax.checkpoints.weights import find_weights
    from vmdiff_jax.world.shipped import WORLD_DIR, available

    if not available(WORLD_DIR):
        raise FileNotFoundError(f"the demo world's weights are not in {WORLD_DIR}: run scripts/train_demo_world.py")
    return find_weights(WORLD_DIR, use_hf_cache=False)


def demo_tokenizer() -> CLIPTokenizer:
    """The tiny built-in tokenizer of the demo models: vocab size 1024 (510 merges), BOS 1022, EOS = pad 1023."""
    return load_tokenizer(TOKENIZER_FOLDER)


def demo_configs(vocab_size: int) -> dict:
    """Configs of the tiny demo models (real input sizes: 384 SigLIP, 224 DINOv2 / CLIP, 77 tokens)."""
    ctx, text_w = 32, 32
    return dict(
        flux=FluxConfig.tiny(in_channels=64, out_channels=64, vec_in_dim=text_w, context_in_dim=ctx),
        vae=VAEConfig(ch=8, ch_mult=(1, 1, 2, 2), num_res_blocks=1, norm_groups=4, z_channels=16),
        clip_l=dataclasses.replace(vit.ViTConfig.tiny_clip_l(), width=text_w, vocab_size=vocab_size, context_length=77),
        siglip=dataclasses.replace(vit.ViTConfig.tiny_siglip(), patch_size=14, image_size=384),
        redux_out=ctx,
        dinov2=dataclasses.replace(vit.ViTConfig.tiny_dinov2(), patch_size=14, image_size=112),
        clip_bigg_vision=dataclasses.replace(vit.ViTConfig.tiny_clip_bigg_vision(), patch_size=14, image_size=224),
        clip_bigg_text=dataclasses.replace(vit.ViTConfig.tiny_clip_bigg_text(), vocab_size=vocab_size, context_length=77),
    )


def random_params(model: nnx.Module, seed: int = 0, dtype=jnp.float32) -> nnx.Module:
    """Fill an abstract (nnx.eval_shape) model with host-side random weights: kernels
    N(0, 1/fan_in), embeddings N(0, 0.02^2), biases N(0, 0.02^2), norm scales 1 + N(0, 0.02^2).
    Deterministic for a seed; no compilation (eager random inits compile one op per shape)."""
    rng = np.random.default_rng(seed)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    new = []
    for path, var in nnx.to_flat_state(params):
        shape = tuple(var.get_value().shape)
        name = str(path[-1])
        if name == "kernel":  # (in, out), stacked (layers, in, out), or a conv's (kh, kw, in, out)
            fan_in = int(np.prod(shape[:-1])) if len(shape) == 4 else shape[-2]
            a = rng.standard_normal(shape) / np.sqrt(fan_in)
        elif name == "scale" or "norm" in ".".join(map(str, path)) and name == "weight":
            a = 1.0 + 0.02 * rng.standard_normal(shape)
        else:
            a = 0.02 * rng.standard_normal(shape)
        new.append((path, var.replace(jnp.asarray(a, dtype))))
    return nnx.merge(graphdef, nnx.from_flat_state(new), rest)


def demo_models(seed: int = 0, dtype=jnp.float32):
    """`Models` of tiny random-weight networks (deterministic for a seed)."""
    tok = demo_tokenizer()
    c = demo_configs(tok.vocab_size)

    def build(fn, k):
        return random_params(nnx.eval_shape(lambda: fn(dict(dtype=dtype, param_dtype=dtype, rngs=nnx.Rngs(0)))), seed * 100 + k, dtype)

    siglip_cfg = c["siglip"]
    return Models(
        flux=build(lambda kw: Flux(c["flux"], **kw), 1),
        vae=build(lambda kw: AutoEncoder(c["vae"], **kw), 2),
        clip_l=build(lambda kw: vit.TextTransformer(c["clip_l"], **kw), 3),
        clip_l_tokenizer=tok,
        redux=build(lambda kw: ReduxEncoder(vit.VisionTransformer(siglip_cfg, **kw),
                                            ReduxProjector(siglip_cfg.width, c["redux_out"], **kw)), 4),
        dinov2=build(lambda kw: vit.VisionTransformer(c["dinov2"], **kw), 5),
        clip_bigg=build(lambda kw: vit.CLIP(c["clip_bigg_vision"], c["clip_bigg_text"], **kw), 6),
        clip_bigg_tokenizer=tok,
    )

"""Accelerator memory of the full VMDiff pipeline at real size, computed without allocating.

Parameters: every network is built abstractly (`nnx.eval_shape`) from its real config in
bf16 (what `VMDiff.from_pretrained` loads on accelerators): FLUX.1 [dev] / Krea [dev]
transformer, FLUX VAE, CLIP-L text encoder, SigLIP so400m + Redux projector, DINOv2-base,
open_clip ViT-bigG-14 (both towers). T5 is not part of VMDiff (Redux tokens replace it).

Activations: the pipeline's own jitted stages (`stages.py`: bnoise, mdenoise, features,
condition, pooled_text, text_embed) are lowered on abstract float32 models and inputs at 512 x 512
(1024 image tokens; BNoise's SCat context is 2 x 729 = 1458 tokens, MDeNoise's slerp 729) and
compiled for the host CPU; XLA's buffer assignment (`memory_analysis().temp_size_in_bytes`)
is the peak of the intermediates. Float32 activations bound the bf16 ones from above (the
CPU backend cannot be asked for bf16 directly: it upcasts bf16 weights into temporaries).
The calls run one after another, so peak = all parameters + the largest call's activations
and non-parameter inputs/outputs. Usage: python benchmarks/memory_fullsize.py [--size 512] [--n 1,4]
"""

from __future__ import annotations

import argparse
import math
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vmdiff_jax import stages, vit
from vmdiff_jax.clip_tokenizer import demo_tokenizer
from vmdiff_jax.flux import Flux, FluxConfig
from vmdiff_jax.hsp import HSPConfig
from vmdiff_jax.models import Models
from vmdiff_jax.pipeline import VMDiff
from vmdiff_jax.redux import ReduxEncoder, ReduxProjector
from vmdiff_jax.vae import AutoEncoder, VAEConfig

GB = 1e9
S = jax.ShapeDtypeStruct


def abstract_models(dtype) -> Models:
    """Models of the real configs, ShapeDtypeStruct parameters in `dtype`."""
    kw = dict(dtype=dtype, param_dtype=dtype)
    tok = demo_tokenizer()  # unused by the jitted functions
    return Models(
        flux=nnx.eval_shape(lambda: Flux(FluxConfig.flux1_dev(), **kw, rngs=nnx.Rngs(0))),
        vae=nnx.eval_shape(lambda: AutoEncoder(VAEConfig.flux(), **kw, rngs=nnx.Rngs(0))),
        clip_text=nnx.eval_shape(lambda: vit.TextTransformer(vit.clip_l_text(), **kw, rngs=nnx.Rngs(0))),
        tokenizer=tok,
        redux=nnx.eval_shape(lambda: ReduxEncoder(vit.VisionTransformer(vit.siglip_so400m_384(), **kw, rngs=nnx.Rngs(0)),
                                                  ReduxProjector(1152, 4096, **kw, rngs=nnx.Rngs(1)))),
        dino=nnx.eval_shape(lambda: vit.VisionTransformer(vit.dinov2_base(), **kw, rngs=nnx.Rngs(0))),
        bigg=nnx.eval_shape(lambda: vit.CLIP(vit.bigg_vision(), vit.bigg_text(), **kw, rngs=nnx.Rngs(0))),
        bigg_tokenizer=tok,
    )


def param_stats(module) -> tuple[int, int]:
    """(parameter count, bytes) of an abstract module."""
    leaves = jax.tree.leaves(nnx.state(module, nnx.Param))
    return sum(math.prod(x.shape) for x in leaves), sum(math.prod(x.shape) * np.dtype(x.dtype).itemsize for x in leaves)


def nbytes(tree) -> int:
    return sum(math.prod(x.shape) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=512, help="working resolution")
    ap.add_argument("--n", default="1,4", help="candidates per bnoise/mdenoise call to analyse (comma-separated)")
    ap.add_argument("--steps", type=int, default=20)
    args = ap.parse_args()
    ns = [int(x) for x in args.n.split(",")]

    t0 = time.perf_counter()
    bf16 = abstract_models(jnp.bfloat16)
    rows = [
        ("FLUX.1 [dev] transformer", bf16.flux),
        ("FLUX VAE (encoder + decoder)", bf16.vae),
        ("  of which the decoder", bf16.vae.decoder),
        ("CLIP-L text encoder", bf16.clip_text),
        ("SigLIP so400m-384 vision", bf16.redux.siglip),
        ("Redux projector", bf16.redux.redux),
        ("DINOv2-base", bf16.dino),
        ("open_clip ViT-bigG-14 image tower", bf16.bigg.visual),
        ("open_clip ViT-bigG-14 text tower", bf16.bigg.text),
    ]
    print(f"VMDiff at {args.size} x {args.size}, {args.steps} steps: parameters in bf16 (nnx.eval_shape of the real configs)")
    print(f"  {'model':38s} {'params':>15s} {'GB (bf16)':>10s}")
    total_p = total_b = 0
    for name, m in rows:
        p, b = param_stats(m)
        if not name.startswith("  "):
            total_p, total_b = total_p + p, total_b + b
        print(f"  {name:38s} {p:15,d} {b / GB:10.3f}")
    print(f"  {'total (all resident)':38s} {total_p:15,d} {total_b / GB:10.3f}")
    print("  (T5-XXL, not used by VMDiff, would add 4.76 B params = 9.5 GB in bf16)")

    # activations: the pipeline's jitted stages on abstract float32 models
    f32 = abstract_models(jnp.float32)
    pipe = VMDiff(f32, HSPConfig(num_steps=args.steps, size=args.size), locator="whole")
    sp = pipe.split
    cfg = pipe.cfg
    n_tok, ch, ctx = pipe.seq_len, pipe.channels, 729
    f = jnp.float32
    c = lambda n: S((n, ctx, 4096), f)  # noqa: E731
    y = lambda n: S((n, 768), f)  # noqa: E731
    img = lambda n: S((n, args.size, args.size, 3), jnp.uint8)  # noqa: E731
    box = lambda n: S((n, 224, args.size), jnp.int32)  # noqa: E731
    calls = [("condition (SigLIP + Redux, 2 images)", stages.condition, (*sp.redux, img(2)), {}),
             ("pooled_text (CLIP-L text, 1 prompt)", stages.pooled_text, (*sp.clip_text, S((1, 77), jnp.int32)), {}),
             ("text_embed (bigG text, 2 labels)", stages.text_embed, (*sp.bigg, S((2, 77), jnp.int32)), {})]
    for n in ns:
        calls += [
            (f"bnoise (BNoise: {2 * cfg.den_stop} FLUX calls, SCat ctx {2 * ctx}), n={n}", stages.bnoise,
             (*sp.flux, S((n, n_tok, ch), f), c(n), c(n), S((n, 2), f), y(n)), {"cfg": cfg}),
            (f"mdenoise (MDeNoise: {cfg.num_steps} FLUX calls + VAE decode), n={n}", stages.mdenoise,
             (*sp.flux, *sp.vae, S((n, n_tok, ch), f), c(n), c(n), S((n,), f), y(n)), {"cfg": cfg}),
            (f"features (DINOv2 + bigG image), n={n}", stages.features, (*sp.dino, *sp.bigg, img(n), box(n), box(n)), {}),
        ]
    print("\nactivations per call (XLA buffer assignment, CPU compile of float32 models: an upper bound for bf16)")
    print(f"  {'call':58s} {'temp GB':>8s} {'io GB':>7s} {'compile s':>9s}")
    peak = {}
    state_ids = {id(part.state) for part in sp.parts().values()}
    for name, fn, a, kw in calls:
        t = time.perf_counter()
        compiled = fn.lower(*a, **kw).compile()
        ma = compiled.memory_analysis()
        io = sum(nbytes(x) for x in a if id(x) not in state_ids) + ma.output_size_in_bytes
        peak[name] = ma.temp_size_in_bytes + io
        print(f"  {name:58s} {ma.temp_size_in_bytes / GB:8.3f} {io / GB:7.3f} {time.perf_counter() - t:9.1f}")
    tokens = n_tok + 2 * ctx
    logits = 24 * tokens**2 * 4
    print(f"  (FLUX attention logits of one call, 24 heads x {tokens}^2 tokens in f32 = {logits / GB:.3f} GB if materialised)")
    for n in ns:
        worst = max((k for k in peak if k.endswith(f"n={n}") or "n=" not in k), key=peak.get)
        total = total_b + peak[worst]
        print(f"\npeak estimate with n={n} candidate(s) per call: parameters {total_b / GB:.2f} GB + largest call "
              f"({worst.split(' (')[0]}) {peak[worst] / GB:.2f} GB = {total / GB:.2f} GB "
              f"-> {'within' if total <= 40 * GB else 'OVER'} the 40 GB goal (no T5)")
    print(f"({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()

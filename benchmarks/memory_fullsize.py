"""Accelerator memory of the full VMDiff pipeline at real size, computed without allocating.

Parameters: every network is built abstractly (`nnx.eval_shape`) from its real config in
bf16 (what `VMDiff.from_pretrained` loads on accelerators): FLUX.1 [dev] / Krea [dev]
transformer, FLUX VAE, CLIP-L text encoder, SigLIP so400m + Redux projector, DINOv2-base,
open_clip ViT-bigG-14 (both towers). T5 is not part of VMDiff (Redux tokens replace it).

Activations: the pipeline's own jitted functions (`stages.py`: blend, mix, features,
condition, pooled, text_embed) are lowered on abstract float32 models and inputs at 512 x 512
(1024 image tokens; BNoise's SCat context is 2 x 729 = 1458 tokens, MDeNoise's slerp 729) and
compiled for the host CPU; XLA's buffer assignment (`memory_analysis().temp_size_in_bytes`)
is the peak of the intermediates. Float32 activations bound the bf16 ones from above (the
CPU backend cannot be asked for bf16 directly: it upcasts bf16 weights into temporaries).
The calls run one after another, so peak = all parameters + the largest call's activations
and non-parameter inputs/outputs.

fp8 (issue 11): the same with FLUX's block Linear kernels stored as float8_e4m3fn + float32
per-channel scales (`Flux(fp8=True)`), everything else bf16. Its calls are compiled with the fp8
kernels dequantized to float32 inside the call, so "temp" also holds the dequantized kernels
XLA keeps alive at once: one or two layers' if it schedules them layer by layer, 47 GB if it
hoisted all of them out of the sampling loop or computed them all first (which XLA does
without `quant.tie`). The optimization barriers that order them are kept through scheduling
here (XLA:CPU otherwise drops them early; the GPU and TPU compilers drop them after scheduling).
Usage: python benchmarks/memory_fullsize.py [--size 512] [--n 1,4] [--flux bf16,fp8]
"""

from __future__ import annotations

import argparse
import math
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vmdiff_jax.engine import stages
from vmdiff_jax.nn import vit
from vmdiff_jax.engine.demo import demo_tokenizer
from vmdiff_jax.nn.flux import Flux, FluxConfig
from vmdiff_jax.method.hsp import HSPConfig
from vmdiff_jax.engine.networks import Models
from vmdiff_jax.engine.pipeline import VMDiff
from vmdiff_jax.nn.redux import ReduxEncoder, ReduxProjector
from vmdiff_jax.nn.vae import AutoEncoder, VAEConfig

GB = 1e9
S = jax.ShapeDtypeStruct


def abstract_models(dtype, fp8: bool = False) -> Models:
    """pipeline.Models of the real configs, ShapeDtypeStruct parameters in `dtype` (FLUX's block
    Linear kernels in float8 with fp8)."""
    kw = dict(dtype=dtype, param_dtype=dtype)
    tok = demo_tokenizer()  # unused by the jitted functions
    return Models(
        flux=nnx.eval_shape(lambda: Flux(FluxConfig.flux1_dev(), **kw, rngs=nnx.Rngs(0), fp8=fp8)),
        vae=nnx.eval_shape(lambda: AutoEncoder(VAEConfig.flux(), **kw, rngs=nnx.Rngs(0))),
        clip_l=nnx.eval_shape(lambda: vit.TextTransformer(vit.ViTConfig.clip_l(), **kw, rngs=nnx.Rngs(0))),
        clip_l_tokenizer=tok,
        redux=nnx.eval_shape(lambda: ReduxEncoder(vit.VisionTransformer(vit.ViTConfig.siglip_so400m(), **kw, rngs=nnx.Rngs(0)),
                                                  ReduxProjector(1152, 4096, **kw, rngs=nnx.Rngs(1)))),
        dinov2=nnx.eval_shape(lambda: vit.VisionTransformer(vit.ViTConfig.dinov2_base(), **kw, rngs=nnx.Rngs(0))),
        clip_bigg=nnx.eval_shape(lambda: vit.CLIP(vit.ViTConfig.clip_bigg_vision(), vit.ViTConfig.clip_bigg_text(), **kw, rngs=nnx.Rngs(0))),
        clip_bigg_tokenizer=tok,
    )


def param_stats(module) -> tuple[int, int]:
    """(parameter count, bytes) of an abstract module."""
    leaves = jax.tree.leaves(nnx.state(module, nnx.Param))
    return sum(math.prod(x.shape) for x in leaves), sum(math.prod(x.shape) * np.dtype(x.dtype).itemsize for x in leaves)


def nbytes(tree) -> int:
    return sum(math.prod(x.shape) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))


ROWS = (
    ("FLUX.1 [dev] transformer", lambda m: m.flux),
    ("FLUX VAE (encoder + decoder)", lambda m: m.vae),
    ("  of which the decoder", lambda m: m.vae.decoder),
    ("CLIP-L text encoder", lambda m: m.clip_l),
    ("SigLIP so400m-384 vision", lambda m: m.redux.siglip),
    ("Redux projector", lambda m: m.redux.redux),
    ("DINOv2-base", lambda m: m.dinov2),
    ("open_clip ViT-bigG-14 image tower", lambda m: m.clip_bigg.visual),
    ("open_clip ViT-bigG-14 text tower", lambda m: m.clip_bigg.text),
)
GOAL = {"bf16": 40 * GB, "fp8": 22 * GB}
# XLA:CPU drops optimization barriers before scheduling; the GPU and TPU compilers keep them
# until after it. Keeping them here schedules the fp8 calls as an accelerator would.
KEEP_BARRIERS = {"xla_disable_hlo_passes": "cse_barrier_expander"}


def activation_peaks(flux: str, args, ns) -> dict[str, float]:
    """{call name: temp + io bytes} of the pipeline's jitted calls on abstract float32 models
    (FLUX block kernels float8 when flux == 'fp8'); prints one line per call."""
    f32 = abstract_models(jnp.float32, fp8=flux == "fp8")
    pipe = VMDiff(f32, HSPConfig(num_steps=args.steps, size=args.size), locator="whole")
    sp = pipe.split
    cfg = pipe.cfg
    n_tok, ch, ctx = pipe.seq_len, pipe.channels, 729
    f = jnp.float32
    c = lambda n: S((n, 2, ctx, 4096), f)  # noqa: E731  (two objects' token sets)
    y = lambda n: S((n, 768), f)  # noqa: E731
    img = lambda n: S((n, args.size, args.size, 3), jnp.uint8)  # noqa: E731
    box = lambda n: S((n, 224, args.size), jnp.int32)  # noqa: E731
    calls = []
    if flux == "bf16":  # the calls without FLUX are the same for both
        calls += [("condition (SigLIP + Redux, 2 images)", stages.condition, (*sp.redux, img(2)), {}),
                  ("pooled_text (CLIP-L text, 1 prompt)", stages.pooled_text, (*sp.clip_l, S((1, 77), jnp.int32)), {}),
                  ("text_embed (bigG text, 2 labels)", stages.text_embed, (*sp.clip_bigg, S((2, 77), jnp.int32)), {})]
    for n in ns:
        calls += [
            (f"bnoise (BNoise: {2 * cfg.den_stop} FLUX calls, SCat ctx {2 * ctx}), n={n}", stages.bnoise,
             (*sp.flux, S((n, n_tok, ch), f), c(n), S((n, 2), f), y(n)), {"cfg": cfg}),
            (f"mdenoise (MDeNoise: {cfg.num_steps} FLUX calls + VAE decode), n={n}", stages.mdenoise,
             (*sp.flux, *sp.vae, S((n, n_tok, ch), f), c(n), S((n, 2), f), y(n)), {"cfg": cfg}),
        ]
        if flux == "bf16":
            calls.append((f"features (DINOv2 + bigG image), n={n}", stages.features,
                          (*sp.dinov2, *sp.clip_bigg, img(n), box(n), box(n)), {}))
    peak = {}
    state_ids = {id(part.state) for part in sp.parts().values()}
    for name, fn, a, kw in calls:
        t = time.perf_counter()
        compiled = fn.lower(*a, **kw).compile(compiler_options=KEEP_BARRIERS if flux == "fp8" else None)
        ma = compiled.memory_analysis()
        io = sum(nbytes(x) for x in a if id(x) not in state_ids) + ma.output_size_in_bytes
        peak[name] = ma.temp_size_in_bytes + io
        print(f"  {flux:4s} {name:58s} {ma.temp_size_in_bytes / GB:8.3f} {io / GB:7.3f} {time.perf_counter() - t:9.1f}")
    return peak


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=512, help="working resolution")
    ap.add_argument("--n", default="1,4", help="candidates per blend/mix call to analyse (comma-separated)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--flux", default="bf16,fp8", help="FLUX weight storage to analyse: bf16, fp8 or both")
    args = ap.parse_args()
    ns = [int(x) for x in args.n.split(",")]
    kinds = args.flux.split(",")

    t0 = time.perf_counter()
    models = {"bf16": abstract_models(jnp.bfloat16), "fp8": abstract_models(jnp.bfloat16, fp8=True)}
    print(f"VMDiff at {args.size} x {args.size}, {args.steps} steps: parameters (nnx.eval_shape of the real configs);")
    print("bf16 = every model in bf16; fp8 = FLUX's block Linear kernels float8_e4m3fn + float32 scales, the rest bf16")
    print(f"  {'model':38s} {'params':>15s} {'GB (bf16)':>10s} {'GB (fp8)':>10s}")
    total_p, total_b = 0, {"bf16": 0, "fp8": 0}
    for name, get in ROWS:
        p, b = param_stats(get(models["bf16"]))
        _, b8 = param_stats(get(models["fp8"]))
        if not name.startswith("  "):
            total_p, total_b = total_p + p, {"bf16": total_b["bf16"] + b, "fp8": total_b["fp8"] + b8}
        print(f"  {name:38s} {p:15,d} {b / GB:10.3f} {b8 / GB:10.3f}")
    print(f"  {'total (all resident)':38s} {total_p:15,d} {total_b['bf16'] / GB:10.3f} {total_b['fp8'] / GB:10.3f}")
    print("  (T5-XXL, not used by VMDiff, would add 4.76 B params = 9.5 GB in bf16)")

    print("\nactivations per call (XLA buffer assignment, CPU compile of float32 models: an upper bound for bf16;")
    print("fp8: float8 FLUX kernels dequantized to float32 inside the call, included in temp)")
    print(f"  {'FLUX':4s} {'call':58s} {'temp GB':>8s} {'io GB':>7s} {'compile s':>9s}")
    peak = {k: activation_peaks(k, args, ns) for k in kinds}
    tokens = HSPConfig(num_steps=args.steps, size=args.size).seq_len + 2 * 729
    logits = 24 * tokens**2 * 4
    print(f"  (FLUX attention logits of one call, 24 heads x {tokens}^2 tokens in f32 = {logits / GB:.3f} GB if materialised)")
    shared = {k: v for k, v in peak.get("bf16", {}).items() if "FLUX" not in k}  # calls without FLUX
    for k in kinds:
        for n in ns:
            pk = {**shared, **peak[k]}
            worst = max((c for c in pk if c.endswith(f"n={n}") or "n=" not in c), key=pk.get)
            total = total_b[k] + pk[worst]
            print(f"\npeak estimate, FLUX {k}, n={n} candidate(s) per call: parameters {total_b[k] / GB:.2f} GB + largest call "
                  f"({worst.split(' (')[0]}) {pk[worst] / GB:.2f} GB = {total / GB:.2f} GB "
                  f"-> {'within' if total <= GOAL[k] else 'OVER'} the {GOAL[k] / GB:.0f} GB goal (no T5)")
    print(f"({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()

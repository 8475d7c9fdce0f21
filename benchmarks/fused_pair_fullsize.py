"""One fused pair end to end at FLUX.1-dev size with random bf16 weights (issue 5 c), on a GPU/TPU.

Builds every network at its real size (FLUX.1-dev transformer, FLUX VAE, CLIP-L text,
SigLIP so400m + Redux, DINOv2-base, CLIP bigG) with random weights directly on the device
(speed does not depend on weight values), then:
  1. times one search round (`VMDiff.mdenoise`) with n = 1, 2, 4, 8 candidates (time per candidate),
  2. runs one whole fusion (EAA paper schedule) and prints wall time, image-model-calls,
     the time per call, and peak device memory.

    python benchmarks/fused_pair_fullsize.py                 # full size (needs ~40 GB of accelerator memory)
    python benchmarks/fused_pair_fullsize.py --scale tiny    # the demo models: checks the script on a CPU

The tokenizer is the tiny demo one (ids stay within the real vocabularies); labels are fixed.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vmdiff_jax.method import hsp, search
from vmdiff_jax.method.requests import pair_weights
from vmdiff_jax.nn import vit
from vmdiff_jax.engine.demo import demo_tokenizer
from vmdiff_jax.nn.flux import Flux, FluxConfig
from vmdiff_jax.engine.networks import Models
from vmdiff_jax.engine.pipeline import VMDiff
from vmdiff_jax.nn.redux import ReduxEncoder, ReduxProjector
from vmdiff_jax.nn.vae import AutoEncoder, VAEConfig


def full_models(dtype) -> Models:
    """Random full-size models, initialised under jit on the default device."""
    tok = demo_tokenizer()

    @nnx.jit
    def make():
        kw = dict(dtype=dtype, param_dtype=dtype, rngs=nnx.Rngs(0))
        siglip = vit.VisionTransformer(vit.ViTConfig.siglip_so400m(), **kw)
        return (Flux(FluxConfig.flux1_dev(), **kw), AutoEncoder(VAEConfig.flux(), **kw),
                vit.TextTransformer(vit.ViTConfig.clip_l(), **kw), ReduxEncoder(siglip, ReduxProjector(1152, 4096, **kw)),
                vit.VisionTransformer(vit.ViTConfig.dinov2_base(), **kw), vit.CLIP(vit.ViTConfig.clip_bigg_vision(), vit.ViTConfig.clip_bigg_text(), **kw))

    flux, vae, text, redux, dino, bigg = make()
    return Models(flux=flux, vae=vae, clip_l=text, clip_l_tokenizer=tok, redux=redux, dinov2=dino, clip_bigg=bigg,
                  clip_bigg_tokenizer=tok)


def peak_memory_gb() -> float | None:
    try:
        stats = jax.local_devices()[0].memory_stats()
        return stats.get("peak_bytes_in_use", 0) / 2**30 if stats else None
    except Exception:  # noqa: BLE001
        return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", choices=("full", "tiny"), default="full")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--candidates", default="1,2,4,8")
    ap.add_argument("--no-fuse", action="store_true", help="only the search-round scaling")
    a = ap.parse_args()
    dtype = jnp.bfloat16 if a.scale == "full" else jnp.float32
    t = time.perf_counter()
    if a.scale == "full":
        models = full_models(dtype)
        size = a.size
    else:
        from vmdiff_jax.engine.demo import demo_models

        models, size = demo_models(0), min(a.size, 128)
    jax.block_until_ready(nnx.state(models.flux))
    print(f"device: {jax.devices()[0].device_kind} x {len(jax.local_devices())}, scale {a.scale}, {jnp.dtype(dtype).name}, "
          f"{size} x {size}, {a.steps} steps; models built in {time.perf_counter() - t:.1f} s")
    pipe = VMDiff(models, hsp.HSPConfig(num_steps=a.steps, size=size), search.EAAConfig(), locator="dino")
    rng = np.random.default_rng(0)
    img1, img2 = (rng.integers(0, 255, (size, size, 3), dtype=np.uint8) for _ in range(2))
    c = pipe.condition(np.stack([img1, img2]))
    y = pipe.pooled_prompt("apple", "rubber duck")
    eps = pipe.noise(jax.random.key(0), 1)
    print(f"{'n':>3} | {'s / round':>10} | {'s / candidate':>13} | {'ms / model call':>15}")
    for n in [int(v) for v in a.candidates.split(",")]:
        weights = pair_weights(np.linspace(0.45, 0.55, n)).astype(np.float32)
        rows = lambda x: np.repeat(np.asarray(x)[None], n, axis=0)  # noqa: E731
        eps_b, cs, ys = rows(eps), rows(c), rows(y)
        run = lambda: pipe.mdenoise(eps_b, cs, weights, ys)  # noqa: E731
        run().block_until_ready()
        t = time.perf_counter()
        run().block_until_ready()
        dt = time.perf_counter() - t
        print(f"{n:>3} | {dt:>10.3f} | {dt / n:>13.3f} | {1000 * dt / (n * a.steps):>15.1f}")
    if a.no_fuse:
        return
    t = time.perf_counter()
    r = pipe.fuse(img1, img2, "apple", "rubber duck", seed=0, schedule="paper", batch=1)
    dt = time.perf_counter() - t
    mem = peak_memory_gb()
    print(f"one fused pair (paper schedule, compile included): {dt:.1f} s, {r.calls} image-model-calls, "
          f"{1000 * r.timings['model_s'] / max(r.calls, 1):.1f} ms per call (model time), S = {r.score:.3f}"
          + (f", peak device memory {mem:.1f} GiB" if mem is not None else ""))


if __name__ == "__main__":
    main()

"""Error of one FLUX call against the float32 model: bf16 weights + bf16 activations vs fp8
weights (float8_e4m3fn, per-channel scales) + bf16 activations, and fp8 weights computing in
float32 (the quantization error alone).

Random weights (Flax's default init moved by N(0, 0.02^2)), head dim 128 like FLUX.1, a few
blocks: real checkpoints have other weight statistics (outlier channels), so these figures
say how the two storages compare here, not what FLUX.1's error is.
Usage: python benchmarks/fp8_error.py [--hidden 256] [--depth 2] [--single 4] [--tokens 256]
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vmdiff_jax.nn.flux import Flux, FluxConfig
from vmdiff_jax.nn.quant import to_fp8


def as_model(src, cfg, dtype, fp8):
    """Flux(cfg, dtype, fp8) holding src's parameters cast to its parameter dtypes."""
    graphdef, abstract = nnx.split(nnx.eval_shape(lambda: Flux(cfg, dtype=dtype, param_dtype=dtype, rngs=nnx.Rngs(0), fp8=fp8)))
    values = {p: v[...] for p, v in nnx.to_flat_state(nnx.state(src, nnx.Param))}
    new = [(p, v.replace(jnp.asarray(values[p], v.dtype))) for p, v in nnx.to_flat_state(abstract)]
    return nnx.merge(graphdef, nnx.from_flat_state(new))


@jax.jit
def forward(graphdef, state, inputs):
    return nnx.merge(graphdef, state)(**inputs)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hidden", type=int, default=256, help="hidden size (heads of 128)")
    ap.add_argument("--depth", type=int, default=2)
    ap.add_argument("--single", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=256, help="image tokens (text tokens: a quarter)")
    args = ap.parse_args()
    cfg = FluxConfig(in_channels=64, out_channels=64, vec_in_dim=768, context_in_dim=4096, hidden_size=args.hidden,
                     num_heads=args.hidden // 128, depth=args.depth, depth_single_blocks=args.single)
    m = Flux(cfg, rngs=nnx.Rngs(0))
    state = nnx.state(m, nnx.Param)
    leaves, tree = jax.tree.flatten(state)
    keys = jax.random.split(jax.random.key(1), len(leaves))
    nnx.update(m, jax.tree.unflatten(tree, [x + 0.02 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)]))
    q = nnx.clone(m)
    to_fp8(q.double_blocks)
    to_fp8(q.single_blocks)
    models = {
        "bf16 weights, bf16 activations": as_model(m, cfg, jnp.bfloat16, False),
        "fp8 weights, bf16 activations": as_model(q, cfg, jnp.bfloat16, True),
        "fp8 weights, float32 activations": q,
    }
    rng = np.random.default_rng(0)
    n, l = args.tokens, args.tokens // 4
    side = int(np.sqrt(n))
    ids = np.zeros((side, n // side, 3), np.float32)
    ids[..., 1], ids[..., 2] = np.arange(side)[:, None], np.arange(n // side)[None, :]
    print(f"FLUX hidden {args.hidden} ({args.hidden // 128} heads of 128), {args.depth} double + {args.single} single blocks, "
          f"{n} image + {l} text tokens")
    print(f"  {'t':>4s} " + " ".join(f"{k:>34s}" for k in models))
    for t in (1.0, 0.5, 0.1):
        inputs = dict(img=jnp.asarray(rng.standard_normal((1, n, 64)), jnp.float32), img_ids=jnp.asarray(ids.reshape(1, n, 3)),
                      txt=jnp.asarray(rng.standard_normal((1, l, 4096)), jnp.float32), txt_ids=jnp.zeros((1, l, 3)),
                      timesteps=jnp.full((1,), t), y=jnp.asarray(rng.standard_normal((1, 768)), jnp.float32),
                      guidance=jnp.full((1,), 4.0))
        ref = np.asarray(forward(*nnx.split(m), inputs), np.float64)
        errs = []
        for model in models.values():
            out = np.asarray(forward(*nnx.split(model), inputs), np.float64)
            errs.append(np.linalg.norm(out - ref) / np.linalg.norm(ref))
        print(f"  {t:4.1f} " + " ".join(f"{e:34.2e}" for e in errs))
    print("  (relative L2 error ||out - out_f32|| / ||out_f32|| of the velocity)")


if __name__ == "__main__":
    main()

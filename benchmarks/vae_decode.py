"""FLUX VAE decode: jitted JAX vs diffusers AutoencoderKL, same random weights, float32, CPU.

Builds diffusers AutoencoderKL with the FLUX config, saves it with save_pretrained, loads it
through `load_vae`, decodes one latent (size/8 x size/8 x 16) with both; warm-up excluded,
median of `--runs` timed runs. Usage: python benchmarks/vae_decode.py [--size 512] [--runs 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch
from diffusers import AutoencoderKL
from flax import nnx

from vmdiff_jax.checkpoints import load_vae


def timed(fn, runs: int) -> tuple[float, object]:
    fn()  # warm-up (compilation for JAX)
    times, out = [], None
    for _ in range(runs):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=512, help="image side in pixels (multiple of 8)")
    ap.add_argument("--runs", type=int, default=3, help="timed runs (median reported)")
    args = ap.parse_args()
    if args.size % 8:
        ap.error("--size must be a multiple of 8")

    torch.manual_seed(0)
    ref = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=16, block_out_channels=(128, 256, 512, 512),
        layers_per_block=2, down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        norm_num_groups=32, scaling_factor=0.3611, shift_factor=0.1159, use_quant_conv=False,
        use_post_quant_conv=False,
    ).eval()
    with tempfile.TemporaryDirectory() as d:
        ref.save_pretrained(d, safe_serialization=True)
        model = load_vae(d, dtype=jnp.float32)
    graphdef, state = nnx.split(model)

    @jax.jit
    def decode(state, z):
        return nnx.merge(graphdef, state).decode(z)

    h = args.size // 8
    z = np.random.default_rng(0).standard_normal((1, h, h, 16)).astype(np.float32)
    zj, zt = jnp.asarray(z), torch.from_numpy(z).permute(0, 3, 1, 2).contiguous()

    t_jax, img = timed(lambda: decode(state, zj).block_until_ready(), args.runs)
    with torch.inference_mode():
        t_ref, img_ref = timed(lambda: ref.decode(zt).sample, args.runs)
    img_ref = img_ref.permute(0, 2, 3, 1).numpy()
    diff = float(np.max(np.abs(np.asarray(img) - img_ref)))
    print(f"VAE decode {args.size}x{args.size} (latent {h}x{h}x16), float32, {jax.devices()[0].platform}, "
          f"torch threads {torch.get_num_threads()}, median of {args.runs}")
    print(f"  jax (jit)  {t_jax:8.3f} s")
    print(f"  diffusers  {t_ref:8.3f} s")
    print(f"  ratio diffusers / jax = {t_ref / t_jax:.2f}")
    print(f"  max |jax - diffusers| = {diff:.3e} (max |diffusers| = {np.max(np.abs(img_ref)):.3f})")


if __name__ == "__main__":
    main()

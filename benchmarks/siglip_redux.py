"""SigLIP so400m + Redux per image, full size, random weights, float32 on the CPU:
our jitted JAX model vs transformers + diffusers in the same process with the same weights.

Batch 1, warm-up (and compilation) excluded, median of --repeats runs. The weights go through
a safetensors file in the hub layout and our loaders, as real checkpoints do.

    python benchmarks/siglip_redux.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import torch
from diffusers.pipelines.flux.modeling_flux import ReduxImageEncoder
from flax import nnx
from safetensors.torch import save_file
from transformers import SiglipVisionConfig, SiglipVisionModel

from vmdiff_jax.checkpoints import load_redux


def median_time(fn, repeats: int) -> float:
    fn()  # warm-up (and XLA compilation)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.manual_seed(0)
    cfg = SiglipVisionConfig(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16,
                             patch_size=14, image_size=384, hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6)
    siglip_ref = SiglipVisionModel(cfg).eval()
    redux_ref = ReduxImageEncoder(redux_dim=1152, txt_in_features=4096).eval()
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        hub = {f"vision_model.{k}": v.contiguous() for k, v in siglip_ref.state_dict().items()}
        save_file(hub, d / "siglip.safetensors")
        save_file({k: v.contiguous() for k, v in redux_ref.state_dict().items()}, d / "redux.safetensors")
        enc = load_redux(d / "redux.safetensors", d / "siglip.safetensors", dtype=jnp.float32)
    graphdef, state = nnx.split(enc)
    run = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x))

    image = np.random.default_rng(0).uniform(-1, 1, (1, 384, 384, 3)).astype(np.float32)
    x_jax = jnp.asarray(image)
    x_torch = torch.from_numpy(image.transpose(0, 3, 1, 2).copy())

    def ours():
        return run(state, x_jax).block_until_ready()

    def reference():
        with torch.inference_mode():
            return redux_ref(siglip_ref(pixel_values=x_torch).last_hidden_state).image_embeds

    t_jax = median_time(ours, args.repeats)
    t_ref = median_time(reference, args.repeats)
    out, ref = np.asarray(ours()), reference().numpy()
    diff = np.abs(out - ref).max()
    print(f"device: {jax.devices()[0].platform}, jax {jax.__version__}, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads)")
    print(f"SigLIP so400m + Redux, (1, 384, 384, 3) -> {out.shape}, float32, median of {args.repeats}")
    print(f"  JAX (jit)                 {t_jax * 1e3:9.1f} ms")
    print(f"  transformers + diffusers  {t_ref * 1e3:9.1f} ms")
    print(f"  ratio torch / jax         {t_ref / t_jax:9.2f}")
    print(f"  max |diff| {diff:.3e}  (max |ref| {np.abs(ref).max():.3e}, rel {diff / max(1.0, np.abs(ref).max()):.2e})")


if __name__ == "__main__":
    main()

"""One FLUX transformer call: jitted JAX against diffusers' FluxTransformer2DModel.

Default (CPU, float32, batch 1): a mid-size config (hidden 512 = 4 heads x 128, 2 double +
4 single blocks, 1024 image + 729 context tokens). diffusers gets random weights, saved with
save_pretrained and read back by `load_flux`, so both run the same weights in the same
process. Warm-up calls (compilation) are excluded; the median of --runs calls is reported.

--full: FLUX.1 [dev] size with random bf16 weights on the default JAX device (a GPU), time
per call and MFU; diffusers is timed too (its own random weights) only if torch has CUDA.

    python benchmarks/flux_call.py [--runs 5]
    python benchmarks/flux_call.py --full [--txt-tokens 729] [--batch 1] [--attention cudnn]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vmdiff_jax.flux import Flux, FluxConfig

H100_BF16_PEAK = 989e12  # dense bf16 FLOP/s, H100 SXM


def mid_config() -> FluxConfig:
    return FluxConfig(hidden_size=512, num_heads=4, depth=2, depth_single_blocks=4)


@jax.jit
def _call(graphdef, state, inputs):
    return nnx.merge(graphdef, state)(**inputs)


def time_jax(model, inputs, runs: int) -> tuple[float, jax.Array]:
    graphdef, state = nnx.split(model)
    out = _call(graphdef, state, inputs).block_until_ready()  # compile + warm-up
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        out = _call(graphdef, state, inputs).block_until_ready()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def time_torch(fn, runs: int, sync=lambda: None):
    out = fn()  # warm-up
    sync()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        out = fn()
        sync()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def inputs_for(cfg: FluxConfig, batch: int, h: int, w: int, txt_tokens: int, dtype, seed: int = 0):
    """Packed latents of an h x w token grid, context, pooled vector, t and guidance (numpy)."""
    rng = np.random.default_rng(seed)
    n = h * w
    img_ids = np.zeros((h, w, 3), np.float32)
    img_ids[..., 1], img_ids[..., 2] = np.arange(h)[:, None], np.arange(w)[None, :]
    return dict(
        img=rng.standard_normal((batch, n, cfg.in_channels)).astype(dtype),
        img_ids=np.broadcast_to(img_ids.reshape(1, n, 3), (batch, n, 3)).copy(),
        txt=rng.standard_normal((batch, txt_tokens, cfg.context_in_dim)).astype(dtype),
        txt_ids=np.zeros((batch, txt_tokens, 3), np.float32),
        timesteps=np.full((batch,), 0.6525, np.float32),
        y=rng.standard_normal((batch, cfg.vec_in_dim)).astype(dtype),
        guidance=np.full((batch,), 4.0, np.float32),
    )


def diffusers_model(cfg: FluxConfig):
    from diffusers import FluxTransformer2DModel

    assert cfg.mlp_ratio == 4.0 and cfg.qkv_bias and cfg.in_channels == cfg.out_channels
    return FluxTransformer2DModel(
        patch_size=1,
        in_channels=cfg.in_channels,
        num_layers=cfg.depth,
        num_single_layers=cfg.depth_single_blocks,
        attention_head_dim=cfg.head_dim,
        num_attention_heads=cfg.num_heads,
        joint_attention_dim=cfg.context_in_dim,
        pooled_projection_dim=cfg.vec_in_dim,
        guidance_embeds=cfg.guidance_embed,
        axes_dims_rope=cfg.axes_dim,
    ).eval()


def diffusers_call(ref, x: dict, torch_mod, device="cpu", dtype=None):
    t = lambda a: torch_mod.from_numpy(np.ascontiguousarray(a)).to(device)  # noqa: E731
    dt = dtype or torch_mod.float32
    kw = dict(
        hidden_states=t(x["img"]).to(dt),
        encoder_hidden_states=t(x["txt"]).to(dt),
        pooled_projections=t(x["y"]).to(dt),
        timestep=t(x["timesteps"]),
        img_ids=t(x["img_ids"][0]),
        txt_ids=t(x["txt_ids"][0]),
        guidance=t(x["guidance"]),
    )

    def fn():
        with torch_mod.inference_mode():
            return ref(**kw, return_dict=False)[0]

    return fn


def run_mid(runs: int) -> None:
    import torch

    from vmdiff_jax.checkpoints import load_flux

    cfg = mid_config()
    torch.manual_seed(0)
    ref = diffusers_model(cfg)
    with tempfile.TemporaryDirectory() as d:
        ref.save_pretrained(d, safe_serialization=True)
        model = load_flux(d, dtype=jnp.float32)
    x = inputs_for(cfg, batch=1, h=32, w=32, txt_tokens=729, dtype=np.float32)
    t_jax, out = time_jax(model, {k: jnp.asarray(v) for k, v in x.items()}, runs)
    t_ref, ref_out = time_torch(diffusers_call(ref, x, torch), runs)
    diff = float(np.abs(np.asarray(out) - ref_out.numpy()).max())
    n_params = sum(p.numel() for p in ref.parameters())
    print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), torch threads {torch.get_num_threads()}")
    print(f"config: hidden {cfg.hidden_size} ({cfg.num_heads} heads x {cfg.head_dim}), {cfg.depth} double + "
          f"{cfg.depth_single_blocks} single blocks, {n_params / 1e6:.1f}M params, float32, batch 1, "
          f"1024 image + 729 context tokens")
    print(f"jax (jit)  median of {runs}: {t_jax * 1e3:.1f} ms")
    print(f"diffusers  median of {runs}: {t_ref * 1e3:.1f} ms")
    print(f"ratio diffusers / jax: {t_ref / t_jax:.2f}x")
    print(f"max |jax - diffusers|: {diff:.3e} (max |diffusers| {float(ref_out.abs().max()):.3f})")


def flops_per_call(cfg: FluxConfig, n_params: int, n_per_token: int, tokens: int, batch: int) -> tuple[float, float]:
    """(brief formula 2 * params * tokens + 4 * L^2 * hidden * blocks, same with per-token params only)."""
    attn = 4.0 * tokens**2 * cfg.hidden_size * (cfg.depth + cfg.depth_single_blocks)
    return batch * (2.0 * n_params * tokens + attn), batch * (2.0 * n_per_token * tokens + attn)


def run_full(runs: int, txt_tokens: int, batch: int, attention: str | None) -> None:
    cfg = FluxConfig.flux1_dev()
    kw = dict(dtype=jnp.bfloat16, param_dtype=jnp.bfloat16, attention_impl=attention)
    graphdef, _ = nnx.split(nnx.eval_shape(lambda: Flux(cfg, rngs=nnx.Rngs(0), **kw)))

    @jax.jit
    def init():
        return nnx.state(Flux(cfg, rngs=nnx.Rngs(0), **kw))

    t0 = time.perf_counter()
    state = jax.block_until_ready(init())
    print(f"random bf16 init on {jax.devices()[0].device_kind}: {time.perf_counter() - t0:.1f} s")
    model = nnx.merge(graphdef, state)
    flat = nnx.to_flat_state(nnx.state(model, nnx.Param))
    n_params = sum(int(np.prod(v.shape)) for _, v in flat)
    per_sample = ("_mod.lin", "modulation.lin", "adaLN_modulation", "time_in", "vector_in", "guidance_in")
    n_tok = sum(int(np.prod(v.shape)) for p, v in flat if not any(s in ".".join(map(str, p)) for s in per_sample))
    x = inputs_for(cfg, batch=batch, h=32, w=32, txt_tokens=txt_tokens, dtype=np.float32)
    xj = {k: jnp.asarray(v, jnp.bfloat16 if k in ("img", "txt", "y") else jnp.float32) for k, v in x.items()}
    t_jax, _ = time_jax(model, xj, runs)
    tokens = 1024 + txt_tokens
    f_brief, f_tok = flops_per_call(cfg, n_params, n_tok, tokens, batch)
    print(f"FLUX.1-dev {n_params / 1e9:.2f}B params, bf16, batch {batch}, 1024 image + {txt_tokens} context tokens, "
          f"attention {attention or 'xla'}")
    print(f"jax (jit) median of {runs}: {t_jax * 1e3:.1f} ms per call")
    print(f"MFU vs {H100_BF16_PEAK / 1e12:.0f} TFLOP/s: {f_brief / t_jax / H100_BF16_PEAK:.1%} "
          f"(2*params*tokens + attention = {f_brief / 1e12:.1f} TFLOP); "
          f"{f_tok / t_jax / H100_BF16_PEAK:.1%} counting per-token params only ({f_tok / 1e12:.1f} TFLOP)")
    try:
        import torch
    except ImportError:
        return
    if not torch.cuda.is_available():
        print("diffusers: not timed (torch has no CUDA here)")
        return
    del model, state
    ref = diffusers_model(cfg).to("cuda", torch.bfloat16)
    t_ref, _ = time_torch(diffusers_call(ref, x, torch, "cuda", torch.bfloat16), runs, torch.cuda.synchronize)
    print(f"diffusers (own random weights) median of {runs}: {t_ref * 1e3:.1f} ms; "
          f"ratio diffusers / jax {t_ref / t_jax:.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--full", action="store_true", help="FLUX.1-dev size, random bf16 weights (GPU)")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--txt-tokens", type=int, default=729, help="--full: context tokens (729 Redux, 1458 SCat)")
    ap.add_argument("--batch", type=int, default=1, help="--full: batch size")
    ap.add_argument("--attention", default=None, help="--full: jax.nn.dot_product_attention implementation")
    a = ap.parse_args()
    if a.runs < 3:
        ap.error("--runs must be at least 3")
    if a.full:
        run_full(a.runs, a.txt_tokens, a.batch, a.attention)
    else:
        run_mid(a.runs)


if __name__ == "__main__":
    main()

"""One FLUX transformer call: jitted JAX against diffusers' FluxTransformer2DModel.

Default (CPU, float32, batch 1): a mid-size config (hidden 512 = 4 heads x 128, 2 double +
4 single blocks, 1024 image + 729 context tokens). diffusers gets random weights, saved with
save_pretrained and read back by `load_flux`, so both run the same weights in the same
process. JAX runs with --attention (default auto) and with xla; the three are timed
round-robin (interleaved) after warm-up (compilation excluded); medians of --runs are reported.

--full: FLUX.1 [dev] size with random bf16 weights on the default JAX device (a GPU), time
per call and MFU; diffusers is timed too (its own random weights) only if torch has CUDA.
MFU = FLOPs / time / peak with the FLOPs from XLA's cost analysis of the compiled call
(attention lowered as 'xla': a kernel's custom call or loop hides FLOPs from the analysis).
--flops-only: just those FLOPs of a full-size call, lowered from abstract shapes (no
allocation, any backend).

    python benchmarks/flux_call.py [--runs 5] [--attention auto]
    python benchmarks/flux_call.py --full [--txt-tokens 729] [--batch 1] [--attention auto]
    python benchmarks/flux_call.py --flops-only [--txt-tokens 729] [--batch 1]
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vmdiff_jax.nn.flux import Flux, FluxConfig
from vmdiff_jax.nn.math import ATTENTION_IMPLS, AttentionUnavailable, check_attention_impl

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


def time_interleaved(fns: dict, runs: int) -> tuple[dict, dict]:
    """{name: median seconds}, {name: last output} of blocking callables, warmed up, then run round-robin."""
    outs = {name: fn() for name, fn in fns.items()}
    times = {name: [] for name in fns}
    for _ in range(runs):
        for name, fn in fns.items():
            t = time.perf_counter()
            outs[name] = fn()
            times[name].append(time.perf_counter() - t)
    return {n: statistics.median(ts) for n, ts in times.items()}, outs


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


def run_mid(runs: int, attention: str) -> None:
    import torch

    from vmdiff_jax.checkpoints import load_flux
    from vmdiff_jax.nn.math import resolve_attention_impl

    cfg = mid_config()
    torch.manual_seed(0)
    ref = diffusers_model(cfg)
    x = inputs_for(cfg, batch=1, h=32, w=32, txt_tokens=729, dtype=np.float32)
    xj = {k: jnp.asarray(v) for k, v in x.items()}
    fns = {}
    with tempfile.TemporaryDirectory() as d:
        ref.save_pretrained(d, safe_serialization=True)
        for impl in dict.fromkeys((attention, "xla")):
            graphdef, state = nnx.split(load_flux(d, dtype=jnp.float32, attention_impl=impl))
            fns[f"jax {impl}"] = functools.partial(lambda g, s: _call(g, s, xj).block_until_ready(), graphdef, state)
    fns["diffusers"] = diffusers_call(ref, x, torch)
    med, outs = time_interleaved(fns, runs)
    ref_out = outs["diffusers"].numpy()
    n_params = sum(p.numel() for p in ref.parameters())
    print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), {os.cpu_count()} CPU cores, "
          f"torch threads {torch.get_num_threads()}")
    print(f"config: hidden {cfg.hidden_size} ({cfg.num_heads} heads x {cfg.head_dim}), {cfg.depth} double + "
          f"{cfg.depth_single_blocks} single blocks, {n_params / 1e6:.1f}M params, float32, batch 1, "
          f"1024 image + 729 context tokens; medians of {runs} interleaved runs")
    for name, t in med.items():
        line = f"{name:14s} {t * 1e3:8.1f} ms"
        if name != "diffusers":
            impl = name.split()[1]
            diff = float(np.abs(np.asarray(outs[name]) - ref_out).max())
            line += (f"   diffusers / this {med['diffusers'] / t:.2f}x   max |this - diffusers| {diff:.1e}"
                     f"   (runs {resolve_attention_impl(impl, jnp.float32, 1753, cfg.head_dim)})")
        print(line)
    print(f"max |diffusers| {float(np.abs(ref_out).max()):.3f}")


def analysed_flops(cfg: FluxConfig, batch: int, txt_tokens: int, dtype=jnp.bfloat16) -> float:
    """FLOPs of one call (1024 image + txt_tokens context tokens) from XLA's cost analysis of the
    compiled call, lowered from abstract shapes (no weights allocated), attention as 'xla', blocks
    unrolled (XLA's cost analysis counts a scan's body once, not once per layer)."""
    abstract = nnx.eval_shape(lambda: Flux(cfg, dtype=dtype, param_dtype=dtype, rngs=nnx.Rngs(0), attention_impl="xla",
                                           scan_blocks=False))
    graphdef, state = nnx.split(abstract)
    x = inputs_for(cfg, batch=batch, h=32, w=32, txt_tokens=txt_tokens, dtype=np.float32)
    xs = {k: jax.ShapeDtypeStruct(v.shape, dtype if k in ("img", "txt", "y") else jnp.float32) for k, v in x.items()}
    cost = _call.lower(graphdef, state, xs).compile().cost_analysis()
    return float((cost[0] if isinstance(cost, list) else cost)["flops"])


def run_full(runs: int, txt_tokens: int, batch: int, attention: str) -> None:
    cfg = FluxConfig.flux1_dev()
    t0 = time.perf_counter()
    flops = analysed_flops(cfg, batch, txt_tokens)
    print(f"XLA cost analysis of the compiled call: {flops / 1e12:.2f} TFLOP ({time.perf_counter() - t0:.0f} s)")
    kw = dict(dtype=jnp.bfloat16, param_dtype=jnp.bfloat16, attention_impl=attention)
    graphdef, _ = nnx.split(nnx.eval_shape(lambda: Flux(cfg, rngs=nnx.Rngs(0), **kw)))

    @jax.jit
    def init():
        return nnx.state(Flux(cfg, rngs=nnx.Rngs(0), **kw))

    t0 = time.perf_counter()
    state = jax.block_until_ready(init())
    print(f"random bf16 init on {jax.devices()[0].device_kind}: {time.perf_counter() - t0:.1f} s")
    model = nnx.merge(graphdef, state)
    n_params = sum(int(np.prod(v.shape)) for _, v in nnx.to_flat_state(nnx.state(model, nnx.Param)))
    x = inputs_for(cfg, batch=batch, h=32, w=32, txt_tokens=txt_tokens, dtype=np.float32)
    xj = {k: jnp.asarray(v, jnp.bfloat16 if k in ("img", "txt", "y") else jnp.float32) for k, v in x.items()}
    t_jax, _ = time_jax(model, xj, runs)
    print(f"FLUX.1-dev {n_params / 1e9:.2f}B params, bf16, batch {batch}, 1024 image + {txt_tokens} context tokens, "
          f"attention {attention}")
    print(f"jax (jit) median of {runs}: {t_jax * 1e3:.1f} ms per call")
    print(f"MFU vs {H100_BF16_PEAK / 1e12:.0f} TFLOP/s: {flops / t_jax / H100_BF16_PEAK:.1%} "
          f"({flops / 1e12:.2f} TFLOP per call from XLA's cost analysis, {flops / t_jax / 1e12:.0f} TFLOP/s)")
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
    ap.add_argument("--flops-only", action="store_true", help="FLOPs of a full-size call (cost analysis, abstract)")
    ap.add_argument("--attention", default="auto", choices=ATTENTION_IMPLS, help="FLUX attention implementation")
    a = ap.parse_args()
    if a.runs < 3:
        ap.error("--runs must be at least 3")
    try:
        check_attention_impl(a.attention)
    except AttentionUnavailable as e:
        ap.error(str(e))
    if a.flops_only:
        flops = analysed_flops(FluxConfig.flux1_dev(), a.batch, a.txt_tokens)
        print(f"FLUX.1-dev, bf16, batch {a.batch}, 1024 image + {a.txt_tokens} context tokens: "
              f"{flops / 1e12:.2f} TFLOP per call (XLA cost analysis of the compiled call, {jax.default_backend()})")
    elif a.full:
        run_full(a.runs, a.txt_tokens, a.batch, a.attention)
    else:
        run_mid(a.runs, a.attention)


if __name__ == "__main__":
    main()

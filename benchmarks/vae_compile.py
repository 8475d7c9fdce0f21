"""Where the FLUX VAE decode's TPU compile time goes (issue 20, item 5).

Compiles, for a compile-only TPU slice (libtpu; JAX_PLATFORMS=cpu is fine), the full-size FLUX
VAE decode of `--images` images at `--size` (abstract bf16 weights, nothing allocated) as MDeNoise
runs it (`hsp.decode` under vmap), and its parts alone: the mid-block (conv_in + 2 resnets +
attention at size / 8), each up level (`decoder.up.{i}`: its resnets and upsample, at its own
resolution), and the output head (norm_out + conv_out at full size). `--mesh DATA,FSDP` places the
images over 'data' and the VAE's parameters as `sharding.param_spec` would (FSDP over 'fsdp');
`--replicated` keeps every VAE parameter whole on each chip (the VAE is 0.17 GB). `--attention
splash` puts back the mid-block attention that `auto` resolves to on a TPU (nn/vae.py now asks for
'xla' there). Printed: wall seconds and the process's CPU seconds (steadier on a shared machine).

Usage: JAX_PLATFORMS=cpu python benchmarks/vae_compile.py [--slice v5e-8] [--mesh 2,4]
       [--parts decode,mid,up3,up2,up1,up0,out] [--replicated] [--images 2] [--size 512]
       [--attention xla|splash]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # this checkout's vmdiff_jax

import jax
import jax.numpy as jnp
from flax import nnx

from vmdiff_jax.checkpoints.vae import abstract_vae
from vmdiff_jax.engine import sharding, targets
from vmdiff_jax.method import hsp
from vmdiff_jax.nn.vae import VAEConfig

PARTS = ("decode", "mid", "up3", "up2", "up1", "up0", "out")


def _holder(**parts) -> nnx.Module:
    """A module holding some of the decoder's submodules (so they split and merge as one)."""
    mod = nnx.Module()
    for name, part in parts.items():
        setattr(mod, name, part)
    return mod


def _jit_part(apply):
    """jax.jit of apply(merged module, x) over (graphdef, state, x)."""
    @jax.jit
    def fn(gd, st, x):
        return apply(nnx.merge(gd, st), x)

    return fn


def part_call(part: str, vae, n: int, size: int, mesh):
    """(jitted fn of (graphdef, state, x), abstract x) for one part of the decoder."""
    cfg = vae.cfg
    f = cfg.downsample_factor
    widths = [cfg.ch * m for m in cfg.ch_mult]
    r = lambda shape: targets.rows(mesh, shape, jnp.bfloat16)
    dec = vae.decoder
    if part == "decode":
        return _jit_part(lambda m, packed: jax.vmap(lambda p: hsp.decode(m, p))(packed)), vae, targets.rows(mesh, (n, (size // 16) ** 2, 4 * cfg.z_channels), jnp.float32)
    if part == "mid":
        return _jit_part(lambda m, z: m.mid(m.conv_in(z))), _holder(conv_in=dec.conv_in, mid=dec.mid), \
            r((n, size // f, size // f, cfg.z_channels))
    if part.startswith("up"):
        i = int(part[2:])
        side = size // f * 2 ** (len(widths) - 1 - i)
        cin = widths[i + 1] if i + 1 < len(widths) else widths[-1]
        return _jit_part(lambda m, h: m(h)), dec.up[i], r((n, side, side, cin))
    if part == "out":
        return _jit_part(lambda m, h: m.conv_out(nnx.silu(m.norm_out(h)))), \
            _holder(norm_out=dec.norm_out, conv_out=dec.conv_out), r((n, size, size, widths[0]))
    raise ValueError(part)


class _Attention:
    """nn.math as the VAE sees it, with `attention` replaced."""

    def __init__(self, attention):
        from vmdiff_jax.nn import math

        self.attention, self.target_platform = attention, math.target_platform


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slice", default="v5e-8")
    ap.add_argument("--mesh", default=None, help="DATA,FSDP (default: data = all chips, fsdp 1)")
    ap.add_argument("--parts", default=",".join(PARTS))
    ap.add_argument("--replicated", action="store_true")
    ap.add_argument("--images", type=int, default=2)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--attention", choices=("xla", "splash"), default="xla", help="the mid-block attention's kernel")
    a = ap.parse_args(argv)
    if a.attention == "splash":  # what 'auto' gave on a TPU before nn/vae.py asked for 'xla'
        from vmdiff_jax.nn import vae as vae_module

        attention = vae_module.vmath.attention
        vae_module.vmath = _Attention(lambda q, k, v, **_: attention(q, k, v, implementation="splash"))
    target = targets.TARGETS[a.slice]
    devs = targets.devices(target)
    data, fsdp = (int(v) for v in a.mesh.split(",")) if a.mesh else (target.chips, 1)
    mesh = sharding.make_mesh(data=data, fsdp=fsdp, devices=devs)
    vae = abstract_vae(VAEConfig.flux(), jnp.bfloat16)
    out = {}
    for part in a.parts.split(","):
        fn, mod, x = part_call(part, vae, a.images, a.size, mesh)
        gd, st = targets.abstract_state(mod, mesh, min_size=2**62 if a.replicated else 2**18)
        cpu0 = time.process_time()  # the compiler's threads' CPU seconds: steadier than wall time on a shared machine
        c = targets.compile_stage(fn, (gd, st, x), platform="tpu", param_arg_count=2)
        cpu = time.process_time() - cpu0
        out[part] = {"compile_s": round(c.compile_s, 1), "cpu_s": round(cpu, 1), "temp_gb": round(c.temp_bytes / 1e9, 3),
                     "params_mb": round(c.parameters_bytes / 1e6, 1), "tflops": round(c.flops / 1e12, 3),
                     "collective_mb": round(sum(c.collectives.values()) / 1e6, 1), "error": c.error}
        print(f"{a.slice} data {data} x fsdp {fsdp}{' replicated' if a.replicated else ''} {a.attention:6s} {part:6s} "
              f"({a.images} images, {a.size} px): compile {c.compile_s:6.1f} s ({cpu:6.1f} CPU s), params {c.parameters_bytes / 1e6:.0f} MB,"
              f" temp {c.temp_bytes / 1e9:.3f} GB, {c.flops / 1e12:.3f} TFLOP, collectives "
              f"{sum(c.collectives.values()) / 1e6:.0f} MB" + (f"; ERROR {c.error}" if c.error else ""), flush=True)
    print("RESULT " + json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

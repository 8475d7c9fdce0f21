"""Write a scaled fp8 BFL single file from a FLUX transformer checkpoint (bf16/f32 BFL file or
diffusers `transformer/` folder), streaming one tensor at a time.

    python convert/flux_to_fp8.py weights/flux1-krea-dev.safetensors weights/flux1-krea-dev-fp8-scaled.safetensors

The layout is ComfyUI's "scaled fp8": every Linear weight of the double and single blocks
(the layers `Flux(fp8=True)` stores in float8) becomes `<layer>.weight` F8_E4M3 (torch's
(out, in)) with `<layer>.scale_weight`, a float32 scalar (per-tensor: absmax / 448), so that
weight = fp8 * scale_weight; a `scaled_fp8` marker tensor (empty, F8_E4M3) says so. Embedders,
final layer, norms and biases are written in `--dtype` (default bf16). Rope axes go into the
metadata (`axes_dim`) as `flux_to_bfl.py` does.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np
from flax import nnx

from vmdiff_jax import loading
from vmdiff_jax.flux import Flux
from vmdiff_jax.flux_checkpoint import infer_config, rules_for
from vmdiff_jax.quant import FP8, quantize
from vmdiff_jax.safetensors_io import CheckpointError, open_checkpoint, write_streaming

MARKER = "scaled_fp8"


def bfl_key(path: str) -> str:
    return path[: -len(".kernel")] + ".weight" if path.endswith(".kernel") else path


def convert(src, dst, dtype: str = "BF16") -> int:
    """Write `dst` from `src`; returns the number of fp8 weights. dtype: of the other tensors."""
    ckpt = open_checkpoint(src)
    cfg = infer_config(ckpt)
    rules = rules_for(ckpt, cfg)
    model = nnx.eval_shape(lambda: Flux(cfg, rngs=nnx.Rngs(0), fp8=True))
    paths = loading.param_paths(model)
    fp8_scales = {p[: -len("kernel")] + "scale" for p, s in paths.items() if s.dtype == FP8}
    params = {p: s for p, s in paths.items() if p not in fp8_scales}  # scales are computed, not read
    full = nnx.eval_shape(lambda: Flux(cfg, rngs=nnx.Rngs(0)))  # the same paths, all float: for the check
    problems = loading.check(full, rules, ckpt)
    if problems:
        raise CheckpointError(f"{src}: {problems[0]}")
    specs, source_of, fp8_layers = [], {}, set()
    for path, sd in params.items():
        shape = tuple(sd.shape)[::-1] if path.endswith(".kernel") else tuple(sd.shape)
        key = bfl_key(path)
        source_of[key] = path
        if sd.dtype == FP8:
            layer = key[: -len(".weight")]
            fp8_layers.add(layer)
            specs += [(key, shape, "F8_E4M3"), (f"{layer}.scale_weight", (), "F32")]
        else:
            specs.append((key, shape, dtype))
    specs.append((MARKER, (0,), "F8_E4M3"))
    pending: dict[str, np.ndarray] = {}  # the scale of the weight just written

    def produce(key):
        if key == MARKER:
            return np.zeros((0,), FP8)
        if key.endswith(".scale_weight"):
            return pending.pop(key)
        path = source_of[key]
        rule = rules[path]
        a = rule.fn(np, *[ckpt.load(k) for k in rule.sources])
        a = np.transpose(a) if path.endswith(".kernel") else a
        if key[: -len(".weight")] in fp8_layers:
            a, scale = quantize(a, per_channel=False)
            pending[key[: -len(".weight")] + ".scale_weight"] = scale
        return a

    write_streaming(dst, specs, produce, metadata={"format": "pt", "axes_dim": json.dumps(list(cfg.axes_dim))})
    out = open_checkpoint(dst)
    n8 = sum(out[k].dtype == "F8_E4M3" for k in out) - 1
    if n8 != len(fp8_layers) or any(f"{layer}.scale_weight" not in out for layer in fp8_layers):
        raise CheckpointError(f"{dst}: written file is incomplete ({n8} fp8 weights of {len(fp8_layers)})")
    return len(fp8_layers)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("src", help="FLUX transformer checkpoint: BFL single file or diffusers transformer/ folder")
    ap.add_argument("dst", help="the scaled fp8 BFL .safetensors file to write")
    ap.add_argument("--dtype", choices=("bf16", "f16", "f32"), default="bf16",
                    help="dtype of the tensors that stay high precision (embedders, final layer, norms, biases)")
    a = ap.parse_args(argv)
    try:
        n = convert(a.src, a.dst, a.dtype.upper())
    except CheckpointError as e:
        print(f"flux_to_fp8: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {a.dst}: {n} Linear weights in scaled fp8 (BFL layout)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

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

from vmdiff_jax.checkpoints import flux
from vmdiff_jax.checkpoints.flux_fp8 import MARKER
from vmdiff_jax.checkpoints.files import CheckpointError, open_checkpoint, write_streaming
from vmdiff_jax.checkpoints.loader import check
from vmdiff_jax.checkpoints.rules import param_paths
from vmdiff_jax.nn.quant import FP8, quantize


def convert(src, dst, dtype: str = "BF16") -> int:
    """Write `dst` from `src`; returns the number of fp8 weights. dtype: of the other tensors."""
    ckpt = open_checkpoint(src)
    if flux.detect_layout(ckpt.keys()) is None:
        raise CheckpointError(f"{src}: not a FLUX transformer (no BFL or diffusers keys)")
    # the source as float32 (a scaled source dequantized), one parameter per BFL tensor (blocks unrolled)
    plan = flux.build(ckpt, dtype=np.float32, scan_blocks=False)
    problems = check(plan, ckpt)
    if problems:
        raise CheckpointError(f"{src}: {problems[0]}")
    cfg = plan.model.cfg
    fp8_paths = {p for p, s in param_paths(flux.abstract_flux(cfg, fp8=True, scan_blocks=False)).items() if s.dtype == FP8}
    out_rules = flux.bfl_rules(cfg, model=plan.model)  # our path -> BFL key
    specs, source_of, fp8_layers = [], {}, set()
    for path, sd in param_paths(plan.model).items():
        shape = tuple(sd.shape)[::-1] if path.endswith(".kernel") else tuple(sd.shape)
        (key,) = out_rules[path].sources
        source_of[key] = path
        if path in fp8_paths:
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
        rule = plan.rules[path]
        a = rule.fn(np, *[ckpt.read(k, check_finite=True) for k in rule.sources])
        a = np.transpose(a) if path.endswith(".kernel") else a
        if key[: -len(".weight")] in fp8_layers:
            a, scale = quantize(a, per_channel=False)
            pending[key[: -len(".weight")] + ".scale_weight"] = scale
        return a

    write_streaming(dst, specs, produce, metadata={"format": "pt", "axes_dim": json.dumps(list(cfg.axes_dim))})
    out = open_checkpoint(dst)
    problems = check(flux.build(out, fp8=True), out)
    if problems:
        raise CheckpointError(f"{dst}: written file fails its check: {problems[0]}")
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

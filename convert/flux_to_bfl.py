"""Rewrite a FLUX transformer checkpoint (diffusers `transformer/` folder, or a BFL file with a
prefix) as one BFL-layout single file, streaming one tensor at a time.

    python convert/flux_to_bfl.py weights/FLUX.1-Krea-dev/transformer weights/flux1-krea-dev.safetensors [--dtype bf16]

Our parameter paths are BFL's keys, so the output key of each parameter is the source key of
its BFL rule (`kernel` -> `weight`, Linear kernels transposed back to torch's (out, in)). The
rope axes are stored in the file's metadata (`axes_dim`), so configs that are not FLUX.1's
load without `config=`. The result is verified with the same header check as
`vmdiff convert --check`.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from vmdiff_jax.checkpoints import flux
from vmdiff_jax.checkpoints.files import CheckpointError, open_checkpoint, write_streaming
from vmdiff_jax.checkpoints.loader import check
from vmdiff_jax.checkpoints.rules import param_paths


def convert(src, dst, dtype: str | None = None) -> int:
    """Write `dst` from `src`; returns the number of tensors. dtype: 'BF16', 'F32', 'F16' or None (keep)."""
    ckpt = open_checkpoint(src)
    if flux.detect_layout(ckpt.keys()) is None:
        raise CheckpointError(f"{src}: not a FLUX transformer (no BFL or diffusers keys)")
    plan = flux.build(ckpt, scan_blocks=False)  # one parameter per BFL tensor
    problems = check(plan, ckpt)
    if problems:
        raise CheckpointError(f"{src}: {problems[0]}")
    cfg = plan.model.cfg
    out_rules = flux.bfl_rules(cfg, model=plan.model)  # our path -> BFL key (and its transposition)
    specs, by_key = [], {}
    for path, sd in param_paths(plan.model).items():
        (key,) = out_rules[path].sources
        src_dtype = ckpt[plan.rules[path].sources[0]].dtype
        shape = tuple(sd.shape)[::-1] if path.endswith(".kernel") else tuple(sd.shape)
        specs.append((key, shape, dtype or src_dtype))
        by_key[key] = path

    def produce(key):
        path = by_key[key]
        rule = plan.rules[path]
        a = rule.fn(np, *[ckpt.read(k, check_finite=True) for k in rule.sources])
        return np.transpose(a) if path.endswith(".kernel") else a

    write_streaming(dst, specs, produce, metadata={"format": "pt", "axes_dim": json.dumps(list(cfg.axes_dim))})
    out = open_checkpoint(dst)
    problems = check(flux.build(out), out)
    if problems:
        raise CheckpointError(f"{dst}: written file fails its check: {problems[0]}")
    return len(specs)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("src")
    ap.add_argument("dst")
    ap.add_argument("--dtype", choices=("BF16", "F32", "F16", "bf16", "f32", "f16"), default=None)
    a = ap.parse_args(argv)
    try:
        n = convert(a.src, a.dst, a.dtype.upper() if a.dtype else None)
    except CheckpointError as e:
        print(f"flux_to_bfl: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {a.dst}: {n} tensors in BFL layout")
    return 0


if __name__ == "__main__":
    sys.exit(main())

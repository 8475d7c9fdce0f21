"""fp8 FLUX checkpoints: plain and scaled float8 files, and quantizing at load.

`adapt(plan, ckpt)` rewrites the rules of a FLUX Plan (checkpoints/flux.py) for what the file
holds and what the model stores:

- a model with fp8 blocks (`Flux(fp8=True)`) gets each block kernel as float8_e4m3fn plus a
  float32 scale per output channel: a F8_E4M3 weight is taken as it is (its scale from the
  file, else 1: a plain fp8 file), any other float weight is quantized per output channel
  while streaming (quant.quantize; its source is read once for the kernel, once for the scale);
- a layer the model keeps in bf16/f32 whose weight the file scales is dequantized
  (weight * scale in float32) and cast.

Scaled files are ComfyUI's layout: `<layer>.weight` F8_E4M3 with `<layer>.scale_weight` (or
`<layer>.weight_scale` in newer files), a float32 scalar, (1,), (out,) or (out, 1); a
`scaled_fp8` marker tensor and per-layer input scales (`scale_input` / `input_scale`, for fp8
matmuls of activations) and `comfy_quant` descriptors are accounted for and not needed. Every
other key must be used, as for any checkpoint. Stacked blocks (rules.Stacked) are adapted
layer by layer: each layer's kernel has its own scale, from the file or quantized per channel.
"""

from __future__ import annotations

from typing import Iterable

import jax.numpy as jnp

from vmdiff_jax.checkpoints.files import Checkpoint, CheckpointError
from vmdiff_jax.checkpoints.loader import Plan
from vmdiff_jax.checkpoints.rules import Rule, Stacked, layers_of, param_paths
from vmdiff_jax.nn.quant import FP8, quantize

SCALE_SUFFIXES = (".scale_weight", ".weight_scale")
UNUSED_SUFFIXES = (".scale_input", ".input_scale", ".comfy_quant")
MARKER = "scaled_fp8"


def is_fp8(dtype) -> bool:
    """dtype names fp8 FLUX weights ("fp8", float8_e4m3fn)."""
    if isinstance(dtype, str):
        return dtype.lower() in ("fp8", "float8", "float8_e4m3fn", "f8_e4m3")
    try:
        return jnp.dtype(dtype) == FP8
    except TypeError:
        return False


def weight_scales(keys: Iterable[str]) -> dict[str, str]:
    """{layer: its scale key} of a scaled file ('double_blocks.0.img_attn.qkv' -> '....scale_weight')."""
    keys = set(keys)
    out: dict[str, str] = {}
    for k in sorted(keys):
        for suffix in SCALE_SUFFIXES:
            if k.endswith(suffix) and k[: -len(suffix)] + ".weight" in keys:
                layer = k[: -len(suffix)]
                if layer in out:
                    raise CheckpointError(f"layer {layer} has both {out[layer]} and {k}: one scale per weight")
                out[layer] = k
    return out


def _layer(rule: Rule) -> str | None:
    """The layer a single-source weight rule reads (`....qkv` for `....qkv.weight`)."""
    if len(rule.sources) == 1 and rule.sources[0].endswith(".weight"):
        return rule.sources[0][: -len(".weight")]
    return None


def _per_channel(out: int):
    """A file's scale ((), (1,), (out,) or (out, 1)) as our (out,) float32 scale."""
    return lambda xp, s: xp.broadcast_to(xp.reshape(s, (-1,)).astype(xp.float32), (out,))


def _ones(out: int):
    return lambda xp: xp.ones((out,), xp.float32)


def _dequantized(rule: Rule, scale_key: str) -> Rule:
    """rule applied to weight * scale (torch layout (out, in); scale per tensor or per `out`), in float32."""

    def fn(xp, w, s):
        return rule.fn(xp, w.astype(xp.float32) * xp.reshape(s, (-1, 1)).astype(xp.float32))

    return Rule(rule.sources + (scale_key,), fn)


def _quantized(rule: Rule, part: int) -> Rule:
    """Part 0 (float8 kernel) or 1 (float32 scale per output channel) of quantize(rule's kernel)."""

    def fn(xp, *arrays):
        return quantize(rule.fn(xp, *arrays))[part]

    return Rule(rule.sources, fn)


def _kernel_rules(rule: Rule, scale_key: str | None, fp8: bool, out: int, ckpt: Checkpoint) -> tuple[Rule, Rule | None]:
    """(kernel rule, scale rule or None) of one layer's kernel for what the file holds and the model stores."""
    src = _dequantized(rule, scale_key) if scale_key is not None else rule
    if not fp8:
        return src, None
    if _layer(rule) is not None and ckpt[rule.sources[0]].dtype == "F8_E4M3":  # taken as it is
        return rule, Rule((scale_key,), _per_channel(out)) if scale_key else Rule((), _ones(out))
    return _quantized(src, 0), _quantized(src, 1)


def adapt(plan: Plan, ckpt: Checkpoint) -> Plan:
    """`plan` (a FLUX Plan for `ckpt`) with the rules for fp8 storage and scaled fp8 files
    (a Stacked rule of stacked blocks: layer by layer)."""
    scales = weight_scales(ckpt.keys())
    params = param_paths(plan.model)
    rules = dict(plan.rules)
    for path, want in params.items():
        if not path.endswith(".kernel"):
            continue
        rule, fp8, out = rules[path], want.dtype == FP8, want.shape[-1]
        scale_path = path[: -len("kernel")] + "scale"

        def one(r: Rule) -> tuple[Rule, Rule | None]:
            layer = _layer(r)
            return _kernel_rules(r, scales.get(layer) if layer is not None else None, fp8, out, ckpt)

        if isinstance(rule, Stacked):
            pairs = [one(r) for r in rule.layers]
            rules[path] = Stacked(rule.names, tuple(k for k, _ in pairs))
            if fp8:
                names = tuple(n[: -len("kernel")] + "scale" for n in rule.names)
                rules[scale_path] = Stacked(names, tuple(sc for _, sc in pairs))
        else:
            rules[path], scale_rule = one(rule)
            if scale_rule is not None:
                rules[scale_path] = scale_rule
    layers = {_layer(r) for rule in plan.rules.values() for r in layers_of(rule)} - {None}

    def ignore(key: str) -> bool:
        if plan.ignore(key) or key == MARKER or key.endswith("." + MARKER):
            return True
        return any(key.endswith(s) and key[: -len(s)] in layers for s in UNUSED_SUFFIXES)

    return Plan(plan.model, rules, ignore)

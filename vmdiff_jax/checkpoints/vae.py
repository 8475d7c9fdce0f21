"""FLUX VAE checkpoints: BFL's `ae.safetensors` or a diffusers `vae/` folder.

Our parameter paths are BFL's module names (`vae.py`), so the BFL rules follow from the
paths (`rules.derive`: convs OIHW -> HWIO, GroupNorm `scale` <- `weight`, attention 1x1 convs
[C, C, 1, 1] -> Linear kernels). The diffusers layout renames the containing modules by one
explicit table (the inverse of diffusers' `convert_ldm_vae_checkpoint`):
`down.{i}.block.{j}` = `down_blocks.{i}.resnets.{j}`, decoder `up.{i}` = `up_blocks.{N-1-i}`,
`nin_shortcut` = `conv_shortcut`, attention `norm/q/k/v/proj_out` = `group_norm/to_q/to_k/to_v/
to_out.0` (stored as Linear [C, C]), `norm_out` = `conv_norm_out`.

The latent scaling and shift factors come from the diffusers config.json when there is one
(`scaling_factor`, `shift_factor`), else FLUX's 0.3611 / 0.1159; they are carried by the
loaded model's `cfg` (`AutoEncoder.cfg.scale_factor`). The sizes config.json gives (widths,
blocks per level, latent, input and output channels) must agree with the tensors and its
group count must divide every width (config_json.py), else one CheckpointError naming the
file and the field.
"""

from __future__ import annotations

import math
import numbers
from typing import Iterable

import jax.numpy as jnp
from flax import nnx

from vmdiff_jax.checkpoints import config_json
from vmdiff_jax.checkpoints.files import Checkpoint, CheckpointError
from vmdiff_jax.checkpoints.loader import Kind, Plan
from vmdiff_jax.checkpoints.rules import Rule, conv1x1_as_linear, derive, linear, param_paths
from vmdiff_jax.nn.vae import AutoEncoder, VAEConfig

BFL = "bfl"
DIFFUSERS = "diffusers"
_LEAVES = {"kernel": "weight", "scale": "weight"}  # GroupNorm scale is torch's weight

# Last path component of a leaf module, BFL -> diffusers (others keep their name).
_DIFFUSERS_LEAF = {
    "nin_shortcut": "conv_shortcut",
    "norm_out": "conv_norm_out",
    "norm": "group_norm",
    "q": "to_q",
    "k": "to_k",
    "v": "to_v",
    "proj_out": "to_out.0",
}


def abstract_vae(cfg: VAEConfig, dtype=jnp.bfloat16) -> AutoEncoder:
    """AutoEncoder with ShapeDtypeStruct parameters (nothing allocated)."""
    return nnx.eval_shape(lambda: AutoEncoder(cfg, dtype=dtype, param_dtype=dtype, rngs=nnx.Rngs(0)))


def bfl_rules(cfg: VAEConfig, model: AutoEncoder | None = None) -> dict[str, Rule]:
    """{our parameter path: Rule} for BFL `ae.safetensors` names (our module names)."""
    model = model if model is not None else abstract_vae(cfg, jnp.float32)
    return derive(param_paths(model), leaves=_LEAVES, linear_rule=conv1x1_as_linear)


def diffusers_table(cfg: VAEConfig) -> dict[str, str]:
    """{BFL container module: diffusers container module}; leaves are renamed by _DIFFUSERS_LEAF."""
    n = len(cfg.ch_mult)
    t = {"encoder": "encoder", "decoder": "decoder"}
    for part in ("encoder", "decoder"):
        t[f"{part}.mid.block_1"] = f"{part}.mid_block.resnets.0"
        t[f"{part}.mid.attn_1"] = f"{part}.mid_block.attentions.0"
        t[f"{part}.mid.block_2"] = f"{part}.mid_block.resnets.1"
    for i in range(n):
        for j in range(cfg.num_res_blocks):
            t[f"encoder.down.{i}.block.{j}"] = f"encoder.down_blocks.{i}.resnets.{j}"
        t[f"encoder.down.{i}.downsample"] = f"encoder.down_blocks.{i}.downsamplers.0"
        for j in range(cfg.num_res_blocks + 1):
            t[f"decoder.up.{i}.block.{j}"] = f"decoder.up_blocks.{n - 1 - i}.resnets.{j}"
        t[f"decoder.up.{i}.upsample"] = f"decoder.up_blocks.{n - 1 - i}.upsamplers.0"
    return t


def diffusers_rules(cfg: VAEConfig, model: AutoEncoder | None = None) -> dict[str, Rule]:
    """{our parameter path: Rule} for diffusers `AutoencoderKL` names (attention as Linear [C, C])."""
    table = diffusers_table(cfg)

    def rename(module: str) -> str:
        parent, leaf = module.rsplit(".", 1)
        return f"{table[parent]}.{_DIFFUSERS_LEAF.get(leaf, leaf)}"

    model = model if model is not None else abstract_vae(cfg, jnp.float32)
    return derive(param_paths(model), rename, leaves=_LEAVES, linear_rule=linear)


def _layout(keys: Iterable[str]) -> str | None:
    keys = set(keys)
    if "encoder.conv_in.weight" not in keys or "decoder.conv_in.weight" not in keys:
        return None
    if "encoder.down.0.block.0.conv1.weight" in keys:
        return BFL
    if "encoder.down_blocks.0.resnets.0.conv1.weight" in keys:
        return DIFFUSERS
    return None


def detect_layout(keys: Iterable[str]) -> str:
    """'bfl' (encoder.down.{i}.block.{j}) or 'diffusers' (encoder.down_blocks.{i}.resnets.{j}).

    Raises CheckpointError when the keys are neither FLUX VAE layout.
    """
    layout = _layout(keys)
    if layout is None:
        raise CheckpointError("not a VAE checkpoint: no encoder.conv_in.weight/decoder.conv_in.weight with "
                              "encoder.down.0.block.0.conv1.weight (BFL) or encoder.down_blocks.0.resnets.0.conv1.weight "
                              "(diffusers)")
    return layout


def _number(conf: dict, key: str, default, ckpt: Checkpoint, kind=numbers.Real):
    v = conf.get(key)
    if v is None:
        return default
    if not isinstance(v, kind) or isinstance(v, bool) or not math.isfinite(v):
        raise CheckpointError(f"{config_json.path_of(ckpt)}: {key} {v!r} is not a finite number")
    return v


def infer_config(ckpt: Checkpoint) -> VAEConfig:
    """The VAEConfig of a checkpoint, from its tensor shapes (headers only).

    norm_groups, scale_factor and shift_factor cannot be seen in shapes: they come from a
    diffusers config.json beside the weights when there is one, else norm_groups is 32 when
    every width is a multiple of 32 (FLUX) and gcd(32, widths) otherwise (a guess: pass
    `config=` to `load_vae` for such models), and the FLUX scale/shift are used.
    """
    layout = detect_layout(ckpt.keys())
    shape = ckpt.shape
    if layout == BFL:
        levels, res = "encoder.down.", "encoder.down.{i}.block.{j}.conv1.weight"
        nrb = ckpt.count_blocks("encoder.down.0.block.")
    else:
        levels, res = "encoder.down_blocks.", "encoder.down_blocks.{i}.resnets.{j}.conv1.weight"
        nrb = ckpt.count_blocks("encoder.down_blocks.0.resnets.")
    n = ckpt.count_blocks(levels)
    conv_in = shape("encoder.conv_in.weight", 4)
    ch = conv_in[0]
    widths = [shape(res.format(i=i, j=0), 4)[0] for i in range(n)]
    if ch <= 0 or any(w % ch or w <= 0 for w in widths):
        raise CheckpointError(f"{ckpt.source}: block widths {widths} are not multiples of conv_in's {ch}")
    z = shape("decoder.conv_in.weight", 4)[1]
    if shape("encoder.conv_out.weight", 4)[0] != 2 * z:
        raise CheckpointError(f"{ckpt.source}: encoder.conv_out.weight has {shape('encoder.conv_out.weight')[0]} "
                              f"outputs, expected 2 * {z} (mean, logvar)")
    groups = 32 if all(w % 32 == 0 for w in widths) else math.gcd(32, *widths)
    scale, shift = VAEConfig.scale_factor, VAEConfig.shift_factor
    conf = ckpt.config_json() if layout == DIFFUSERS else None
    if conf is not None and "block_out_channels" in conf:
        for field, actual, evidence in (("block_out_channels", widths, "encoder block conv1 widths"),
                                        ("layers_per_block", nrb, "resnets of encoder level 0"),
                                        ("latent_channels", z, "decoder.conv_in.weight"),
                                        ("in_channels", conv_in[1], "encoder.conv_in.weight"),
                                        ("out_channels", shape("decoder.conv_out.weight", 4)[0], "decoder.conv_out.weight")):
            config_json.agree(ckpt, conf, field, actual, evidence)
        for w in sorted({ch, *widths}):
            config_json.divides(ckpt, conf, "norm_num_groups", w, "the block width")
        groups = _number(conf, "norm_num_groups", groups, ckpt, numbers.Integral)
        scale = float(_number(conf, "scaling_factor", scale, ckpt))
        shift = float(_number(conf, "shift_factor", shift, ckpt))
    return VAEConfig(
        in_channels=conv_in[1],
        out_channels=shape("decoder.conv_out.weight", 4)[0],
        ch=ch,
        ch_mult=tuple(w // ch for w in widths),
        num_res_blocks=nrb,
        z_channels=z,
        norm_groups=groups,
        scale_factor=scale,
        shift_factor=shift,
    )


def _builder(layout: str):
    def build(ckpt: Checkpoint, *, dtype=jnp.bfloat16, strict: bool = True, config: VAEConfig | None = None) -> Plan:
        """The Plan for a FLUX VAE checkpoint; `config` overrides inference."""
        cfg = config or infer_config(ckpt)
        try:
            model = abstract_vae(cfg, dtype)
        except ValueError as e:  # e.g. widths that norm_groups does not divide
            raise CheckpointError(f"{ckpt.source}: {e}") from None
        return Plan(model, bfl_rules(cfg, model) if layout == BFL else diffusers_rules(cfg, model))

    return build


VAE_BFL = Kind("vae-bfl", lambda keys: _layout(keys) == BFL, _builder(BFL), jnp.bfloat16)
VAE_DIFFUSERS = Kind("vae-diffusers", lambda keys: _layout(keys) == DIFFUSERS, _builder(DIFFUSERS), jnp.bfloat16)

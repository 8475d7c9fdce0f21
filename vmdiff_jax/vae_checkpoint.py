"""Loading the FLUX VAE from BFL's `ae.safetensors` or a diffusers `vae/` folder.

Our parameter paths are BFL's module names (`vae.py`), so the BFL rules only transpose
(convs OIHW -> HWIO, attention 1x1 convs [C, C, 1, 1] -> Linear kernels). The diffusers
layout is one explicit renaming table (the inverse of diffusers' `convert_ldm_vae_checkpoint`):
`down.{i}.block.{j}` = `down_blocks.{i}.resnets.{j}`, decoder `up.{i}` = `up_blocks.{N-1-i}`,
`nin_shortcut` = `conv_shortcut`, attention `norm/q/k/v/proj_out` = `group_norm/to_q/to_k/to_v/
to_out.0` (stored as Linear [C, C]), `norm_out` = `conv_norm_out`.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Iterable

import jax.numpy as jnp
from flax import nnx

from vmdiff_jax import loading
from vmdiff_jax.loading import CheckpointKind, Rule
from vmdiff_jax.safetensors_io import Checkpoint, CheckpointError, open_checkpoint
from vmdiff_jax.vae import AutoEncoder, VAEConfig

BFL = "bfl"
DIFFUSERS = "diffusers"


def _leaf_modules(cfg: VAEConfig) -> list[tuple[str, str]]:
    """(BFL module name, kind) of every module holding parameters; kind: conv, norm or attn."""
    n = len(cfg.ch_mult)
    mods: list[tuple[str, str]] = []

    def resnet(name: str, cin: int, cout: int):
        mods.extend([(f"{name}.norm1", "norm"), (f"{name}.conv1", "conv"),
                     (f"{name}.norm2", "norm"), (f"{name}.conv2", "conv")])
        if cin != cout:
            mods.append((f"{name}.nin_shortcut", "conv"))

    def mid(part: str, c: int):
        resnet(f"{part}.mid.block_1", c, c)
        mods.append((f"{part}.mid.attn_1.norm", "norm"))
        mods.extend((f"{part}.mid.attn_1.{p}", "attn") for p in ("q", "k", "v", "proj_out"))
        resnet(f"{part}.mid.block_2", c, c)

    widths = [cfg.ch * m for m in cfg.ch_mult]
    mods.append(("encoder.conv_in", "conv"))
    cin = cfg.ch
    for i, cout in enumerate(widths):
        for j in range(cfg.num_res_blocks):
            resnet(f"encoder.down.{i}.block.{j}", cin, cout)
            cin = cout
        if i != n - 1:
            mods.append((f"encoder.down.{i}.downsample.conv", "conv"))
    mid("encoder", cin)
    mods.extend([("encoder.norm_out", "norm"), ("encoder.conv_out", "conv"), ("decoder.conv_in", "conv")])
    mid("decoder", cin)
    for i in reversed(range(n)):
        for j in range(cfg.num_res_blocks + 1):
            resnet(f"decoder.up.{i}.block.{j}", cin, widths[i])
            cin = widths[i]
        if i != 0:
            mods.append((f"decoder.up.{i}.upsample.conv", "conv"))
    mods.extend([("decoder.norm_out", "norm"), ("decoder.conv_out", "conv")])
    return mods


def _rules(cfg: VAEConfig, rename, attn_rule) -> dict[str, Rule]:
    rules: dict[str, Rule] = {}
    for name, kind in _leaf_modules(cfg):
        src = rename(name)
        if kind == "norm":
            rules[f"{name}.scale"] = loading.same(f"{src}.weight")
        elif kind == "conv":
            rules[f"{name}.kernel"] = loading.conv(f"{src}.weight")
        else:
            rules[f"{name}.kernel"] = attn_rule(f"{src}.weight")
        rules[f"{name}.bias"] = loading.same(f"{src}.bias")
    return rules


def _conv1x1_as_linear(key: str) -> Rule:
    """BFL attention 1x1 conv weight [C_out, C_in, 1, 1] -> Linear kernel (C_in, C_out)."""
    return Rule((key,), lambda xp, w: xp.transpose(w[:, :, 0, 0]))


def bfl_rules(cfg: VAEConfig) -> dict[str, Rule]:
    """{our parameter path: Rule} for BFL `ae.safetensors` names (our module names)."""
    return _rules(cfg, lambda name: name, _conv1x1_as_linear)


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


def diffusers_rules(cfg: VAEConfig) -> dict[str, Rule]:
    """{our parameter path: Rule} for diffusers `AutoencoderKL` names (attention as Linear [C, C])."""
    table = diffusers_table(cfg)

    def rename(name: str) -> str:
        parent, leaf = name.rsplit(".", 1)
        return f"{table[parent]}.{_DIFFUSERS_LEAF.get(leaf, leaf)}"

    return _rules(cfg, rename, loading.linear)


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


def _diffusers_config_json(ckpt: Checkpoint) -> dict | None:
    src = Path(ckpt.source)
    path = src / "config.json" if src.is_dir() else src.parent / "config.json"
    if not path.is_file():
        return None
    try:
        cfg = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: unreadable config.json ({e})") from None
    return cfg if isinstance(cfg, dict) and "block_out_channels" in cfg else None


def infer_config(ckpt: Checkpoint) -> VAEConfig:
    """The VAEConfig of a checkpoint, from its tensor shapes (headers only).

    norm_groups, scale_factor and shift_factor cannot be seen in shapes: they come from a
    diffusers config.json beside the weights when there is one, else norm_groups is 32 when
    every width is a multiple of 32 (FLUX) and gcd(32, widths) otherwise (a guess: pass
    `config=` to `load_vae` for such models), and the FLUX scale/shift are used.
    """
    layout = detect_layout(ckpt)

    def shape(key: str) -> tuple[int, ...]:
        if key not in ckpt:
            raise CheckpointError(f"{ckpt.source}: missing key {key} (needed to infer the VAE config)")
        return tuple(ckpt[key].shape)

    if layout == BFL:
        res = "encoder.down.{i}.block.{j}.conv1.weight"
    else:
        res = "encoder.down_blocks.{i}.resnets.{j}.conv1.weight"
    n = 0
    while res.format(i=n, j=0) in ckpt:
        n += 1
    nrb = 0
    while res.format(i=0, j=nrb) in ckpt:
        nrb += 1
    conv_in = shape("encoder.conv_in.weight")
    ch = conv_in[0]
    widths = [shape(res.format(i=i, j=0))[0] for i in range(n)]
    if any(w % ch for w in widths):
        raise CheckpointError(f"{ckpt.source}: block widths {widths} are not multiples of conv_in's {ch}")
    z = shape("decoder.conv_in.weight")[1]
    if shape("encoder.conv_out.weight")[0] != 2 * z:
        raise CheckpointError(f"{ckpt.source}: encoder.conv_out.weight has {shape('encoder.conv_out.weight')[0]} "
                              f"outputs, expected 2 * {z} (mean, logvar)")
    groups = 32 if all(w % 32 == 0 for w in widths) else math.gcd(32, *widths)
    scale, shift = VAEConfig.scale_factor, VAEConfig.shift_factor
    meta = _diffusers_config_json(ckpt) if layout == DIFFUSERS else None
    if meta is not None:
        groups = int(meta.get("norm_num_groups", groups))
        scale = float(meta.get("scaling_factor") or scale)
        shift = float(meta.get("shift_factor") or shift)
    return VAEConfig(
        in_channels=conv_in[1],
        out_channels=shape("decoder.conv_out.weight")[0],
        ch=ch,
        ch_mult=tuple(w // ch for w in widths),
        num_res_blocks=nrb,
        z_channels=z,
        norm_groups=groups,
        scale_factor=scale,
        shift_factor=shift,
    )


def _build(ckpt: Checkpoint, layout: str, config: VAEConfig | None = None, dtype=jnp.bfloat16):
    cfg = config or infer_config(ckpt)
    model = nnx.eval_shape(lambda: AutoEncoder(cfg, dtype=dtype, param_dtype=dtype, rngs=nnx.Rngs(0)))
    rules = bfl_rules(cfg) if layout == BFL else diffusers_rules(cfg)
    return model, rules, lambda k: False


def load_vae(path: str | os.PathLike, dtype=jnp.bfloat16, *, config: VAEConfig | None = None) -> AutoEncoder:
    """An AutoEncoder (params and compute in `dtype`) from BFL `ae.safetensors` or a diffusers `vae/`
    folder (config.json + diffusion_pytorch_model.safetensors). Raises CheckpointError naming the key."""
    ckpt = open_checkpoint(path)
    layout = detect_layout(ckpt)
    model, rules, ignore = _build(ckpt, layout, config, dtype)
    return loading.fill(model, rules, ckpt, dtype=dtype, ignore=ignore)


VAE_BFL = CheckpointKind("vae-bfl", lambda keys: _layout(keys) == BFL, lambda ckpt: _build(ckpt, BFL))
VAE_DIFFUSERS = CheckpointKind("vae-diffusers", lambda keys: _layout(keys) == DIFFUSERS,
                               lambda ckpt: _build(ckpt, DIFFUSERS))

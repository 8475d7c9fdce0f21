"""Writing checkpoints in the real layouts: the inverse of the loaders.

Each `Rule` carries its inverse (param -> the checkpoint tensors it is made from), so a model
and the rules its loader uses give back the checkpoint's tensors: `tensors(model, rules)`.
`save` writes them with our streaming safetensors writer (files.write_streaming); the
config.json writers give what the loaders read besides shapes (heads, activation, norm eps,
EOS id, the VAE's latent scale and shift). Round trip: loading what `save` wrote through the
ordinary loaders gives the model back exactly (tests/test_export.py).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Mapping

import numpy as np
from flax import nnx

from vmdiff_jax.checkpoints.files import CheckpointError, write_streaming
from vmdiff_jax.checkpoints.rules import Rule
from vmdiff_jax.nn.vae import VAEConfig
from vmdiff_jax.nn.vit_config import ViTConfig

_HF_ACT = {"gelu_tanh": "gelu_pytorch_tanh", "gelu": "gelu", "quick_gelu": "quick_gelu"}


def tensors(model: nnx.Module, rules: Mapping[str, Rule]) -> dict[str, np.ndarray]:
    """{checkpoint key: float32 array} that `rules` turn back into `model`'s parameters."""
    out: dict[str, np.ndarray] = {}
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        name = ".".join(str(p) for p in path)
        rule = rules.get(name)
        if rule is None or rule.inverse is None:
            raise CheckpointError(f"parameter {name}: no invertible rule in this layout")
        value = np.asarray(var.get_value(), np.float32)
        for key, a in zip(rule.sources, rule.inverse(np, value), strict=True):
            if key in out:
                raise CheckpointError(f"key {key} made twice (parameters {name} and another)")
            out[key] = np.ascontiguousarray(a)
    missing = set(rules) - {".".join(str(p) for p in path) for path, _ in nnx.to_flat_state(nnx.state(model, nnx.Param))}
    if missing:
        raise CheckpointError(f"rules for parameters the model lacks: {sorted(missing)[:3]}")
    return out


def save(path: str | os.PathLike, model: nnx.Module, rules: Mapping[str, Rule],
         metadata: Mapping[str, str] | None = None) -> Path:
    """Write `model` as one float32 safetensors file in the layout of `rules`; returns the path."""
    arrays = tensors(model, rules)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    specs = [(k, arrays[k].shape, "F32") for k in sorted(arrays)]
    write_streaming(path, specs, arrays.__getitem__, metadata)
    return path


def write_json(path: str | os.PathLike, obj: dict) -> Path:
    """A config.json (sorted keys, indented), written whole."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)
    return path


def _tower(c: ViTConfig) -> dict:
    d = {"hidden_size": c.width, "num_hidden_layers": c.depth, "num_attention_heads": c.heads,
         "intermediate_size": c.mlp_dim, "hidden_act": _HF_ACT[c.activation], "layer_norm_eps": c.norm_eps}
    if c.is_text:
        d |= {"vocab_size": c.vocab_size, "max_position_embeddings": c.context_length,
              "eos_token_id": 2 if c.eos_token_id is None else c.eos_token_id}
    else:
        d |= {"patch_size": c.patch_size, "image_size": c.image_size, "num_channels": 3}
    return d


def siglip_config(c: ViTConfig) -> dict:
    """transformers SiglipVisionConfig of a tower."""
    return {"model_type": "siglip_vision_model", **_tower(c)}


def clip_text_config(c: ViTConfig) -> dict:
    """transformers CLIPTextConfig (FLUX's text_encoder)."""
    return {"model_type": "clip_text_model", "projection_dim": c.proj_dim or c.width, **_tower(c)}


def dinov2_config(c: ViTConfig) -> dict:
    """transformers Dinov2Config."""
    return {"model_type": "dinov2", "use_swiglu_ffn": False, "mlp_ratio": c.mlp_dim / c.width, **_tower(c)}


def clip_config(vision: ViTConfig, text: ViTConfig) -> dict:
    """transformers CLIPConfig of both towers (CLIPModel layout)."""
    if vision.proj_dim != text.proj_dim:
        raise ValueError(f"the towers project to {vision.proj_dim} and {text.proj_dim}: one embedding space needs one")
    return {"model_type": "clip", "projection_dim": vision.proj_dim,
            "vision_config": _tower(vision), "text_config": _tower(text)}


def vae_config(c: VAEConfig) -> dict:
    """diffusers AutoencoderKL config.json (latent scale and shift included)."""
    n = len(c.ch_mult)
    return {"_class_name": "AutoencoderKL", "in_channels": c.in_channels, "out_channels": c.out_channels,
            "block_out_channels": [c.ch * m for m in c.ch_mult], "layers_per_block": c.num_res_blocks,
            "latent_channels": c.z_channels, "norm_num_groups": c.norm_groups,
            "scaling_factor": c.scale_factor, "shift_factor": c.shift_factor,
            "down_block_types": ["DownEncoderBlock2D"] * n, "up_block_types": ["UpDecoderBlock2D"] * n,
            "act_fn": "silu", "use_quant_conv": False, "use_post_quant_conv": False}

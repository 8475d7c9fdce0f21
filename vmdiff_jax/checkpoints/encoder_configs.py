"""Encoder configs (SigLIP, CLIP-L text, DINOv2, CLIP bigG) from a checkpoint's tensor shapes.

Depth, width, MLP size, patch, image size, vocabulary and context come from the shapes; heads,
activation and norm eps from config.json when the checkpoint is a transformers folder (or a
file beside its config.json), else from the preset of that width. Every size config.json
gives must agree with the tensors and its head count must divide the width (config_json.py):
else one CheckpointError naming the file and the field, in loading and in `convert --check`.
"""

from __future__ import annotations

import dataclasses
import math

from vmdiff_jax.checkpoints import config_json
from vmdiff_jax.checkpoints.files import Checkpoint, CheckpointError
from vmdiff_jax.nn import vit
from vmdiff_jax.nn.vit import ViTConfig


def check_heads(ckpt: Checkpoint, c: ViTConfig, what: str = "config") -> None:
    """A config's heads must divide its width (the attention reshape)."""
    if not isinstance(c.heads, int) or c.heads < 1 or c.width % c.heads:
        raise CheckpointError(f"{ckpt.source}: {what} has {c.heads!r} heads, which do not divide its width {c.width}")


_ACT = {"gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu", "quick_gelu": "quick_gelu"}
# transformers' class defaults, for config.json files that omit a value
_HF_DEFAULTS = {
    "siglip_vision_model": dict(num_attention_heads=12, hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6),
    "clip_text_model": dict(num_attention_heads=8, hidden_act="quick_gelu", layer_norm_eps=1e-5, eos_token_id=49407),
    "clip_vision_model": dict(num_attention_heads=12, hidden_act="quick_gelu", layer_norm_eps=1e-5),
    "dinov2": dict(num_attention_heads=12, hidden_act="gelu", layer_norm_eps=1e-6, use_swiglu_ffn=False),
}
# which section of which config.json holds a tower: {top-level model_type: section or None}
_HF_SECTIONS = {
    "siglip_vision_model": {"siglip": "vision_config", "siglip_vision_model": None},
    "clip_text_model": {"clip": "text_config", "clip_text_model": None},
    "clip_vision_model": {"clip": "vision_config", "clip_vision_model": None},
    "dinov2": {"dinov2": None},
}


class HFConfig(dict):
    """A tower's transformers config (class defaults filled in); `section`: where it is in
    config.json (None: the top level; "vision_config", "text_config")."""

    def __init__(self, values: dict, section: str | None):
        super().__init__(values)
        self.section = section


def _hf_config(ckpt: Checkpoint, tower: str) -> HFConfig | None:
    """The tower's transformers config from the checkpoint's config.json; None when there is
    none of a matching model_type."""
    d = ckpt.config_json()
    if d is None:
        return None
    sections = _HF_SECTIONS[tower]
    if d.get("model_type") not in sections:
        return None
    section = sections[d["model_type"]]
    sub = (d.get(section) or {}) if section else d
    if not isinstance(sub, dict):
        raise CheckpointError(f"{config_json.path_of(ckpt)}: {section} is not an object")
    return HFConfig({**_HF_DEFAULTS[tower], **sub}, section)


# config.json fields that the tensors' shapes decide: {transformers field: ViTConfig field}
_SIZES = {"hidden_size": "width", "num_hidden_layers": "depth", "intermediate_size": "mlp_dim",
          "patch_size": "patch_size", "vocab_size": "vocab_size", "max_position_embeddings": "context_length"}


def _check_sizes(ckpt: Checkpoint, hf: HFConfig, c: ViTConfig) -> None:
    """Every size config.json gives must be what the tensors give; its heads must divide the width."""
    for field, ours in _SIZES.items():
        if getattr(c, ours) is not None:
            config_json.agree(ckpt, hf, field, getattr(c, ours), f"{ours} from the tensors' shapes", hf.section)
    config_json.divides(ckpt, hf, "num_attention_heads", c.width, "the width", hf.section)
    if c.patch_size is not None:
        size = config_json.integer(ckpt, hf, "image_size", hf.section, minimum=1)
        if size is not None and size // c.patch_size != c.grid:
            raise CheckpointError(f"{config_json.path_of(ckpt)}: {hf.section + '.' if hf.section else ''}image_size = "
                                  f"{size} gives a {size // c.patch_size}-patch grid but the position embeddings hold "
                                  f"{c.grid} x {c.grid}")
        config_json.agree(ckpt, hf, "num_channels", 3, "RGB patch embedding", hf.section)


def _depth(ckpt: Checkpoint, prefix: str) -> int:
    """Number of blocks `prefix{i}.*` (at least one)."""
    n = ckpt.count_blocks(prefix)
    if not n:
        raise CheckpointError(f"{ckpt.source}: no blocks {prefix}0.* found")
    return n


def _grid(ckpt: Checkpoint, n: int, key: str) -> int:
    g = math.isqrt(n)
    if g * g != n:
        raise CheckpointError(f"{ckpt.source}: {key} has {n} grid positions, not a square")
    return g


def _image_size(base: ViTConfig, grid: int, patch: int) -> int:
    """The preset's image size when it gives this grid (so400m: 384 // 14 = 27), else grid * patch."""
    return base.image_size if base.image_size // patch == grid else grid * patch


def _finish(base: ViTConfig, ckpt: Checkpoint, hf: dict | None, strict: bool, **shapes) -> ViTConfig:
    """`base` with the shapes read from the checkpoint, and heads/activation/eps from config.json
    (hf) or from `base` when the width is the preset's. strict=False (structure checks only,
    where heads do not matter) falls back to one head."""
    c = dataclasses.replace(base, **shapes)
    if hf is not None:
        _check_sizes(ckpt, hf, c)
        act = hf["hidden_act"]
        for key in ("num_attention_heads", "layer_norm_eps"):
            if not isinstance(hf[key], (int, float)) or isinstance(hf[key], bool) or hf[key] <= 0:
                raise CheckpointError(f"{config_json.path_of(ckpt)}: {key} {hf[key]!r} is not a positive number")
        if not isinstance(hf["num_attention_heads"], int):
            raise CheckpointError(f"{config_json.path_of(ckpt)}: num_attention_heads {hf['num_attention_heads']!r} "
                                  "is not an integer")
        if not isinstance(act, str) or act not in _ACT:
            raise CheckpointError(f"{config_json.path_of(ckpt)}: hidden_act {act!r} not supported")
        if hf.get("use_swiglu_ffn"):
            raise CheckpointError(f"{config_json.path_of(ckpt)}: use_swiglu_ffn=True (DINOv2 giant) not supported")
        extra = {}
        if c.is_text:
            eos = hf.get("eos_token_id")
            if not isinstance(eos, int) or isinstance(eos, bool):
                raise CheckpointError(f"{config_json.path_of(ckpt)}: eos_token_id {eos!r} is not one integer")
            extra["eos_token_id"] = None if eos == 2 else eos  # transformers: 2 = legacy, argmax of ids
        return dataclasses.replace(c, heads=hf["num_attention_heads"], activation=_ACT[act],
                                   norm_eps=hf["layer_norm_eps"], **extra)
    if c.width == base.width:
        return c
    if strict:
        raise CheckpointError(f"{ckpt.source}: cannot infer the number of heads for width {c.width} "
                              "(no config.json, no preset of that width); pass config=")
    return dataclasses.replace(c, heads=1)


def _prefix(ckpt: Checkpoint, probe: str, prefix: str) -> str:
    """`prefix` if the hub-named `prefix + probe` is there, '' if the unprefixed name is."""
    if prefix + probe in ckpt:
        return prefix
    if probe in ckpt:
        return ""
    raise CheckpointError(f"{ckpt.source}: missing key {prefix + probe}")


def infer_siglip_config(ckpt: Checkpoint, prefix: str, strict: bool = True) -> ViTConfig:
    p = prefix
    w, _, ph, _ = ckpt.shape(p + "embeddings.patch_embedding.weight", 4)
    n = ckpt.shape(p + "embeddings.position_embedding.weight")[0]
    g = _grid(ckpt, n, p + "embeddings.position_embedding.weight")
    base = vit.ViTConfig.siglip_so400m()
    return _finish(base, ckpt, _hf_config(ckpt, "siglip_vision_model"), strict,
                   width=w, depth=_depth(ckpt, p + "encoder.layers."),
                   mlp_dim=ckpt.shape(p + "encoder.layers.0.mlp.fc1.weight")[0], patch_size=ph,
                   image_size=_image_size(base, g, ph), pool="map" if p + "head.probe" in ckpt else "none")


def infer_clip_text_config(ckpt: Checkpoint, prefix: str, base: ViTConfig, strict: bool = True,
                           proj_key: str | None = None) -> ViTConfig:
    p = prefix
    v, w = ckpt.shape(p + "embeddings.token_embedding.weight", 2)
    return _finish(base, ckpt, _hf_config(ckpt, "clip_text_model"), strict,
                   width=w, vocab_size=v, depth=_depth(ckpt, p + "encoder.layers."),
                   context_length=ckpt.shape(p + "embeddings.position_embedding.weight")[0],
                   mlp_dim=ckpt.shape(p + "encoder.layers.0.mlp.fc1.weight")[0],
                   proj_dim=ckpt.shape(proj_key)[0] if proj_key else None)


def infer_dinov2_config(ckpt: Checkpoint, strict: bool = True) -> ViTConfig:
    w, _, ph, _ = ckpt.shape("embeddings.patch_embeddings.projection.weight", 4)
    n = ckpt.shape("embeddings.position_embeddings", 3)[1] - 1
    g = _grid(ckpt, n, "embeddings.position_embeddings")
    base = vit.ViTConfig.dinov2_base()
    return _finish(base, ckpt, _hf_config(ckpt, "dinov2"), strict,
                   width=w, depth=_depth(ckpt, "encoder.layer."), patch_size=ph, image_size=_image_size(base, g, ph),
                   mlp_dim=ckpt.shape("encoder.layer.0.mlp.fc1.weight")[0])


def infer_openclip_configs(ckpt: Checkpoint, strict: bool = True) -> tuple[ViTConfig, ViTConfig]:
    w, _, ph, _ = ckpt.shape("visual.conv1.weight", 4)
    g = _grid(ckpt, ckpt.shape("visual.positional_embedding")[0] - 1, "visual.positional_embedding")
    vision = _finish(vit.ViTConfig.clip_bigg_vision(), ckpt, None, strict, width=w, patch_size=ph,
                     image_size=_image_size(vit.ViTConfig.clip_bigg_vision(), g, ph),
                     depth=_depth(ckpt, "visual.transformer.resblocks."),
                     mlp_dim=ckpt.shape("visual.transformer.resblocks.0.mlp.c_fc.weight")[0],
                     proj_dim=ckpt.shape("visual.proj", 2)[1])
    v, tw = ckpt.shape("token_embedding.weight", 2)
    text = _finish(vit.ViTConfig.clip_bigg_text(), ckpt, None, strict, width=tw, vocab_size=v,
                   context_length=ckpt.shape("positional_embedding")[0],
                   depth=_depth(ckpt, "transformer.resblocks."),
                   mlp_dim=ckpt.shape("transformer.resblocks.0.mlp.c_fc.weight")[0],
                   proj_dim=ckpt.shape("text_projection", 2)[1])
    return vision, text


def infer_hf_clip_configs(ckpt: Checkpoint, strict: bool = True) -> tuple[ViTConfig, ViTConfig]:
    p = "vision_model."
    w, _, ph, _ = ckpt.shape(p + "embeddings.patch_embedding.weight", 4)
    g = _grid(ckpt, ckpt.shape(p + "embeddings.position_embedding.weight")[0] - 1,
              p + "embeddings.position_embedding.weight")
    vision = _finish(vit.ViTConfig.clip_bigg_vision(), ckpt, _hf_config(ckpt, "clip_vision_model"), strict,
                     width=w, patch_size=ph, image_size=_image_size(vit.ViTConfig.clip_bigg_vision(), g, ph),
                     depth=_depth(ckpt, p + "encoder.layers."),
                     mlp_dim=ckpt.shape(p + "encoder.layers.0.mlp.fc1.weight")[0],
                     proj_dim=ckpt.shape("visual_projection.weight")[0])
    text = infer_clip_text_config(ckpt, "text_model.", vit.ViTConfig.clip_bigg_text(), strict, proj_key="text_projection.weight")
    top = ckpt.config_json()
    if top is not None and top.get("model_type") == "clip":
        config_json.agree(ckpt, top, "projection_dim", vision.proj_dim, "visual_projection.weight")
    return vision, text

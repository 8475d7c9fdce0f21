"""Encoder checkpoints (SigLIP, Redux, CLIP-L text, DINOv2, CLIP ViT-bigG-14) -> vit.py / redux.py models.

Each layout is one table from our parameter paths (documented in vit.py) to the keys of the
files as they are published (hub names):

- SigLIP (google/siglip-so400m-patch14-384, a whole SiglipModel): `vision_model.` + embeddings.*,
  encoder.layers.{i}.*, post_layernorm, head.*; text_model.*, logit_scale and logit_bias are
  ignored. Also read without the prefix (a SiglipVisionModel saved by transformers 5).
- Redux (flux1-redux-dev.safetensors, diffusers ReduxImageEncoder): redux_up, redux_down.
- CLIP text (CLIPTextModel / CLIPModel, FLUX's text_encoder): `text_model.` + ... (or no
  prefix); position_ids, text_projection and any vision tower are ignored.
- DINOv2 (facebook/dinov2-base): legacy names embeddings.*, encoder.layer.{i}.attention.attention.
  query|key|value, attention.output.dense, layer_scale{1,2}.lambda1, layernorm; mask_token ignored.
- CLIP bigG, open_clip layout (open_clip_model.safetensors): visual.*, transformer.resblocks.{i}.*
  with fused attn.in_proj_weight, token_embedding, positional_embedding, ln_final, text_projection
  and visual.proj used as x @ proj (not transposed); logit_scale ignored.
- CLIP bigG, transformers CLIPModel layout: vision_model.*, text_model.*, visual_projection,
  text_projection (Linear, transposed); logit_scale ignored.

Configs are inferred from shapes (depth, width, MLP size, patch, image size, vocabulary,
context); heads, activation and norm eps come from config.json when the checkpoint is a
transformers folder (or a file beside its config.json), else from the preset of that width.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Callable

import jax.numpy as jnp
from flax import nnx

from vmdiff_jax import vit
from vmdiff_jax.loading import CheckpointKind, Rule, cat, conv, fill, linear, linear_cat, same
from vmdiff_jax.redux import ReduxEncoder, ReduxProjector
from vmdiff_jax.safetensors_io import Checkpoint, CheckpointError, open_checkpoint
from vmdiff_jax.vit import CLIP, TextTransformer, VisionTransformer, ViTConfig

Rules = dict[str, Rule]

# ----------------------------------------------------------------------------- rule helpers


def _ln(ours: str, src: str) -> Rules:
    return {f"{ours}.scale": same(f"{src}.weight"), f"{ours}.bias": same(f"{src}.bias")}


def _lin(ours: str, src: str) -> Rules:
    return {f"{ours}.kernel": linear(f"{src}.weight"), f"{ours}.bias": same(f"{src}.bias")}


def _vector(key: str) -> Rule:
    """(1, 1, W) or (W,) -> (W,) (class token, probe)."""
    return Rule((key,), lambda xp, a: xp.reshape(a, a.shape[-1:]))


def _unbatch(key: str) -> Rule:
    """(1, N, W) -> (N, W) (DINOv2 position embeddings)."""
    return Rule((key,), lambda xp, a: xp.reshape(a, a.shape[1:]))


def _hf_block(p: str) -> Rules:
    """transformers CLIP / SigLIP encoder layer `p` = '...encoder.layers.{i}.'."""
    qkv = [f"{p}self_attn.{n}_proj" for n in "qkv"]
    return {**_ln("norm1", p + "layer_norm1"),
            "attn.qkv.kernel": linear_cat([f"{k}.weight" for k in qkv]),
            "attn.qkv.bias": cat([f"{k}.bias" for k in qkv]),
            **_lin("attn.out", p + "self_attn.out_proj"),
            **_ln("norm2", p + "layer_norm2"),
            **_lin("mlp.fc1", p + "mlp.fc1"), **_lin("mlp.fc2", p + "mlp.fc2")}


def _dinov2_block(p: str) -> Rules:
    """transformers Dinov2Layer, legacy hub names, `p` = 'encoder.layer.{i}.'."""
    qkv = [f"{p}attention.attention.{n}" for n in ("query", "key", "value")]
    return {**_ln("norm1", p + "norm1"),
            "attn.qkv.kernel": linear_cat([f"{k}.weight" for k in qkv]),
            "attn.qkv.bias": cat([f"{k}.bias" for k in qkv]),
            **_lin("attn.out", p + "attention.output.dense"),
            "ls1": same(p + "layer_scale1.lambda1"), "ls2": same(p + "layer_scale2.lambda1"),
            **_ln("norm2", p + "norm2"),
            **_lin("mlp.fc1", p + "mlp.fc1"), **_lin("mlp.fc2", p + "mlp.fc2")}


def _openclip_block(p: str) -> Rules:
    """open_clip ResidualAttentionBlock `p` = '...transformer.resblocks.{i}.' (fused in_proj = q|k|v)."""
    return {**_ln("norm1", p + "ln_1"),
            "attn.qkv.kernel": linear(p + "attn.in_proj_weight"), "attn.qkv.bias": same(p + "attn.in_proj_bias"),
            **_lin("attn.out", p + "attn.out_proj"),
            **_ln("norm2", p + "ln_2"),
            **_lin("mlp.fc1", p + "mlp.c_fc"), **_lin("mlp.fc2", p + "mlp.c_proj")}


def _blocks(depth: int, block: Callable[[str], Rules], src: str) -> Rules:
    return {f"encoder.blocks.{i}.{k}": r for i in range(depth) for k, r in block(f"{src}{i}.").items()}


def _under(prefix: str, rules: Rules) -> Rules:
    return {f"{prefix}{k}": r for k, r in rules.items()}


# ----------------------------------------------------------------------------- rules per layout


def siglip_rules(c: ViTConfig, prefix: str = "vision_model.") -> Rules:
    p, h = prefix, prefix + "head."
    r = {"patch_embed.kernel": conv(p + "embeddings.patch_embedding.weight"),
         "patch_embed.bias": same(p + "embeddings.patch_embedding.bias"),
         "pos_embed": same(p + "embeddings.position_embedding.weight"),
         **_blocks(c.depth, _hf_block, p + "encoder.layers."),
         **_ln("norm", p + "post_layernorm")}
    if c.pool == "map":
        r |= {"head.probe": _vector(h + "probe"),
              "head.attn.qkv.kernel": linear(h + "attention.in_proj_weight"),
              "head.attn.qkv.bias": same(h + "attention.in_proj_bias"),
              **_lin("head.attn.out", h + "attention.out_proj"),
              **_ln("head.norm", h + "layernorm"),
              **_lin("head.mlp.fc1", h + "mlp.fc1"), **_lin("head.mlp.fc2", h + "mlp.fc2")}
    return r


def redux_rules() -> Rules:
    return {**_lin("redux_up", "redux_up"), **_lin("redux_down", "redux_down")}


def clip_text_rules(c: ViTConfig, prefix: str = "text_model.") -> Rules:
    """transformers CLIPTextModel; with proj_dim, CLIPModel's text_projection (a Linear)."""
    p = prefix
    r = {"token_embed.embedding": same(p + "embeddings.token_embedding.weight"),
         "pos_embed": same(p + "embeddings.position_embedding.weight"),
         **_blocks(c.depth, _hf_block, p + "encoder.layers."),
         **_ln("norm", p + "final_layer_norm")}
    if c.proj_dim:
        r["proj.kernel"] = linear("text_projection.weight")
    return r


def clip_vision_rules(c: ViTConfig, prefix: str = "vision_model.") -> Rules:
    """transformers CLIPVisionModel (+ CLIPModel's visual_projection when proj_dim)."""
    p = prefix
    r = {"patch_embed.kernel": conv(p + "embeddings.patch_embedding.weight"),
         "cls_token": _vector(p + "embeddings.class_embedding"),
         "pos_embed": same(p + "embeddings.position_embedding.weight"),
         **_ln("norm_pre", p + "pre_layrnorm"),  # sic: transformers' name
         **_blocks(c.depth, _hf_block, p + "encoder.layers."),
         **_ln("norm", p + "post_layernorm")}
    if c.proj_dim:
        r["proj.kernel"] = linear("visual_projection.weight")
    return r


def dinov2_rules(c: ViTConfig) -> Rules:
    e = "embeddings."
    return {"patch_embed.kernel": conv(e + "patch_embeddings.projection.weight"),
            "patch_embed.bias": same(e + "patch_embeddings.projection.bias"),
            "cls_token": _vector(e + "cls_token"),
            "pos_embed": _unbatch(e + "position_embeddings"),
            **_blocks(c.depth, _dinov2_block, "encoder.layer."),
            **_ln("norm", "layernorm")}


def openclip_rules(vision: ViTConfig, text: ViTConfig) -> Rules:
    """open_clip CLIP (both towers) -> vit.CLIP; projections are (width, embed), used as is."""
    v = {"patch_embed.kernel": conv("visual.conv1.weight"),
         "cls_token": _vector("visual.class_embedding"),
         "pos_embed": same("visual.positional_embedding"),
         **_ln("norm_pre", "visual.ln_pre"),
         **_blocks(vision.depth, _openclip_block, "visual.transformer.resblocks."),
         **_ln("norm", "visual.ln_post"),
         "proj.kernel": same("visual.proj")}
    t = {"token_embed.embedding": same("token_embedding.weight"),
         "pos_embed": same("positional_embedding"),
         **_blocks(text.depth, _openclip_block, "transformer.resblocks."),
         **_ln("norm", "ln_final"),
         "proj.kernel": same("text_projection")}
    return {**_under("visual.", v), **_under("text.", t)}


def hf_clip_rules(vision: ViTConfig, text: ViTConfig) -> Rules:
    """transformers CLIPModel (both towers) -> vit.CLIP."""
    return {**_under("visual.", clip_vision_rules(vision)), **_under("text.", clip_text_rules(text))}


# ----------------------------------------------------------------------------- config inference

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


def _hf_config(source: Path, tower: str) -> dict | None:
    """The tower's transformers config (class defaults filled in), from config.json in the
    checkpoint folder (or beside the file); None when there is none of a matching model_type."""
    folder = source if source.is_dir() else source.parent
    f = folder / "config.json"
    if not f.is_file():
        return None
    try:
        d = json.loads(f.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{f}: corrupt config.json ({e})") from None
    sections = _HF_SECTIONS[tower]
    if d.get("model_type") not in sections:
        return None
    section = sections[d["model_type"]]
    sub = (d.get(section) or {}) if section else d
    return {**_HF_DEFAULTS[tower], **sub}


def _shape(ckpt: Checkpoint, key: str) -> tuple[int, ...]:
    if key not in ckpt:
        raise CheckpointError(f"{ckpt.source}: missing key {key}")
    return tuple(ckpt[key].shape)


def _depth(ckpt: Checkpoint, prefix: str) -> int:
    """Number of blocks `prefix{i}.*`; they must be numbered 0..n-1."""
    idx = {int(k[len(prefix):].split(".")[0]) for k in ckpt if k.startswith(prefix) and k[len(prefix):][:1].isdigit()}
    if not idx:
        raise CheckpointError(f"{ckpt.source}: no blocks {prefix}0.* found")
    missing = sorted(set(range(max(idx) + 1)) - idx)
    if missing:
        raise CheckpointError(f"{ckpt.source}: block {prefix}{missing[0]}.* is missing")
    return max(idx) + 1


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
        act = hf["hidden_act"]
        if act not in _ACT:
            raise CheckpointError(f"{ckpt.source}: config.json hidden_act {act!r} not supported")
        if hf.get("use_swiglu_ffn"):
            raise CheckpointError(f"{ckpt.source}: config.json use_swiglu_ffn=True (DINOv2 giant) not supported")
        extra = {}
        if c.is_text:
            eos = hf.get("eos_token_id")
            if not isinstance(eos, int):
                raise CheckpointError(f"{ckpt.source}: config.json eos_token_id {eos!r} is not one integer")
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
    w, _, ph, _ = _shape(ckpt, p + "embeddings.patch_embedding.weight")
    n = _shape(ckpt, p + "embeddings.position_embedding.weight")[0]
    g = _grid(ckpt, n, p + "embeddings.position_embedding.weight")
    base = vit.siglip_so400m_384()
    return _finish(base, ckpt, _hf_config(ckpt.source, "siglip_vision_model"), strict,
                   width=w, depth=_depth(ckpt, p + "encoder.layers."),
                   mlp_dim=_shape(ckpt, p + "encoder.layers.0.mlp.fc1.weight")[0], patch_size=ph,
                   image_size=_image_size(base, g, ph), pool="map" if p + "head.probe" in ckpt else "none")


def infer_clip_text_config(ckpt: Checkpoint, prefix: str, base: ViTConfig, strict: bool = True,
                           proj_key: str | None = None) -> ViTConfig:
    p = prefix
    v, w = _shape(ckpt, p + "embeddings.token_embedding.weight")
    return _finish(base, ckpt, _hf_config(ckpt.source, "clip_text_model"), strict,
                   width=w, vocab_size=v, depth=_depth(ckpt, p + "encoder.layers."),
                   context_length=_shape(ckpt, p + "embeddings.position_embedding.weight")[0],
                   mlp_dim=_shape(ckpt, p + "encoder.layers.0.mlp.fc1.weight")[0],
                   proj_dim=_shape(ckpt, proj_key)[0] if proj_key else None)


def infer_dinov2_config(ckpt: Checkpoint, strict: bool = True) -> ViTConfig:
    w, _, ph, _ = _shape(ckpt, "embeddings.patch_embeddings.projection.weight")
    n = _shape(ckpt, "embeddings.position_embeddings")[1] - 1
    g = _grid(ckpt, n, "embeddings.position_embeddings")
    base = vit.dinov2_base()
    return _finish(base, ckpt, _hf_config(ckpt.source, "dinov2"), strict,
                   width=w, depth=_depth(ckpt, "encoder.layer."), patch_size=ph, image_size=_image_size(base, g, ph),
                   mlp_dim=_shape(ckpt, "encoder.layer.0.mlp.fc1.weight")[0])


def infer_openclip_configs(ckpt: Checkpoint, strict: bool = True) -> tuple[ViTConfig, ViTConfig]:
    w, _, ph, _ = _shape(ckpt, "visual.conv1.weight")
    g = _grid(ckpt, _shape(ckpt, "visual.positional_embedding")[0] - 1, "visual.positional_embedding")
    vision = _finish(vit.bigg_vision(), ckpt, None, strict, width=w, patch_size=ph,
                     image_size=_image_size(vit.bigg_vision(), g, ph),
                     depth=_depth(ckpt, "visual.transformer.resblocks."),
                     mlp_dim=_shape(ckpt, "visual.transformer.resblocks.0.mlp.c_fc.weight")[0],
                     proj_dim=_shape(ckpt, "visual.proj")[1])
    v, tw = _shape(ckpt, "token_embedding.weight")
    text = _finish(vit.bigg_text(), ckpt, None, strict, width=tw, vocab_size=v,
                   context_length=_shape(ckpt, "positional_embedding")[0],
                   depth=_depth(ckpt, "transformer.resblocks."),
                   mlp_dim=_shape(ckpt, "transformer.resblocks.0.mlp.c_fc.weight")[0],
                   proj_dim=_shape(ckpt, "text_projection")[1])
    return vision, text


def infer_hf_clip_configs(ckpt: Checkpoint, strict: bool = True) -> tuple[ViTConfig, ViTConfig]:
    p = "vision_model."
    w, _, ph, _ = _shape(ckpt, p + "embeddings.patch_embedding.weight")
    g = _grid(ckpt, _shape(ckpt, p + "embeddings.position_embedding.weight")[0] - 1,
              p + "embeddings.position_embedding.weight")
    vision = _finish(vit.bigg_vision(), ckpt, _hf_config(ckpt.source, "clip_vision_model"), strict,
                     width=w, patch_size=ph, image_size=_image_size(vit.bigg_vision(), g, ph),
                     depth=_depth(ckpt, p + "encoder.layers."),
                     mlp_dim=_shape(ckpt, p + "encoder.layers.0.mlp.fc1.weight")[0],
                     proj_dim=_shape(ckpt, "visual_projection.weight")[0])
    text = infer_clip_text_config(ckpt, "text_model.", vit.bigg_text(), strict, proj_key="text_projection.weight")
    return vision, text


# ----------------------------------------------------------------------------- builders


def _abstract(make: Callable[[], nnx.Module]) -> nnx.Module:
    return nnx.eval_shape(make)


def _position_ids(k: str) -> bool:
    return k.endswith("position_ids")


def build_siglip(ckpt: Checkpoint, config: ViTConfig | None = None, *, dtype=jnp.float32, strict: bool = False):
    """(abstract VisionTransformer, rules, ignore) for a SigLIP checkpoint."""
    prefix = _prefix(ckpt, "embeddings.patch_embedding.weight", "vision_model.")
    c = config or infer_siglip_config(ckpt, prefix, strict)
    model = _abstract(lambda: VisionTransformer(c, dtype=dtype, param_dtype=dtype, rngs=nnx.Rngs(0)))
    return model, siglip_rules(c, prefix), lambda k: not k.startswith(prefix) or _position_ids(k)


def build_redux(ckpt: Checkpoint, *, dtype=jnp.float32):
    """(abstract ReduxProjector, rules, ignore) for flux1-redux-dev.safetensors."""
    hidden, redux_dim = _shape(ckpt, "redux_up.weight")
    txt = _shape(ckpt, "redux_down.weight")[0]
    if hidden != 3 * txt:
        raise CheckpointError(f"{ckpt.source}: redux_up.weight has {hidden} outputs, expected 3 x {txt}")
    model = _abstract(lambda: ReduxProjector(redux_dim, txt, dtype=dtype, param_dtype=dtype, rngs=nnx.Rngs(0)))
    return model, redux_rules(), lambda k: False


def build_clip_text(ckpt: Checkpoint, config: ViTConfig | None = None, *, dtype=jnp.float32, strict: bool = False):
    """(abstract TextTransformer, rules, ignore) for a CLIPTextModel (or CLIPModel's text tower)."""
    prefix = _prefix(ckpt, "embeddings.token_embedding.weight", "text_model.")
    c = config or infer_clip_text_config(ckpt, prefix, vit.clip_l_text(), strict)
    model = _abstract(lambda: TextTransformer(c, dtype=dtype, param_dtype=dtype, rngs=nnx.Rngs(0)))
    ignore = lambda k: not k.startswith(prefix) or _position_ids(k) or (k == "text_projection.weight"  # noqa: E731
                                                                        and not c.proj_dim)
    return model, clip_text_rules(c, prefix), ignore


def build_dinov2(ckpt: Checkpoint, config: ViTConfig | None = None, *, dtype=jnp.float32, strict: bool = False):
    """(abstract VisionTransformer, rules, ignore) for a Dinov2Model (legacy hub names)."""
    c = config or infer_dinov2_config(ckpt, strict)
    model = _abstract(lambda: VisionTransformer(c, dtype=dtype, param_dtype=dtype, rngs=nnx.Rngs(0)))
    return model, dinov2_rules(c), lambda k: k == "embeddings.mask_token"


def build_clip(ckpt: Checkpoint, vision: ViTConfig | None = None, text: ViTConfig | None = None, *,
               dtype=jnp.float32, strict: bool = False):
    """(abstract CLIP, rules, ignore) for an open_clip or a transformers CLIPModel checkpoint."""
    if "visual.conv1.weight" in ckpt:
        configs, rules = infer_openclip_configs, openclip_rules
    elif "vision_model.embeddings.class_embedding" in ckpt:
        configs, rules = infer_hf_clip_configs, hf_clip_rules
    else:
        raise CheckpointError(f"{ckpt.source}: neither open_clip (visual.conv1.weight) nor transformers "
                              "CLIPModel (vision_model.embeddings.class_embedding) keys")
    if vision is None or text is None:
        v, t = configs(ckpt, strict)
        vision, text = vision or v, text or t
    model = _abstract(lambda: CLIP(vision, text, dtype=dtype, param_dtype=dtype, rngs=nnx.Rngs(0)))
    return model, rules(vision, text), lambda k: k == "logit_scale" or _position_ids(k)


# ----------------------------------------------------------------------------- loaders


def load_siglip(path, *, config: ViTConfig | None = None, dtype=jnp.float32) -> VisionTransformer:
    """SigLIP vision tower (with its MAP head when the file has one) from a file or folder."""
    ckpt = open_checkpoint(path)
    model, rules, ignore = build_siglip(ckpt, config, dtype=dtype, strict=True)
    return fill(model, rules, ckpt, dtype=dtype, ignore=ignore)


def load_redux_projector(path, *, dtype=jnp.float32) -> ReduxProjector:
    ckpt = open_checkpoint(path)
    model, rules, ignore = build_redux(ckpt, dtype=dtype)
    return fill(model, rules, ckpt, dtype=dtype, ignore=ignore)


def load_redux(redux_file, siglip_path, *, siglip_config: ViTConfig | None = None, dtype=jnp.float32) -> ReduxEncoder:
    """The Redux image condition: SigLIP tower + projector, (B, 384, 384, 3) -> (B, 729, 4096)."""
    redux = load_redux_projector(redux_file, dtype=dtype)
    siglip = load_siglip(siglip_path, config=siglip_config, dtype=dtype)
    if siglip.config.width != redux.redux_up.in_features:
        raise CheckpointError(f"{redux_file}: redux_up takes {redux.redux_up.in_features} features but the SigLIP "
                              f"tower at {siglip_path} gives {siglip.config.width}")
    return ReduxEncoder(siglip, redux)


def load_clip_text(path, *, config: ViTConfig | None = None, dtype=jnp.float32) -> TextTransformer:
    """CLIP text encoder (FLUX's text_encoder: CLIP ViT-L/14) from a file or folder."""
    ckpt = open_checkpoint(path)
    model, rules, ignore = build_clip_text(ckpt, config, dtype=dtype, strict=True)
    return fill(model, rules, ckpt, dtype=dtype, ignore=ignore)


def load_dinov2(path, *, config: ViTConfig | None = None, dtype=jnp.float32) -> VisionTransformer:
    """DINOv2 (transformers Dinov2Model hub file) with 'mean_all' pooling."""
    ckpt = open_checkpoint(path)
    model, rules, ignore = build_dinov2(ckpt, config, dtype=dtype, strict=True)
    return fill(model, rules, ckpt, dtype=dtype, ignore=ignore)


def load_clip_bigg(path, *, vision_config: ViTConfig | None = None, text_config: ViTConfig | None = None,
                   dtype=jnp.float32) -> CLIP:
    """CLIP ViT-bigG-14 (both towers), open_clip or transformers layout. A folder holding
    open_clip_model.safetensors (the laion repo) is read through that file."""
    path = Path(path)
    if path.is_dir() and (path / "open_clip_model.safetensors").is_file():
        path = path / "open_clip_model.safetensors"
    ckpt = open_checkpoint(path)
    model, rules, ignore = build_clip(ckpt, vision_config, text_config, dtype=dtype, strict=True)
    return fill(model, rules, ckpt, dtype=dtype, ignore=ignore)


# ----------------------------------------------------------------------------- kinds (vmdiff convert --check)


def _is_siglip(keys: set[str]) -> bool:
    return "vision_model.embeddings.patch_embedding.bias" in keys or "embeddings.patch_embedding.bias" in keys


def _is_clip_text(keys: set[str]) -> bool:
    text = "text_model.embeddings.token_embedding.weight" in keys or "embeddings.token_embedding.weight" in keys
    return text and "vision_model.embeddings.patch_embedding.weight" not in keys


SIGLIP = CheckpointKind("siglip", _is_siglip, build_siglip)
REDUX = CheckpointKind("redux", lambda keys: "redux_up.weight" in keys, build_redux)
CLIP_TEXT = CheckpointKind("clip-text", _is_clip_text, build_clip_text)
DINOV2 = CheckpointKind("dinov2", lambda keys: "embeddings.patch_embeddings.projection.weight" in keys, build_dinov2)
BIGG_OPENCLIP = CheckpointKind("clip-bigg-openclip",
                               lambda keys: "visual.conv1.weight" in keys and "token_embedding.weight" in keys,
                               build_clip)
BIGG_HF = CheckpointKind("clip-bigg-hf",
                         lambda keys: "vision_model.embeddings.class_embedding" in keys
                         and "text_model.embeddings.token_embedding.weight" in keys,
                         build_clip)
KINDS = (REDUX, SIGLIP, CLIP_TEXT, DINOV2, BIGG_OPENCLIP, BIGG_HF)

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

Configs are inferred from shapes, heads / activation / eps from config.json, every config.json
size checked against the tensors (encoder_configs.py).
"""

from __future__ import annotations

from typing import Callable

import jax.numpy as jnp
from flax import nnx

from vmdiff_jax.nn import vit
from vmdiff_jax.checkpoints.encoder_configs import (check_heads, infer_clip_text_config, infer_dinov2_config,  # noqa: F401
                                                    infer_hf_clip_configs, infer_openclip_configs, infer_siglip_config,
                                                    _prefix)
from vmdiff_jax.checkpoints.files import Checkpoint, CheckpointError
from vmdiff_jax.checkpoints.loader import Kind, Plan
from vmdiff_jax.checkpoints.rules import Rule, cat, conv, linear, linear_cat, reshaped, same
from vmdiff_jax.nn.redux import ReduxProjector
from vmdiff_jax.nn.vit import CLIP, TextTransformer, VisionTransformer, ViTConfig

Rules = dict[str, Rule]

# ----------------------------------------------------------------------------- rule helpers


def _ln(ours: str, src: str) -> Rules:
    return {f"{ours}.scale": same(f"{src}.weight"), f"{ours}.bias": same(f"{src}.bias")}


def _lin(ours: str, src: str) -> Rules:
    return {f"{ours}.kernel": linear(f"{src}.weight"), f"{ours}.bias": same(f"{src}.bias")}


def _vector(key: str, lead: int = 0) -> Rule:
    """(1, 1, W) (lead 2) or (W,) (lead 0) -> (W,) (class token, probe)."""
    return reshaped(key, slice(-1, None), lead)


def _unbatch(key: str) -> Rule:
    """(1, N, W) -> (N, W) (DINOv2 position embeddings)."""
    return reshaped(key, slice(1, None), 1)


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
        r |= {"head.probe": _vector(h + "probe", 2),
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
            "cls_token": _vector(e + "cls_token", 2),
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


# ----------------------------------------------------------------------------- builders


def _abstract(ckpt: Checkpoint, make: Callable[[], nnx.Module]) -> nnx.Module:
    try:
        return nnx.eval_shape(make)
    except ValueError as e:  # a config the model refuses (heads not dividing the width, ...)
        raise CheckpointError(f"{ckpt.source}: {e}") from None


def _position_ids(k: str) -> bool:
    return k.endswith("position_ids")


def build_siglip(ckpt: Checkpoint, *, dtype=jnp.float32, strict: bool = True, config: ViTConfig | None = None) -> Plan:
    """Plan for a SigLIP vision tower (VisionTransformer, with its MAP head when the file has one)."""
    prefix = _prefix(ckpt, "embeddings.patch_embedding.weight", "vision_model.")
    c = config or infer_siglip_config(ckpt, prefix, strict)
    check_heads(ckpt, c)
    model = _abstract(ckpt, lambda: VisionTransformer(c, dtype=dtype, param_dtype=dtype, rngs=nnx.Rngs(0)))
    return Plan(model, siglip_rules(c, prefix), lambda k: not k.startswith(prefix) or _position_ids(k))


def build_redux(ckpt: Checkpoint, *, dtype=jnp.float32, strict: bool = True) -> Plan:
    """Plan for flux1-redux-dev.safetensors (ReduxProjector)."""
    up, down = ckpt.shape("redux_up.weight"), ckpt.shape("redux_down.weight")
    if len(up) != 2 or len(down) != 2:
        raise CheckpointError(f"{ckpt.source}: redux_up.weight {up} / redux_down.weight {down} are not 2-D")
    (hidden, redux_dim), txt = up, down[0]
    if hidden != 3 * txt:
        raise CheckpointError(f"{ckpt.source}: redux_up.weight has {hidden} outputs, expected 3 x {txt}")
    model = _abstract(ckpt, lambda: ReduxProjector(redux_dim, txt, dtype=dtype, param_dtype=dtype, rngs=nnx.Rngs(0)))
    return Plan(model, redux_rules())


def build_clip_l(ckpt: Checkpoint, *, dtype=jnp.float32, strict: bool = True, config: ViTConfig | None = None) -> Plan:
    """Plan for a CLIPTextModel (or CLIPModel's text tower): TextTransformer."""
    prefix = _prefix(ckpt, "embeddings.token_embedding.weight", "text_model.")
    c = config or infer_clip_text_config(ckpt, prefix, vit.ViTConfig.clip_l(), strict)
    check_heads(ckpt, c)
    model = _abstract(ckpt, lambda: TextTransformer(c, dtype=dtype, param_dtype=dtype, rngs=nnx.Rngs(0)))
    ignore = lambda k: not k.startswith(prefix) or _position_ids(k) or (k == "text_projection.weight"  # noqa: E731
                                                                        and not c.proj_dim)
    return Plan(model, clip_text_rules(c, prefix), ignore)


def build_dinov2(ckpt: Checkpoint, *, dtype=jnp.float32, strict: bool = True, config: ViTConfig | None = None) -> Plan:
    """Plan for a Dinov2Model (legacy hub names): VisionTransformer with 'mean_all' pooling."""
    c = config or infer_dinov2_config(ckpt, strict)
    check_heads(ckpt, c)
    model = _abstract(ckpt, lambda: VisionTransformer(c, dtype=dtype, param_dtype=dtype, rngs=nnx.Rngs(0)))
    return Plan(model, dinov2_rules(c), lambda k: k == "embeddings.mask_token")


def build_clip(ckpt: Checkpoint, *, dtype=jnp.float32, strict: bool = True, vision_config: ViTConfig | None = None,
               text_config: ViTConfig | None = None) -> Plan:
    """Plan for an open_clip or a transformers CLIPModel checkpoint (both towers): vit.CLIP."""
    if "visual.conv1.weight" in ckpt:
        configs, rules = infer_openclip_configs, openclip_rules
    elif "vision_model.embeddings.class_embedding" in ckpt:
        configs, rules = infer_hf_clip_configs, hf_clip_rules
    else:
        raise CheckpointError(f"{ckpt.source}: neither open_clip (visual.conv1.weight) nor transformers "
                              "CLIPModel (vision_model.embeddings.class_embedding) keys")
    vision, text = vision_config, text_config
    if vision is None or text is None:
        v, t = configs(ckpt, strict)
        vision, text = vision or v, text or t
    check_heads(ckpt, vision, "the vision config")
    check_heads(ckpt, text, "the text config")
    model = _abstract(ckpt, lambda: CLIP(vision, text, dtype=dtype, param_dtype=dtype, rngs=nnx.Rngs(0)))
    return Plan(model, rules(vision, text), lambda k: k == "logit_scale" or _position_ids(k))


# ----------------------------------------------------------------------------- kinds


def _is_siglip(ckpt: Checkpoint) -> bool:
    return "vision_model.embeddings.patch_embedding.bias" in ckpt or "embeddings.patch_embedding.bias" in ckpt


def _is_clip_l(ckpt: Checkpoint) -> bool:
    text = "text_model.embeddings.token_embedding.weight" in ckpt or "embeddings.token_embedding.weight" in ckpt
    return text and "vision_model.embeddings.patch_embedding.weight" not in ckpt


SIGLIP = Kind("siglip", _is_siglip, build_siglip)
REDUX = Kind("redux", lambda ckpt: "redux_up.weight" in ckpt, build_redux)
CLIP_L = Kind("clip-l", _is_clip_l, build_clip_l)
DINOV2 = Kind("dinov2", lambda ckpt: "embeddings.patch_embeddings.projection.weight" in ckpt, build_dinov2)
BIGG_OPENCLIP = Kind("clip-bigg-openclip", lambda ckpt: "visual.conv1.weight" in ckpt and "token_embedding.weight" in ckpt,
                     build_clip)
BIGG_HF = Kind("clip-bigg-hf", lambda ckpt: "vision_model.embeddings.class_embedding" in ckpt
               and "text_model.embeddings.token_embedding.weight" in ckpt, build_clip)

"""FLUX transformer checkpoints: BFL single files and diffusers `transformer/` folders.

Our parameter paths are BFL's keys, so the BFL rules follow from the paths (`rules.derive`:
`weight` -> `kernel`, Linear transposed; an optional `model.diffusion_model.` prefix, as
ComfyUI saves them). The diffusers layout is one explicit table: the inverse of diffusers'
`convert_flux_transformer_checkpoint_to_diffusers` (q/k/v fused into `qkv`, single-block
`linear1` = [to_q | to_k | to_v | proj_mlp], `norm_out.linear` halves swapped back to BFL's
(shift, scale)), with every size taken from the config. Both are written per layer
(`double_blocks.3.img_attn.qkv.kernel`); for a model with stacked blocks (`Flux(scan_blocks=True)`,
the default) `rules.stack` then groups each block parameter's layers into one `Stacked` rule.

Config inference (`infer_config`) reads every size from tensor shapes. The rope axes are
not visible in the shapes; they come, in this order, from a diffusers `config.json`
(`axes_dims_rope`), the file's safetensors metadata (`axes_dim`, e.g. "[16, 56, 56]"), or
the rule for head dim d: (d - 2w, w, w) with w = 2 * floor(7d / 32), which gives
(16, 56, 56) for d = 128 (FLUX.1) and (4, 6, 6) for d = 16 (`FluxConfig.tiny`). Pass
`config=` to `load_flux` for anything else. Every size a diffusers config.json gives (layers,
heads, head dim, channels, context and pooled widths, guidance, rope axes) must agree with the
tensors (config_json.py), else one CheckpointError naming the file and the field.
"""

from __future__ import annotations

import json
from typing import Iterable

import jax.numpy as jnp
from flax import nnx

from vmdiff_jax.checkpoints import config_json, flux_fp8
from vmdiff_jax.checkpoints.files import Checkpoint, CheckpointError
from vmdiff_jax.checkpoints.loader import Kind, Plan
from vmdiff_jax.checkpoints.rules import (AnyRule, Rule, cat, derive, linear, linear_cat, param_paths, same, stack,
                                          swap_halves, unstacked_paths)
from vmdiff_jax.nn.flux import Flux, FluxConfig, stacks

BFL_PREFIXES = ("", "model.diffusion_model.")  # the second: ComfyUI-style single files


def abstract_flux(cfg: FluxConfig, dtype=jnp.bfloat16, attention_impl: str | None = None, fp8: bool = False,
                  scan_blocks: bool = True) -> Flux:
    """Flux with ShapeDtypeStruct parameters (nothing allocated); fp8: float8 block kernels."""
    return nnx.eval_shape(
        lambda: Flux(cfg, dtype=dtype, param_dtype=dtype, rngs=nnx.Rngs(0), attention_impl=attention_impl, fp8=fp8,
                     scan_blocks=scan_blocks)
    )


def bfl_rules(cfg: FluxConfig, prefix: str = "", model: Flux | None = None) -> dict[str, AnyRule]:
    """{our param path: rule} for BFL's layout (`flux1-dev.safetensors`, `flux1-krea-dev.safetensors`),
    derived from the (per-layer) parameter paths of `model` (default: the abstract Flux of `cfg`)."""
    model = model if model is not None else abstract_flux(cfg, jnp.float32)
    per_layer = derive(unstacked_paths(param_paths(model), model.layer_stacks), lambda module: prefix + module)
    return stack(per_layer, model.layer_stacks)


def _lin(ours: str, theirs: str) -> dict[str, Rule]:
    return {f"{ours}.kernel": linear(f"{theirs}.weight"), f"{ours}.bias": same(f"{theirs}.bias")}


def _fused(ours: str, theirs: Iterable[str]) -> dict[str, Rule]:
    theirs = list(theirs)
    return {
        f"{ours}.kernel": linear_cat([f"{t}.weight" for t in theirs]),
        f"{ours}.bias": cat([f"{t}.bias" for t in theirs]),
    }


def diffusers_rules(cfg: FluxConfig, model: Flux | None = None) -> dict[str, AnyRule]:
    """{our param path: rule} for diffusers' FluxTransformer2DModel layout (`transformer/` folder),
    stacked as `model`'s blocks are (default: stacked, as a Flux(cfg) has them)."""
    if not cfg.qkv_bias:
        raise ValueError("diffusers' FluxTransformer2DModel always has q/k/v biases (qkv_bias=True)")
    r: dict[str, Rule] = {}
    r |= _lin("img_in", "x_embedder")
    r |= _lin("txt_in", "context_embedder")
    r |= _lin("time_in.in_layer", "time_text_embed.timestep_embedder.linear_1")
    r |= _lin("time_in.out_layer", "time_text_embed.timestep_embedder.linear_2")
    r |= _lin("vector_in.in_layer", "time_text_embed.text_embedder.linear_1")
    r |= _lin("vector_in.out_layer", "time_text_embed.text_embedder.linear_2")
    if cfg.guidance_embed:
        r |= _lin("guidance_in.in_layer", "time_text_embed.guidance_embedder.linear_1")
        r |= _lin("guidance_in.out_layer", "time_text_embed.guidance_embedder.linear_2")
    for i in range(cfg.depth):
        o, t = f"double_blocks.{i}", f"transformer_blocks.{i}"
        r |= _lin(f"{o}.img_mod.lin", f"{t}.norm1.linear")
        r |= _lin(f"{o}.txt_mod.lin", f"{t}.norm1_context.linear")
        r |= _fused(f"{o}.img_attn.qkv", [f"{t}.attn.to_q", f"{t}.attn.to_k", f"{t}.attn.to_v"])
        r |= _fused(f"{o}.txt_attn.qkv", [f"{t}.attn.add_q_proj", f"{t}.attn.add_k_proj", f"{t}.attn.add_v_proj"])
        r[f"{o}.img_attn.norm.query_norm.scale"] = same(f"{t}.attn.norm_q.weight")
        r[f"{o}.img_attn.norm.key_norm.scale"] = same(f"{t}.attn.norm_k.weight")
        r[f"{o}.txt_attn.norm.query_norm.scale"] = same(f"{t}.attn.norm_added_q.weight")
        r[f"{o}.txt_attn.norm.key_norm.scale"] = same(f"{t}.attn.norm_added_k.weight")
        r |= _lin(f"{o}.img_attn.proj", f"{t}.attn.to_out.0")
        r |= _lin(f"{o}.txt_attn.proj", f"{t}.attn.to_add_out")
        r |= _lin(f"{o}.img_mlp.0", f"{t}.ff.net.0.proj")
        r |= _lin(f"{o}.img_mlp.2", f"{t}.ff.net.2")
        r |= _lin(f"{o}.txt_mlp.0", f"{t}.ff_context.net.0.proj")
        r |= _lin(f"{o}.txt_mlp.2", f"{t}.ff_context.net.2")
    for i in range(cfg.depth_single_blocks):
        o, t = f"single_blocks.{i}", f"single_transformer_blocks.{i}"
        r |= _fused(f"{o}.linear1", [f"{t}.attn.to_q", f"{t}.attn.to_k", f"{t}.attn.to_v", f"{t}.proj_mlp"])
        r |= _lin(f"{o}.linear2", f"{t}.proj_out")
        r[f"{o}.norm.query_norm.scale"] = same(f"{t}.attn.norm_q.weight")
        r[f"{o}.norm.key_norm.scale"] = same(f"{t}.attn.norm_k.weight")
        r |= _lin(f"{o}.modulation.lin", f"{t}.norm.linear")
    # norm_out.linear is (scale, shift) along `out`; BFL's adaLN_modulation.1 is (shift, scale).
    r["final_layer.adaLN_modulation.1.kernel"] = swap_halves(linear("norm_out.linear.weight"), axis=-1)
    r["final_layer.adaLN_modulation.1.bias"] = swap_halves(same("norm_out.linear.bias"), axis=0)
    r |= _lin("final_layer.linear", "proj_out")
    return stack(r, model.layer_stacks if model is not None else stacks(cfg))


def _bfl_prefix(keys: Iterable[str]) -> str | None:
    keys = set(keys)
    for p in BFL_PREFIXES:
        if f"{p}img_in.weight" in keys and f"{p}txt_in.weight" in keys:
            return p
    return None


def detect_layout(keys: Iterable[str]) -> str | None:
    """'bfl', 'diffusers' or None (not a FLUX transformer) from the key names alone."""
    keys = set(keys)
    if _bfl_prefix(keys) is not None:
        return "bfl"
    if "x_embedder.weight" in keys and "context_embedder.weight" in keys and "norm_out.linear.weight" in keys:
        return "diffusers"
    return None


def default_axes_dim(head_dim: int) -> tuple[int, int, int]:
    """(d - 2w, w, w), w = 2 * floor(7d / 32): (16, 56, 56) for d = 128, (4, 6, 6) for d = 16."""
    w = 2 * ((7 * head_dim) // 32)
    return (head_dim - 2 * w, w, w)


def _axes(ckpt: Checkpoint, conf: dict | None, head_dim: int) -> tuple[int, ...]:
    if conf and conf.get("axes_dims_rope"):
        raw, where = conf["axes_dims_rope"], f"{config_json.path_of(ckpt)}: axes_dims_rope"
    elif "axes_dim" in ckpt.metadata:
        try:
            raw = json.loads(ckpt.metadata["axes_dim"])
        except ValueError:
            raw = ckpt.metadata["axes_dim"]
        where = f"{ckpt.source}: metadata axes_dim"
    else:
        return default_axes_dim(head_dim)
    if not (isinstance(raw, list) and raw and all(isinstance(a, int) and not isinstance(a, bool) and a > 0 for a in raw)):
        raise CheckpointError(f"{where} {raw!r} is not a JSON list of positive ints")
    if sum(raw) != head_dim:
        raise CheckpointError(f"{where} = {raw} sums to {sum(raw)} but the tensors give a head dim of {head_dim}")
    return tuple(raw)


def _check_diffusers_config(ckpt: Checkpoint, conf: dict, cfg: FluxConfig) -> None:
    """A diffusers transformer config.json against the sizes read from the tensors."""
    patch = config_json.integer(ckpt, conf, "patch_size", minimum=1)
    if patch not in (None, 1):
        raise CheckpointError(f"{config_json.path_of(ckpt)}: patch_size = {patch}, but FLUX packs 2 x 2 latents "
                              "into tokens itself (patch_size 1)")
    sizes = (("num_layers", cfg.depth, "transformer_blocks.*"),
             ("num_single_layers", cfg.depth_single_blocks, "single_transformer_blocks.*"),
             ("attention_head_dim", cfg.head_dim, "attn.norm_q.weight"),
             ("num_attention_heads", cfg.num_heads, "x_embedder.weight width / head dim"),
             ("in_channels", cfg.in_channels, "x_embedder.weight"),
             ("out_channels", cfg.out_channels, "proj_out.weight"),
             ("joint_attention_dim", cfg.context_in_dim, "context_embedder.weight"),
             ("pooled_projection_dim", cfg.vec_in_dim, "time_text_embed.text_embedder.linear_1.weight"),
             ("guidance_embeds", cfg.guidance_embed, "time_text_embed.guidance_embedder.*"))
    for field, actual, evidence in sizes:
        config_json.agree(ckpt, conf, field, actual, evidence)


def infer_config(ckpt: Checkpoint) -> FluxConfig:
    """FluxConfig from a checkpoint's shapes (either layout); rope axes as in the module docstring.

    Raises CheckpointError naming a missing key when the file is not a complete FLUX transformer.
    """
    layout = detect_layout(ckpt.keys())
    if layout is None:
        raise CheckpointError(f"{ckpt.source}: not a FLUX transformer (no BFL or diffusers keys)")
    shape = ckpt.shape
    if layout == "bfl":
        p = _bfl_prefix(ckpt.keys())
        x, txt, vec, out, guidance = (f"{p}{k}.weight" for k in
                                      ("img_in", "txt_in", "vector_in.in_layer", "final_layer.linear", "guidance_in.in_layer"))
        depth, single = ckpt.count_blocks(f"{p}double_blocks."), ckpt.count_blocks(f"{p}single_blocks.")
        head = f"{p}double_blocks.0.img_attn.norm.query_norm.scale" if depth else f"{p}single_blocks.0.norm.query_norm.scale"
        mlp = f"{p}double_blocks.0.img_mlp.0.weight" if depth else None
        qkv_bias = f"{p}double_blocks.0.img_attn.qkv.bias" in ckpt if depth else True
    else:
        x, txt, vec, out = ("x_embedder.weight", "context_embedder.weight",
                            "time_text_embed.text_embedder.linear_1.weight", "proj_out.weight")
        guidance = "time_text_embed.guidance_embedder.linear_1.weight"
        depth, single = ckpt.count_blocks("transformer_blocks."), ckpt.count_blocks("single_transformer_blocks.")
        head = "transformer_blocks.0.attn.norm_q.weight" if depth else "single_transformer_blocks.0.attn.norm_q.weight"
        mlp = "transformer_blocks.0.ff.net.0.proj.weight" if depth else "single_transformer_blocks.0.proj_mlp.weight"
        qkv_bias = True
    for key, nd in ((x, 2), (txt, 2), (vec, 2), (out, 2), (head, 1)):
        shape(key, nd)
    hidden, in_channels = shape(x)
    head_dim = shape(head)[0]
    if head_dim <= 0 or hidden % head_dim:
        raise CheckpointError(f"{ckpt.source}: key {head} {shape(head)} does not divide hidden {hidden}")
    if mlp is not None:
        mlp_hidden = shape(mlp, 2)[0]
    else:  # BFL without double blocks: linear1 = 3 * hidden + mlp_hidden
        mlp_hidden = shape(f"{p}single_blocks.0.linear1.weight", 2)[0] - 3 * hidden
    if mlp_hidden <= 0:
        raise CheckpointError(f"{ckpt.source}: key {mlp} gives an MLP width of {mlp_hidden}")
    conf = ckpt.config_json() if layout == "diffusers" else None
    try:
        cfg = FluxConfig(
            in_channels=in_channels,
            out_channels=shape(out)[0],
            vec_in_dim=shape(vec)[1],
            context_in_dim=shape(txt)[1],
            hidden_size=hidden,
            mlp_ratio=mlp_hidden / hidden,
            num_heads=hidden // head_dim,
            depth=depth,
            depth_single_blocks=single,
            axes_dim=_axes(ckpt, conf, head_dim),
            qkv_bias=qkv_bias,
            guidance_embed=guidance in ckpt,
        )
    except (TypeError, ValueError) as e:  # a size FluxConfig refuses (checks.py)
        raise CheckpointError(f"{ckpt.source}: {e}") from None
    if conf is not None:
        _check_diffusers_config(ckpt, conf, cfg)
    return cfg


def rules_for(ckpt: Checkpoint, cfg: FluxConfig, model: Flux | None = None) -> dict[str, AnyRule]:
    """The conversion table for this checkpoint's layout (for `model`, default: a Flux(cfg))."""
    layout = detect_layout(ckpt.keys())
    if layout == "bfl":
        return bfl_rules(cfg, _bfl_prefix(ckpt.keys()), model)
    if layout == "diffusers":
        return diffusers_rules(cfg, model)
    raise CheckpointError(f"{ckpt.source}: not a FLUX transformer (no BFL/diffusers keys)")


def build(ckpt: Checkpoint, *, dtype=jnp.bfloat16, strict: bool = True, config: FluxConfig | None = None,
          attention_impl: str | None = None, fp8: bool = False, scan_blocks: bool = True) -> Plan:
    """The Plan for a FLUX transformer checkpoint (either layout, plain or scaled fp8 files
    included); `config` overrides inference. fp8 (or dtype="fp8", meaning fp8 + bf16): the
    block kernels stored as float8 with float32 scales, the rest in `dtype` (flux_fp8.py).
    scan_blocks: the model's blocks stacked under a scan (default), else unrolled (one
    parameter per checkpoint layer: what the per-tensor converters in convert/ walk)."""
    if flux_fp8.is_fp8(dtype):
        dtype, fp8 = jnp.bfloat16, True
    cfg = config if config is not None else infer_config(ckpt)
    try:
        model = abstract_flux(cfg, dtype, attention_impl, fp8, scan_blocks)
    except ValueError as e:  # a config the model refuses (axes_dim not summing to the head dim, ...)
        raise CheckpointError(f"{ckpt.source}: {e}") from None
    return flux_fp8.adapt(Plan(model, rules_for(ckpt, cfg, model)), ckpt)


FLUX_BFL = Kind("flux-bfl", lambda keys: detect_layout(keys) == "bfl", build, jnp.bfloat16)
FLUX_DIFFUSERS = Kind("flux-diffusers", lambda keys: detect_layout(keys) == "diffusers", build, jnp.bfloat16)

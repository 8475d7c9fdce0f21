"""FLUX transformer checkpoints: BFL single files and diffusers `transformer/` folders.

Our parameter paths are BFL's keys (`weight` -> `kernel`, Linear transposed), so the BFL
layout is a transpose rule per key and the diffusers layout is one explicit table: the
inverse of diffusers' `convert_flux_transformer_checkpoint_to_diffusers` (q/k/v fused into
`qkv`, single-block `linear1` = [to_q | to_k | to_v | proj_mlp], `norm_out.linear` halves
swapped back to BFL's (shift, scale)), with every size taken from the config.

Config inference (`infer_config`) reads every size from tensor shapes. The rope axes are
not visible in the shapes; they come, in this order, from a diffusers `config.json`
(`axes_dims_rope`), the file's safetensors metadata (`axes_dim`, e.g. "[16, 56, 56]"), or
the rule for head dim d: (d - 2w, w, w) with w = 2 * floor(7d / 32), which gives
(16, 56, 56) for d = 128 (FLUX.1) and (4, 6, 6) for d = 16 (`FluxConfig.tiny`). Pass
`config=` to `load_flux` for anything else.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Callable, Iterable, Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from vmdiff_jax import loading
from vmdiff_jax.flux import Flux, FluxConfig
from vmdiff_jax.loading import Rule, cat, linear, linear_cat, same, swap_halves
from vmdiff_jax.safetensors_io import Checkpoint, CheckpointError, open_checkpoint

BFL_PREFIXES = ("", "model.diffusion_model.")  # the second: ComfyUI-style single files


def _bfl_modules(cfg: FluxConfig) -> tuple[list[str], list[str]]:
    """(Linear module names, RMSNorm scale names) of BFL's Flux for `cfg`."""
    linears = ["img_in", "txt_in", "final_layer.linear", "final_layer.adaLN_modulation.1"]
    embedders = ["time_in", "vector_in"] + (["guidance_in"] if cfg.guidance_embed else [])
    linears += [f"{e}.{layer}" for e in embedders for layer in ("in_layer", "out_layer")]
    scales = []
    for i in range(cfg.depth):
        for s in ("img", "txt"):
            b = f"double_blocks.{i}.{s}"
            linears += [f"{b}_mod.lin", f"{b}_attn.qkv", f"{b}_attn.proj", f"{b}_mlp.0", f"{b}_mlp.2"]
            scales += [f"{b}_attn.norm.query_norm.scale", f"{b}_attn.norm.key_norm.scale"]
    for i in range(cfg.depth_single_blocks):
        b = f"single_blocks.{i}"
        linears += [f"{b}.linear1", f"{b}.linear2", f"{b}.modulation.lin"]
        scales += [f"{b}.norm.query_norm.scale", f"{b}.norm.key_norm.scale"]
    return linears, scales


def bfl_rules(cfg: FluxConfig, prefix: str = "") -> dict[str, Rule]:
    """{our param path: Rule} for BFL's layout (`flux1-dev.safetensors`, `flux1-krea-dev.safetensors`)."""
    linears, scales = _bfl_modules(cfg)
    rules: dict[str, Rule] = {}
    for m in linears:
        rules[f"{m}.kernel"] = linear(f"{prefix}{m}.weight")
        if cfg.qkv_bias or not m.endswith("_attn.qkv"):
            rules[f"{m}.bias"] = same(f"{prefix}{m}.bias")
    for s in scales:
        rules[s] = same(prefix + s)
    return rules


def _lin(ours: str, theirs: str) -> dict[str, Rule]:
    return {f"{ours}.kernel": linear(f"{theirs}.weight"), f"{ours}.bias": same(f"{theirs}.bias")}


def _fused(ours: str, theirs: Iterable[str]) -> dict[str, Rule]:
    theirs = list(theirs)
    return {
        f"{ours}.kernel": linear_cat([f"{t}.weight" for t in theirs]),
        f"{ours}.bias": cat([f"{t}.bias" for t in theirs]),
    }


def diffusers_rules(cfg: FluxConfig) -> dict[str, Rule]:
    """{our param path: Rule} for diffusers' FluxTransformer2DModel layout (`transformer/` folder)."""
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
    return r


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


def _count(keys: Iterable[str], pattern: str) -> int:
    """Number of blocks: 1 + the largest index i in keys matching `pattern` (with one (\\d+) group)."""
    rx = re.compile(pattern)
    idx = [int(m.group(1)) for k in keys if (m := rx.match(k))]
    return max(idx) + 1 if idx else 0


def default_axes_dim(head_dim: int) -> tuple[int, int, int]:
    """(d - 2w, w, w), w = 2 * floor(7d / 32): (16, 56, 56) for d = 128, (4, 6, 6) for d = 16."""
    w = 2 * ((7 * head_dim) // 32)
    return (head_dim - 2 * w, w, w)


def _diffusers_config_json(source: Path) -> dict | None:
    for folder in (source, source.parent) if source.is_file() else (source,):
        f = folder / "config.json"
        if f.is_file():
            try:
                return json.loads(f.read_text())
            except json.JSONDecodeError as e:
                raise CheckpointError(f"{f}: corrupt config.json ({e})") from None
    return None


def infer_config(ckpt: Checkpoint | Mapping[str, object]) -> FluxConfig:
    """FluxConfig from a checkpoint's shapes (either layout); rope axes as in the module docstring.

    `ckpt` is a Checkpoint or a mapping {key: shape or TensorInfo}. Raises CheckpointError
    naming a missing key when the file is not a complete FLUX transformer.
    """
    keys = list(ckpt.keys())
    source = getattr(ckpt, "source", None)
    layout = detect_layout(keys)
    if layout is None:
        raise CheckpointError(f"{source or 'checkpoint'}: not a FLUX transformer (no BFL or diffusers keys)")

    def shape(key: str) -> tuple[int, ...]:
        if key not in ckpt:
            raise CheckpointError(f"{source or 'checkpoint'}: missing key {key} (needed to infer the config)")
        v = ckpt[key]
        return tuple(getattr(v, "shape", v))

    if layout == "bfl":
        p = _bfl_prefix(keys)
        k = {
            "x": f"{p}img_in.weight",
            "txt": f"{p}txt_in.weight",
            "vec": f"{p}vector_in.in_layer.weight",
            "out": f"{p}final_layer.linear.weight",
            "guidance": f"{p}guidance_in.in_layer.weight",
        }
        depth = _count(keys, re.escape(p) + r"double_blocks\.(\d+)\.")
        single = _count(keys, re.escape(p) + r"single_blocks\.(\d+)\.")
        if depth:
            head = f"{p}double_blocks.0.img_attn.norm.query_norm.scale"
            mlp = f"{p}double_blocks.0.img_mlp.0.weight"
        else:
            head = f"{p}single_blocks.0.norm.query_norm.scale"
            mlp = None
        qkv_bias = f"{p}double_blocks.0.img_attn.qkv.bias" in ckpt if depth else True
    else:
        k = {
            "x": "x_embedder.weight",
            "txt": "context_embedder.weight",
            "vec": "time_text_embed.text_embedder.linear_1.weight",
            "out": "proj_out.weight",
            "guidance": "time_text_embed.guidance_embedder.linear_1.weight",
        }
        depth = _count(keys, r"transformer_blocks\.(\d+)\.")
        single = _count(keys, r"single_transformer_blocks\.(\d+)\.")
        head = "transformer_blocks.0.attn.norm_q.weight" if depth else "single_transformer_blocks.0.attn.norm_q.weight"
        mlp = "transformer_blocks.0.ff.net.0.proj.weight" if depth else "single_transformer_blocks.0.proj_mlp.weight"
        qkv_bias = True
    hidden, in_channels = shape(k["x"])
    head_dim = shape(head)[0]
    if head_dim <= 0 or hidden % head_dim:
        raise CheckpointError(f"{source or 'checkpoint'}: key {head} {shape(head)} does not divide hidden {hidden}")
    if mlp is not None:
        mlp_hidden = shape(mlp)[0]
    else:  # BFL without double blocks: linear1 = 3 * hidden + mlp_hidden
        mlp_hidden = shape(f"{p}single_blocks.0.linear1.weight")[0] - 3 * hidden

    axes = None
    meta = getattr(ckpt, "metadata", {}) or {}
    conf = _diffusers_config_json(Path(source)) if (layout == "diffusers" and source is not None) else None
    if conf and conf.get("axes_dims_rope"):
        axes = tuple(int(a) for a in conf["axes_dims_rope"])
    elif "axes_dim" in meta:
        try:
            axes = tuple(int(a) for a in json.loads(meta["axes_dim"]))
        except (json.JSONDecodeError, TypeError, ValueError):
            bad = meta["axes_dim"]
            raise CheckpointError(f"{source}: metadata axes_dim {bad!r} is not a JSON list of ints") from None
    if axes is None:
        axes = default_axes_dim(head_dim)
    return FluxConfig(
        in_channels=in_channels,
        out_channels=shape(k["out"])[0],
        vec_in_dim=shape(k["vec"])[1],
        context_in_dim=shape(k["txt"])[1],
        hidden_size=hidden,
        mlp_ratio=mlp_hidden / hidden,
        num_heads=hidden // head_dim,
        depth=depth,
        depth_single_blocks=single,
        axes_dim=axes,
        qkv_bias=qkv_bias,
        guidance_embed=k["guidance"] in ckpt,
    )


def rules_for(ckpt: Checkpoint | Iterable[str], cfg: FluxConfig) -> dict[str, Rule]:
    """The conversion table for this checkpoint's layout."""
    keys = list(ckpt.keys()) if hasattr(ckpt, "keys") else list(ckpt)
    layout = detect_layout(keys)
    if layout == "bfl":
        return bfl_rules(cfg, _bfl_prefix(keys))
    if layout == "diffusers":
        return diffusers_rules(cfg)
    raise CheckpointError(f"{getattr(ckpt, 'source', 'checkpoint')}: not a FLUX transformer (no BFL/diffusers keys)")


def abstract_flux(cfg: FluxConfig, dtype=jnp.bfloat16, attention_impl: str | None = None) -> Flux:
    """Flux with ShapeDtypeStruct parameters (nothing allocated)."""
    return nnx.eval_shape(
        lambda: Flux(cfg, dtype=dtype, param_dtype=dtype, rngs=nnx.Rngs(0), attention_impl=attention_impl)
    )


def load_flux(
    path,
    dtype=jnp.bfloat16,
    *,
    config: FluxConfig | None = None,
    sharding: Callable[[str, tuple[int, ...]], jax.sharding.Sharding | None] | None = None,
    attention_impl: str | None = None,
    progress: bool = False,
) -> Flux:
    """Flux with weights from a diffusers `transformer/` folder (or one of its files) or a BFL file.

    Parameters and compute in `dtype`; `config` overrides inference from shapes;
    `sharding(path, shape)` places each parameter (default: the default device). Every key
    must be used and every parameter filled, else CheckpointError naming the key.
    """
    ckpt = open_checkpoint(path)
    cfg = config if config is not None else infer_config(ckpt)
    rules = rules_for(ckpt, cfg)
    model = abstract_flux(cfg, dtype, attention_impl)
    return loading.fill(model, rules, ckpt, dtype=dtype, sharding=sharding, progress=progress)


def _build(ckpt: Checkpoint):
    cfg = infer_config(ckpt)
    return abstract_flux(cfg), rules_for(ckpt, cfg), (lambda k: False)


FLUX_BFL = loading.CheckpointKind("flux-bfl", lambda keys: detect_layout(keys) == "bfl", _build)
FLUX_DIFFUSERS = loading.CheckpointKind(
    "flux-diffusers", lambda keys: detect_layout(keys) == "diffusers", _build
)

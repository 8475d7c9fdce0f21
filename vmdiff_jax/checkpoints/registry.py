"""Every checkpoint kind vmdiff-jax loads, and the one loader over them.

`load(path)` opens the checkpoint, detects its kind from the keys (or takes `kind=`), builds
the kind's Plan (abstract model + rules) and fills it; `check_checkpoint(path)` builds the
same Plan and lists its problems from the headers alone (`vmdiff convert --check`). The
`load_*` functions are the same loader with each model's name and options.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import jax.numpy as jnp

from vmdiff_jax.checkpoints import encoders, flux, vae
from vmdiff_jax.checkpoints.files import Checkpoint, CheckpointError, open_checkpoint
from vmdiff_jax.checkpoints.loader import Kind, ShardingFn, check, fill
from vmdiff_jax.nn import checks
from vmdiff_jax.nn.redux import ReduxEncoder

# Most specific first: the first kind whose detect() accepts the keys is the checkpoint's kind.
KINDS: tuple[Kind, ...] = (flux.FLUX_BFL, flux.FLUX_DIFFUSERS, vae.VAE_BFL, vae.VAE_DIFFUSERS, encoders.REDUX,
                           encoders.SIGLIP, encoders.CLIP_L, encoders.DINOV2, encoders.BIGG_OPENCLIP,
                           encoders.BIGG_HF)


def kind_of(ckpt: Checkpoint, kind: str | Kind | Sequence[Kind] | None = None) -> Kind:
    """The Kind named `kind` (or `kind` itself), else the first of `kind` (a sequence; default
    KINDS) that detects itself in `ckpt`'s keys."""
    if isinstance(kind, Kind):
        return kind
    if isinstance(kind, str):
        match = [k for k in KINDS if k.name == kind]
        if not match:
            raise CheckpointError(f"unknown checkpoint kind {kind!r}; known: {', '.join(k.name for k in KINDS)}")
        return match[0]
    among = KINDS if kind is None else tuple(kind)
    match = [k for k in among if k.detect(ckpt)]
    if not match and kind is not None:  # the caller named the model: its builder names what is missing
        return among[0]
    if not match:
        raise CheckpointError(f"{ckpt.source}: not a checkpoint kind vmdiff-jax knows ({len(ckpt)} tensors, e.g. "
                              f"{next(iter(ckpt), 'none')!r}; known: {', '.join(k.name for k in KINDS)})")
    return match[0]


def load(path: str | os.PathLike, kind: str | Kind | Sequence[Kind] | None = None, *, dtype=None,
         sharding: ShardingFn | None = None, check_finite: bool = True, progress: bool = False, **options):
    """The model in the checkpoint at `path` (file or folder), its kind detected from the keys.

    kind: a kind's name, a Kind, or the kinds to detect among (default: all of KINDS).
    dtype: parameters and compute dtype (default: the kind's, bf16 for FLUX and the VAE,
    float32 for the encoders); sharding(path, shape) places each parameter (each process
    reads only its devices' slices); check_finite: stop on a NaN/Inf naming the tensor;
    options: the kind's overrides (`config=`, `attention_impl=`, ...). Every key must be used
    and every parameter filled, else CheckpointError naming the key.
    """
    ckpt = open_checkpoint(path)
    k = kind_of(ckpt, kind)
    plan = k.build(ckpt, dtype=k.default_dtype if dtype is None else dtype, strict=True, **options)
    return fill(plan, ckpt, sharding=sharding, check_finite=check_finite, progress=progress)


def check_checkpoint(path: str | os.PathLike, kind: str | None = None) -> tuple[str, list[str], int]:
    """(kind name, problems, number of tensors) for the checkpoint at `path`, headers only."""
    ckpt = open_checkpoint(path)
    k = kind_of(ckpt, kind)
    return k.name, check(k.build(ckpt, dtype=k.default_dtype, strict=False), ckpt), len(ckpt)


# --------------------------------------------------------------------------- one name per model


FLUX = (flux.FLUX_BFL, flux.FLUX_DIFFUSERS)
VAE = (vae.VAE_BFL, vae.VAE_DIFFUSERS)
CLIP_BIGG = (encoders.BIGG_OPENCLIP, encoders.BIGG_HF)


def load_flux(path, dtype=jnp.bfloat16, *, config=None, sharding: ShardingFn | None = None,
              attention_impl: str | None = None, progress: bool = False, check_finite: bool = True):
    """Flux from a diffusers `transformer/` folder (or one of its files) or a BFL file.

    Parameters and compute in `dtype`; `config` overrides inference from shapes;
    `sharding(path, shape)` places each parameter (default: the default device).
    """
    from vmdiff_jax.nn.flux import FluxConfig

    checks.path("path", path)
    checks.float_dtype("dtype", dtype, fp8=True)
    checks.instance("config", config, FluxConfig, optional=True)
    if sharding is not None:
        checks.function("sharding", sharding)
    return load(path, FLUX, dtype=dtype, sharding=sharding, check_finite=check_finite, progress=progress,
                config=config, attention_impl=attention_impl)


def load_vae(path, dtype=jnp.bfloat16, *, config=None, check_finite: bool = True):
    """An AutoEncoder (params and compute in `dtype`) from BFL `ae.safetensors` or a diffusers `vae/`
    folder (config.json + diffusion_pytorch_model.safetensors); its `cfg` carries the
    checkpoint's latent scale and shift."""
    from vmdiff_jax.nn.vae import VAEConfig

    checks.path("path", path)
    checks.float_dtype("dtype", dtype)
    checks.instance("config", config, VAEConfig, optional=True)
    return load(path, VAE, dtype=dtype, check_finite=check_finite, config=config)


def load_siglip(path, *, config=None, dtype=jnp.float32, check_finite: bool = True):
    """SigLIP vision tower (with its MAP head when the file has one) from a file or folder."""
    return load(path, encoders.SIGLIP, dtype=dtype, check_finite=check_finite, config=config)


def load_redux(redux_file, siglip_path, *, siglip_config=None, dtype=jnp.float32,
               check_finite: bool = True) -> ReduxEncoder:
    """The Redux image condition: SigLIP tower + projector, (B, 384, 384, 3) -> (B, 729, 4096)."""
    redux = load(redux_file, encoders.REDUX, dtype=dtype, check_finite=check_finite)
    siglip = load_siglip(siglip_path, config=siglip_config, dtype=dtype, check_finite=check_finite)
    if siglip.cfg.width != redux.redux_up.in_features:
        raise CheckpointError(f"{redux_file}: redux_up takes {redux.redux_up.in_features} features but the SigLIP "
                              f"tower at {siglip_path} gives {siglip.cfg.width}")
    return ReduxEncoder(siglip, redux)


def load_clip_l(path, *, config=None, dtype=jnp.float32, check_finite: bool = True):
    """CLIP text encoder (FLUX's text_encoder: CLIP ViT-L/14) from a file or folder."""
    return load(path, encoders.CLIP_L, dtype=dtype, check_finite=check_finite, config=config)


def load_dinov2(path, *, config=None, dtype=jnp.float32, check_finite: bool = True):
    """DINOv2 (transformers Dinov2Model hub file) with 'mean_all' pooling."""
    return load(path, encoders.DINOV2, dtype=dtype, check_finite=check_finite, config=config)


def load_clip_bigg(path, *, vision_config=None, text_config=None, dtype=jnp.float32, check_finite: bool = True):
    """CLIP ViT-bigG-14 (both towers), open_clip or transformers layout. A folder holding
    open_clip_model.safetensors (the laion repo) is read through that file."""
    path = Path(path)
    if path.is_dir() and (path / "open_clip_model.safetensors").is_file():
        path = path / "open_clip_model.safetensors"
    return load(path, CLIP_BIGG, dtype=dtype, check_finite=check_finite, vision_config=vision_config,
                text_config=text_config)

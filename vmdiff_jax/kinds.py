"""Every checkpoint kind vmdiff-jax loads, for `vmdiff convert --check`: detect, build, check."""

from __future__ import annotations

from vmdiff_jax import loading
from vmdiff_jax.safetensors_io import CheckpointError, open_checkpoint


def all_kinds() -> list[loading.CheckpointKind]:
    """The known kinds, most specific first."""
    from vmdiff_jax import encoders_checkpoint as enc
    from vmdiff_jax import flux_checkpoint as fl
    from vmdiff_jax import vae_checkpoint as va

    return [fl.FLUX_BFL, fl.FLUX_DIFFUSERS, va.VAE_BFL, va.VAE_DIFFUSERS, enc.REDUX, enc.SIGLIP, enc.CLIP_TEXT,
            enc.DINOV2, enc.BIGG_OPENCLIP, enc.BIGG_HF]


def check_checkpoint(path, kind: str | None = None) -> tuple[str, list[str], int]:
    """(kind name, problems, number of tensors) for the checkpoint at `path`, headers only."""
    ckpt = open_checkpoint(path)
    keys = set(ckpt)
    kinds = all_kinds()
    if kind is not None:
        match = [k for k in kinds if k.name == kind]
        if not match:
            raise CheckpointError(f"unknown --kind {kind!r}; known: {', '.join(k.name for k in kinds)}")
    else:
        match = [k for k in kinds if k.detect(keys)]
        if not match:
            raise CheckpointError(f"{path}: not a checkpoint kind vmdiff-jax knows ({len(keys)} tensors; known: {', '.join(k.name for k in kinds)})")
    k = match[0]
    model, rules, ignore = k.build(ckpt)
    return k.name, loading.check(model, rules, ckpt, ignore), len(keys)

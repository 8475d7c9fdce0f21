"""Checkpoints: finding, checking and loading every model's weights (safetensors only).

    from vmdiff_jax.checkpoints import load, load_flux, CheckpointError
    flux = load("weights/flux1-krea-dev.safetensors")   # kind detected from the keys

Modules: `files` (safetensors files and folders, read with the `safetensors` library),
`rules` (how a parameter is made from checkpoint tensors), `loader` (Plan, Kind, check,
fill), `flux` / `vae` / `encoders` (one kind per published layout), `registry` (the kinds,
`load`, `check_checkpoint`, the `load_*` names), `tokenizer` (CLIP tokenizer folders),
`weights` (finding the seven checkpoints and two tokenizers).
The loaders are imported lazily, so `CheckpointError` costs no JAX import.
"""

from vmdiff_jax.checkpoints.files import CheckpointError
from vmdiff_jax.checkpoints.weights import MissingWeights

_LAZY = {name: "vmdiff_jax.checkpoints.registry" for name in (
    "load", "check_checkpoint", "kind_of", "KINDS", "load_flux", "load_vae", "load_redux", "load_siglip",
    "load_clip_l", "load_dinov2", "load_clip_bigg")}
_LAZY |= {"open_checkpoint": "vmdiff_jax.checkpoints.files", "Checkpoint": "vmdiff_jax.checkpoints.files",
          "find_weights": "vmdiff_jax.checkpoints.weights", "Rule": "vmdiff_jax.checkpoints.rules",
          "Stacked": "vmdiff_jax.checkpoints.rules",
          "Plan": "vmdiff_jax.checkpoints.loader", "Kind": "vmdiff_jax.checkpoints.loader",
          "load_tokenizer": "vmdiff_jax.checkpoints.tokenizer"}

__all__ = ["CheckpointError", "MissingWeights", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'vmdiff_jax.checkpoints' has no attribute {name!r}")

"""The networks of VMDiff, as loaded modules (`Models`) and split once into (graphdef, state)
for the pure stage functions (`SplitModels`).

The scorers (DINOv2 and CLIP bigG) always compute in float32, also when FLUX and the
encoders run in bf16 (`scorers_in_float32`): the score compares cosines that differ in the
third decimal, so bf16 activations would move the search's choices. Their weights stay in
the loaded dtype (no extra resident memory); what float32 costs is transient, inside the
compiled `features` call: activations twice the bf16 size (at 224 x 224, 257 tokens: about
20 MB per candidate for bigG, the larger tower: residual 1664 wide, MLP 8192, 16 heads of
257^2 logits), and each weight converted to float32 where it is used (per layer: 0.15 GB for
a bigG block; XLA schedules these converts, so the bound if all were live at once is the
towers in float32: 0.35 GB for DINOv2-base, 7.4 GB for the bigG image tower).
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax.numpy as jnp
from flax import nnx

from vmdiff_jax.nn.tokenizer import CLIPTokenizer
from vmdiff_jax.nn.flux import Flux
from vmdiff_jax.nn.redux import ReduxEncoder
from vmdiff_jax.nn.vae import AutoEncoder
from vmdiff_jax.nn.vit import CLIP, TextTransformer, VisionTransformer


@dataclasses.dataclass
class Models:
    """The networks of VMDiff (Flax NNX modules) and the two tokenizers."""

    flux: Flux
    vae: AutoEncoder
    clip_l: TextTransformer  # CLIP-L text: FLUX's pooled prompt vector
    clip_l_tokenizer: CLIPTokenizer
    redux: ReduxEncoder  # SigLIP + projector: the image condition tokens
    dinov2: VisionTransformer  # DINOv2: the score's visual similarity
    clip_bigg: CLIP  # CLIP ViT-bigG: the score's text similarity (encode_image / encode_text)
    clip_bigg_tokenizer: CLIPTokenizer


class Split(NamedTuple):
    """One module as nnx.split gives it: the static graph and the arrays."""

    graphdef: nnx.GraphDef
    state: nnx.State


@dataclasses.dataclass(frozen=True)
class SplitModels:
    """Every network of `Models` split into (graphdef, state), states placed where they run."""

    flux: Split
    vae: Split
    redux: Split
    clip_l: Split
    dinov2: Split
    clip_bigg: Split

    @classmethod
    def of(cls, models: Models, place=lambda state: state) -> "SplitModels":
        """Split each network once; `place(state)` puts the FLUX, VAE and scorer states on a mesh."""
        def split(module, placed: bool) -> Split:
            graphdef, state = nnx.split(module)
            return Split(graphdef, place(state) if placed else state)

        return cls(flux=split(models.flux, True), vae=split(models.vae, True), redux=split(models.redux, False),
                   clip_l=split(models.clip_l, False), dinov2=split(models.dinov2, True),
                   clip_bigg=split(models.clip_bigg, True))

    def parts(self) -> dict[str, Split]:
        """name -> Split of every network (no copies)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


def scorers_in_float32(models: Models) -> None:
    """Make DINOv2 and CLIP bigG compute in float32 whatever their weights' dtype (in place:
    every submodule's compute `dtype` becomes float32; parameters are left as they are)."""
    for tower in (models.dinov2, models.clip_bigg):
        for _, module in nnx.iter_modules(tower):
            if hasattr(module, "dtype"):
                module.dtype = jnp.float32

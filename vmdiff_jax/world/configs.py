"""Configs of the demo world's models: the real architectures (same modules, parameter paths
and checkpoint layouts), small sizes.

Token budgets are chosen for a 2-core CPU: SigLIP sees its real 384 x 384 input in 48-pixel
patches (an 8 x 8 grid: 64 Redux tokens an image, instead of 729), DINOv2 and CLIP bigG see the
score's 224 x 224 crop in 28-pixel patches (8 x 8). FLUX works at the demo's 64 x 64 (an 8 x 8
VAE latent: 16 packed tokens). Every encoder keeps its preset's switches (pooling, norms,
activation, layer scale, causal text), so the ordinary loaders infer these configs back from the
shipped files (a test checks it).
"""

from __future__ import annotations

import dataclasses

from vmdiff_jax.nn.flux import FluxConfig
from vmdiff_jax.nn.vae import VAEConfig
from vmdiff_jax.nn.vit_config import ViTConfig


@dataclasses.dataclass(frozen=True)
class WorldConfigs:
    """The seven networks' configs; vocab_size from the demo tokenizer."""

    flux: FluxConfig
    vae: VAEConfig
    clip_l: ViTConfig
    siglip: ViTConfig
    dinov2: ViTConfig
    clip_bigg_vision: ViTConfig
    clip_bigg_text: ViTConfig

    @classmethod
    def default(cls, vocab_size: int = 1024, eos_token_id: int = 1023) -> "WorldConfigs":
        ctx, text_w = 64, 32
        return cls(
            flux=FluxConfig(in_channels=64, out_channels=64, vec_in_dim=text_w, context_in_dim=ctx, hidden_size=64,
                            mlp_ratio=4.0, num_heads=2, depth=2, depth_single_blocks=2, axes_dim=(4, 14, 14),
                            theta=10_000, qkv_bias=True, guidance_embed=False),
            vae=VAEConfig(ch=16, ch_mult=(1, 1, 2, 2), num_res_blocks=1, z_channels=16, norm_groups=8,
                          scale_factor=1.0, shift_factor=0.0),
            clip_l=dataclasses.replace(ViTConfig.clip_l(), width=text_w, depth=2, heads=2, mlp_dim=64,
                                       vocab_size=vocab_size, context_length=77, eos_token_id=eos_token_id),
            siglip=dataclasses.replace(ViTConfig.siglip_so400m(), width=64, depth=2, heads=2, mlp_dim=128,
                                       patch_size=48, image_size=384, pool="none"),
            dinov2=dataclasses.replace(ViTConfig.dinov2_base(), width=64, depth=2, heads=2, mlp_dim=128,
                                       patch_size=28, image_size=224),
            clip_bigg_vision=dataclasses.replace(ViTConfig.clip_bigg_vision(), width=64, depth=2, heads=2,
                                                 mlp_dim=128, patch_size=28, image_size=224, proj_dim=64),
            clip_bigg_text=dataclasses.replace(ViTConfig.clip_bigg_text(), width=64, depth=2, heads=2, mlp_dim=128,
                                               vocab_size=vocab_size, context_length=77, proj_dim=64,
                                               eos_token_id=eos_token_id),
        )

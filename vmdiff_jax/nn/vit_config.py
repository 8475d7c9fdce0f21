"""`ViTConfig`: the switches that make one transformer encoder SigLIP, DINOv2, CLIP-L text or
CLIP bigG (`vit.py` builds the modules), and its named presets (full size and tiny)."""

from __future__ import annotations

import dataclasses

ACTIVATION_NAMES = ("gelu_tanh", "gelu", "quick_gelu")
POOLS = ("none", "map", "mean_all", "cls", "eos")


@dataclasses.dataclass(frozen=True)
class ViTConfig:
    """Hyperparameters of one tower (vision when patch_size is set, text when vocab_size is).

    pool: 'none'; 'map' attention-pool head (SigLIP); 'mean_all' mean of all final tokens,
    class token included (our DINOv2 feature); 'cls' first token (CLIP vision); 'eos' the
    end-of-text token (text towers).
    norm_after_pool: the final norm is applied to the pooled token only and the returned
    hidden states are the block outputs (CLIP vision, as transformers / open_clip do);
    otherwise the hidden states are normed (SigLIP, DINOv2, text towers).
    eos_token_id: None pools at argmax(ids) (open_clip, and transformers when its config
    says eos_token_id == 2); an id pools at the first position holding it.
    pos_interpolation: bicubic resize of the position grid to the input's (DINOv2).
    """

    width: int
    depth: int
    heads: int
    mlp_dim: int
    patch_size: int | None = None
    image_size: int | None = None
    vocab_size: int | None = None
    context_length: int | None = None
    norm_eps: float = 1e-6
    activation: str = "gelu"
    patch_bias: bool = True
    class_token: bool = False
    pre_norm: bool = False
    layer_scale: bool = False
    pos_interpolation: bool = False
    causal: bool = False
    pool: str = "none"
    norm_after_pool: bool = False
    proj_dim: int | None = None
    eos_token_id: int | None = None

    def __post_init__(self):
        if self.activation not in ACTIVATION_NAMES:
            raise ValueError(f"activation {self.activation!r} not in {ACTIVATION_NAMES}")
        if self.pool not in POOLS:
            raise ValueError(f"pool {self.pool!r} not in {POOLS}")
        if (self.patch_size is None) == (self.vocab_size is None):
            raise ValueError("set exactly one of patch_size (vision) and vocab_size (text)")

    @property
    def is_text(self) -> bool:
        return self.vocab_size is not None

    @property
    def grid(self) -> int:
        """Side of the stored position grid (vision)."""
        return self.image_size // self.patch_size

    # ------------------------------------------------------------------------- presets

    @classmethod
    def siglip_so400m(cls) -> "ViTConfig":
        """google/siglip-so400m-patch14-384 vision tower: 729 tokens of 1152."""
        return cls(width=1152, depth=27, heads=16, mlp_dim=4304, patch_size=14, image_size=384,
                   norm_eps=1e-6, activation="gelu_tanh", pool="map")

    @classmethod
    def dinov2_base(cls) -> "ViTConfig":
        """facebook/dinov2-base: 37x37 position grid (518 px), interpolated to the input."""
        return cls(width=768, depth=12, heads=12, mlp_dim=3072, patch_size=14, image_size=518,
                   norm_eps=1e-6, activation="gelu", class_token=True, layer_scale=True,
                   pos_interpolation=True, pool="mean_all")

    @classmethod
    def clip_l(cls) -> "ViTConfig":
        """CLIP ViT-L/14 text encoder (FLUX's text_encoder): pooled = final-normed EOS token."""
        return cls(width=768, depth=12, heads=12, mlp_dim=3072, vocab_size=49408, context_length=77,
                   norm_eps=1e-5, activation="quick_gelu", causal=True, pool="eos")

    @classmethod
    def clip_bigg_vision(cls) -> "ViTConfig":
        """open_clip ViT-bigG-14 image tower: 224 px, width 1664, embedding 1280."""
        return cls(width=1664, depth=48, heads=16, mlp_dim=8192, patch_size=14, image_size=224,
                   norm_eps=1e-5, activation="gelu", patch_bias=False, class_token=True, pre_norm=True,
                   pool="cls", norm_after_pool=True, proj_dim=1280)

    @classmethod
    def clip_bigg_text(cls) -> "ViTConfig":
        """open_clip ViT-bigG-14 text tower: width 1280, 20 heads, embedding 1280."""
        return cls(width=1280, depth=32, heads=20, mlp_dim=5120, vocab_size=49408, context_length=77,
                   norm_eps=1e-5, activation="gelu", causal=True, pool="eos", proj_dim=1280)

    @classmethod
    def tiny_siglip(cls) -> "ViTConfig":
        return dataclasses.replace(cls.siglip_so400m(), width=32, depth=2, heads=2, mlp_dim=72, patch_size=4,
                                   image_size=16)

    @classmethod
    def tiny_dinov2(cls) -> "ViTConfig":
        return dataclasses.replace(cls.dinov2_base(), width=32, depth=2, heads=2, mlp_dim=128, patch_size=4,
                                   image_size=40)

    @classmethod
    def tiny_clip_l(cls) -> "ViTConfig":
        return dataclasses.replace(cls.clip_l(), width=32, depth=2, heads=2, mlp_dim=48, vocab_size=100,
                                   context_length=16)

    @classmethod
    def tiny_clip_bigg_vision(cls) -> "ViTConfig":
        return dataclasses.replace(cls.clip_bigg_vision(), width=48, depth=2, heads=2, mlp_dim=96, patch_size=4,
                                   image_size=16, proj_dim=24)

    @classmethod
    def tiny_clip_bigg_text(cls) -> "ViTConfig":
        return dataclasses.replace(cls.clip_bigg_text(), width=32, depth=2, heads=2, mlp_dim=64, vocab_size=100,
                                   context_length=16, proj_dim=24)

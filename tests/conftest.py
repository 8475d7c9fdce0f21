"""Fixtures shared by several test modules (helpers.py holds the shared functions).

- `weights`: a complete weights folder in the real layouts, every model written by its PyTorch
  reference (tiny configs, chained dimensions, perturbed weights), as `vmdiff fuse --weights` finds it;
- `photos`: two random-noise photos with label-bearing names (red_apple.png, toy_duck.jpg).
"""

import shutil

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL, FluxTransformer2DModel
from diffusers.pipelines.flux.modeling_flux import ReduxImageEncoder
from PIL import Image
from safetensors.torch import save_file
from transformers import (CLIPConfig, CLIPModel, CLIPTextConfig, CLIPTextModel, Dinov2Config, Dinov2Model,
                          SiglipVisionConfig, SiglipVisionModel)

from helpers import perturbed
from vmdiff_jax.engine.demo import TOKENIZER_FOLDER as DEMO_FOLDER

VOCAB = 1024  # the demo tokenizer's


def _jitter(m):
    return perturbed(m, None, scale=0.05)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    torch.manual_seed(0)
    w = tmp_path_factory.mktemp("weights")
    _jitter(FluxTransformer2DModel(patch_size=1, in_channels=64, num_layers=1, num_single_layers=1, attention_head_dim=16,
                                    num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32,
                                    guidance_embeds=True, axes_dims_rope=(4, 6, 6))).save_pretrained(w / "flux")
    _jitter(AutoencoderKL(in_channels=3, out_channels=3, latent_channels=16, block_out_channels=(8, 8, 16, 16),
                           layers_per_block=1, down_block_types=("DownEncoderBlock2D",) * 4,
                           up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=4, use_quant_conv=False,
                           use_post_quant_conv=False, scaling_factor=0.3611, shift_factor=0.1159)).save_pretrained(w / "vae")
    _jitter(CLIPTextModel(CLIPTextConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                                          num_attention_heads=2, max_position_embeddings=77, hidden_act="quick_gelu",
                                          eos_token_id=2))).save_pretrained(w / "text_encoder")
    shutil.copytree(DEMO_FOLDER, w / "tokenizer")
    _jitter(SiglipVisionModel(SiglipVisionConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                                                  num_attention_heads=2, image_size=384, patch_size=14))).save_pretrained(w / "siglip")
    save_file(_jitter(ReduxImageEncoder(redux_dim=32, txt_in_features=32)).state_dict(), w / "flux1-redux-dev.safetensors")
    _jitter(Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, patch_size=14,
                                      image_size=56))).save_pretrained(w / "dinov2")
    bigg = CLIPConfig(text_config=dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                       num_attention_heads=2, max_position_embeddings=77, hidden_act="gelu"),
                      vision_config=dict(hidden_size=48, intermediate_size=96, num_hidden_layers=1, num_attention_heads=2,
                                         image_size=224, patch_size=14, hidden_act="gelu"), projection_dim=24)
    _jitter(CLIPModel(bigg)).save_pretrained(w / "clip_bigg")
    for f in ("vocab.json", "merges.txt"):
        shutil.copy(DEMO_FOLDER / f, w / "clip_bigg" / f)
    return w


@pytest.fixture()
def photos(tmp_path):
    rng = np.random.default_rng(3)
    a, b = tmp_path / "red_apple.png", tmp_path / "toy_duck.jpg"
    Image.fromarray(rng.integers(0, 255, (90, 120, 3), dtype=np.uint8)).save(a)
    Image.fromarray(rng.integers(0, 255, (80, 80, 3), dtype=np.uint8)).save(b)
    return a, b



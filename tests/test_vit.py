"""SigLIP vision + Redux and DINOv2 against transformers / diffusers, loaded through our loaders.

Tiny float32 configs, every reference parameter perturbed; rel = max|diff| / max(1, max|ref|).
"""

import json

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers.pipelines.flux.modeling_flux import ReduxImageEncoder
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import Dinov2Config, Dinov2Model, SiglipVisionConfig, SiglipVisionModel

from vmdiff_jax.nn import vit
from vmdiff_jax.checkpoints import CheckpointError, load_dinov2, load_redux, load_siglip

from helpers import perturbed, rel  # noqa: E402

TOL = 1e-4


def nchw(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images.transpose(0, 3, 1, 2).copy())


def test_bicubic_positions_match_torch_interpolate():
    rng = np.random.default_rng(0)
    for g_in, (gh, gw) in [(37, (16, 16)), (10, (6, 8)), (5, (9, 7)), (4, (4, 4))]:
        grid = rng.standard_normal((g_in, g_in, 6)).astype(np.float32)
        ref = torch.nn.functional.interpolate(torch.from_numpy(grid).permute(2, 0, 1)[None], size=(gh, gw),
                                              mode="bicubic", align_corners=False)[0].permute(1, 2, 0).numpy()
        ours = vit.resize_positions(jnp.asarray(grid.reshape(-1, 6)), g_in, (gh, gw))
        assert rel(np.asarray(ours).reshape(gh, gw, 6), ref) <= 1e-5, (g_in, gh, gw)


@pytest.fixture(scope="module")
def siglip_pair(tmp_path_factory):
    """A perturbed transformers SiglipVisionModel and diffusers ReduxImageEncoder, written as
    the hub files are: the SigLIP file in SiglipModel names (vision_model. prefix, text tower,
    logit_scale/bias), the Redux file as flux1-redux-dev.safetensors."""
    d = tmp_path_factory.mktemp("siglip")
    cfg = SiglipVisionConfig(hidden_size=32, intermediate_size=72, num_hidden_layers=2, num_attention_heads=2,
                             image_size=16, patch_size=4, hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6)
    ref = perturbed(SiglipVisionModel(cfg), 0)
    redux = perturbed(ReduxImageEncoder(redux_dim=32, txt_in_features=48), 1)
    hub = {f"vision_model.{k}": v.contiguous() for k, v in ref.state_dict().items()}
    hub |= {"text_model.embeddings.token_embedding.weight": torch.randn(50, 32),
            "text_model.head.weight": torch.randn(32, 32), "logit_scale": torch.ones(1), "logit_bias": torch.zeros(1)}
    save_file(hub, d / "siglip_hub.safetensors")
    save_file({k: v.contiguous() for k, v in redux.state_dict().items()}, d / "flux1-redux-dev.safetensors")
    ref.save_pretrained(d / "siglip_vision_model")  # transformers 5 writes these without the prefix
    return ref, redux, d


def test_siglip_and_redux_match_reference(siglip_pair):
    ref, redux_ref, d = siglip_pair
    images = np.random.default_rng(1).uniform(-1, 1, (2, 16, 16, 3)).astype(np.float32)
    with torch.no_grad():
        out = ref(pixel_values=nchw(images))
        tokens = redux_ref(out.last_hidden_state).image_embeds.numpy()
    enc = load_redux(d / "flux1-redux-dev.safetensors", d / "siglip_hub.safetensors", siglip_config=vit.ViTConfig.tiny_siglip())
    hidden, pooled = enc.siglip(jnp.asarray(images), pooled=True)
    assert hidden.shape == (2, 16, 32) and pooled.shape == (2, 32)
    assert rel(hidden, out.last_hidden_state.numpy()) <= TOL
    assert rel(pooled, out.pooler_output.numpy()) <= TOL
    ours = enc(jnp.asarray(images))
    assert ours.shape == (2, 16, 48)
    assert rel(ours, tokens) <= TOL
    # the transformers 5 save_pretrained folder (no prefix, config.json gives the heads)
    folder = load_siglip(d / "siglip_vision_model")
    assert folder.cfg.heads == 2 and folder.cfg.pool == "map"
    assert rel(folder(jnp.asarray(images), pooled=False)[0], out.last_hidden_state.numpy()) <= TOL


def test_siglip_missing_key_is_named(siglip_pair, tmp_path):
    _, _, d = siglip_pair
    with safe_open(d / "siglip_hub.safetensors", "pt") as f:
        t = {k: f.get_tensor(k) for k in f.keys() if k != "vision_model.encoder.layers.1.mlp.fc2.bias"}
    save_file(t, tmp_path / "broken.safetensors")
    with pytest.raises(CheckpointError, match=r"vision_model\.encoder\.layers\.1\.mlp\.fc2\.bias"):
        load_siglip(tmp_path / "broken.safetensors", config=vit.ViTConfig.tiny_siglip())
    with pytest.raises(CheckpointError, match="heads"):  # width 32 is no preset and there is no config.json
        load_siglip(tmp_path / "broken.safetensors")


def test_dinov2_matches_transformers_with_position_interpolation(tmp_path):
    cfg = Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=4, patch_size=4,
                       image_size=40, hidden_act="gelu", layer_norm_eps=1e-6)
    ref = perturbed(Dinov2Model(cfg), 2)
    ref.save_pretrained(tmp_path)
    with safe_open(tmp_path / "model.safetensors", "pt") as f:  # legacy hub names, as dinov2_base.hub.json
        assert "encoder.layer.0.attention.attention.query.weight" in f.keys()
    model = load_dinov2(tmp_path)
    assert model.cfg.heads == 2 and model.cfg.grid == 10 and model.cfg.layer_scale
    explicit = load_dinov2(tmp_path / "model.safetensors", config=vit.ViTConfig.tiny_dinov2())
    rng = np.random.default_rng(3)
    for hw in [(24, 24), (24, 32), (40, 40)]:  # 6x6 and 6x8 grids interpolate the 10x10 one; 40 does not
        images = rng.standard_normal((2, *hw, 3)).astype(np.float32)
        with torch.no_grad():
            want = ref(pixel_values=nchw(images)).last_hidden_state.numpy()
        for m in (model, explicit):
            hidden = vit.dinov2(m, jnp.asarray(images))
            assert hidden.shape == (2, 1 + (hw[0] // 4) * (hw[1] // 4), 32)
            assert rel(hidden, want) <= TOL, hw
            assert rel(vit.dino_features(m, jnp.asarray(images)), want.mean(axis=1)) <= TOL, hw
    cfg_json = json.loads((tmp_path / "config.json").read_text())
    assert cfg_json["model_type"] == "dinov2"

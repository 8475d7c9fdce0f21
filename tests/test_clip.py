"""CLIP text (transformers CLIPTextModel) and CLIP bigG-style two towers (transformers CLIPModel,
read from both its own layout and the open_clip layout), loaded through our loaders.

Tiny float32 configs, every reference parameter perturbed; rel = max|diff| / max(1, max|ref|).
"""

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from transformers import CLIPConfig, CLIPModel, CLIPTextConfig, CLIPTextModel

from vmdiff_jax.nn import vit
from vmdiff_jax.checkpoints import load_clip_bigg, load_clip_l

from helpers import perturbed, rel  # noqa: E402

TOL = 1e-4
L = 16  # tiny context length


def token_ids(eos: int, rng, pad_with_eos: tuple[bool, ...]) -> np.ndarray:
    """Rows of random tokens (never eos), eos at different positions, then padding (eos or 0)."""
    ids = rng.integers(3, 99, (len(pad_with_eos), L))
    ids[ids == eos] = 3
    for row, (end, pad_eos) in enumerate(zip([2, 8, L - 1, 5], pad_with_eos)):
        ids[row, end] = eos
        ids[row, end + 1:] = eos if pad_eos else 0
    return ids.astype(np.int32)


@pytest.mark.parametrize("eos", [2, 7], ids=["argmax(eos_token_id=2)", "first_eos"])
def test_clip_text_matches_transformers(tmp_path, eos):
    """eos_token_id == 2: transformers pools at argmax(ids) (the max id 99 plays EOS here);
    otherwise at the first position of eos_token_id (7, smaller than other tokens)."""
    cfg = CLIPTextConfig(vocab_size=100, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=L, hidden_act="quick_gelu",
                         layer_norm_eps=1e-5, bos_token_id=0, pad_token_id=1, eos_token_id=eos)
    ref = perturbed(CLIPTextModel(cfg), 4)
    ids = token_ids(99 if eos == 2 else eos, np.random.default_rng(5), (False, True, False, True))
    with torch.no_grad():
        out = ref(input_ids=torch.from_numpy(ids).long())
    # transformers 5 save_pretrained: no text_model. prefix, config.json says heads and eos
    ref.save_pretrained(tmp_path / "folder")
    # hub layout (FLUX's text_encoder, openai CLIPModel): text_model. prefix, position_ids, text_projection
    hub = {f"text_model.{k}": v.contiguous() for k, v in ref.state_dict().items()}
    hub |= {"text_model.embeddings.position_ids": torch.arange(L)[None], "text_projection.weight": torch.randn(32, 32)}
    save_file(hub, tmp_path / "hub.safetensors")
    explicit = dataclasses.replace(vit.ViTConfig.tiny_clip_l(), eos_token_id=None if eos == 2 else eos)
    for model in (load_clip_l(tmp_path / "folder"), load_clip_l(tmp_path / "hub.safetensors", config=explicit)):
        assert model.cfg.eos_token_id == explicit.eos_token_id and model.cfg.activation == "quick_gelu"
        hidden, pooled = model(jnp.asarray(ids))
        assert hidden.shape == (4, L, 32) and pooled.shape == (4, 32)
        assert rel(hidden, out.last_hidden_state.numpy()) <= TOL
        assert rel(pooled, out.pooler_output.numpy()) <= TOL


def openclip_layout(sd: dict) -> dict:
    """transformers CLIPModel state dict -> open_clip names (fused in_proj = cat(q, k, v),
    projections stored (width, embed) and used as x @ proj)."""
    out = {"logit_scale": sd["logit_scale"]}

    def blocks(src, dst, n):
        for i in range(n):
            s, t = f"{src}{i}.", f"{dst}{i}."
            for w in ("weight", "bias"):
                out[f"{t}attn.in_proj_{w}"] = torch.cat([sd[f"{s}self_attn.{q}_proj.{w}"] for q in "qkv"])
                for a, b in [("attn.out_proj", "self_attn.out_proj"), ("ln_1", "layer_norm1"), ("ln_2", "layer_norm2"),
                             ("mlp.c_fc", "mlp.fc1"), ("mlp.c_proj", "mlp.fc2")]:
                    out[f"{t}{a}.{w}"] = sd[f"{s}{b}.{w}"]

    v, t = "vision_model.", "text_model."
    out |= {"visual.conv1.weight": sd[v + "embeddings.patch_embedding.weight"],
            "visual.class_embedding": sd[v + "embeddings.class_embedding"],
            "visual.positional_embedding": sd[v + "embeddings.position_embedding.weight"],
            "visual.proj": sd["visual_projection.weight"].T,
            "token_embedding.weight": sd[t + "embeddings.token_embedding.weight"],
            "positional_embedding": sd[t + "embeddings.position_embedding.weight"],
            "text_projection": sd["text_projection.weight"].T}
    for w in ("weight", "bias"):
        out |= {f"visual.ln_pre.{w}": sd[f"{v}pre_layrnorm.{w}"], f"visual.ln_post.{w}": sd[f"{v}post_layernorm.{w}"],
                f"ln_final.{w}": sd[f"{t}final_layer_norm.{w}"]}
    blocks(v + "encoder.layers.", "visual.transformer.resblocks.", 2)
    blocks(t + "encoder.layers.", "transformer.resblocks.", 2)
    return {k: x.contiguous() for k, x in out.items()}


def test_clip_bigg_matches_transformers_from_both_layouts(tmp_path):
    text = dict(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                max_position_embeddings=L, hidden_act="gelu", layer_norm_eps=1e-5, bos_token_id=0, pad_token_id=1,
                eos_token_id=2)
    vision = dict(hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=2, image_size=16,
                  patch_size=4, hidden_act="gelu", layer_norm_eps=1e-5)
    ref = perturbed(CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=24)), 6)
    ref.save_pretrained(tmp_path / "hf")
    save_file(openclip_layout(ref.state_dict()), tmp_path / "open_clip_model.safetensors")
    rng = np.random.default_rng(7)
    images = rng.standard_normal((2, 16, 16, 3)).astype(np.float32)
    ids = token_ids(99, rng, (False, True))
    with torch.no_grad():
        out = ref(input_ids=torch.from_numpy(ids).long(), pixel_values=torch.from_numpy(images.transpose(0, 3, 1, 2)))
        img_raw = ref.get_image_features(pixel_values=torch.from_numpy(images.transpose(0, 3, 1, 2))).pooler_output
        txt_raw = ref.get_text_features(input_ids=torch.from_numpy(ids).long()).pooler_output
    models = [load_clip_bigg(tmp_path / "hf"),
              load_clip_bigg(tmp_path / "open_clip_model.safetensors", vision_config=vit.ViTConfig.tiny_clip_bigg_vision(),
                             text_config=vit.ViTConfig.tiny_clip_bigg_text())]
    for model in models:
        img, txt = model.encode_image(jnp.asarray(images)), model.encode_text(jnp.asarray(ids))
        assert img.shape == (2, 24) and txt.shape == (2, 24)
        assert rel(img, img_raw.numpy()) <= TOL and rel(txt, txt_raw.numpy()) <= TOL
        img_n = model.encode_image(jnp.asarray(images), normalize=True)
        txt_n = model.encode_text(jnp.asarray(ids), normalize=True)
        assert rel(img_n, out.image_embeds.numpy()) <= TOL and rel(txt_n, out.text_embeds.numpy()) <= TOL
        np.testing.assert_allclose(np.linalg.norm(np.asarray(img_n), axis=-1), 1.0, rtol=1e-5)

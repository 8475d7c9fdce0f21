"""Checkpoint configs checked against their tensors: a config.json whose head count does not
divide the width, or whose hidden size, layer count, MLP size, channels, patch or image size
the tensors contradict, is one `vmdiff: error:` line naming the file and the field, exit 2,
in `vmdiff convert --check`, in loading and in `vmdiff fuse` (never a reshape traceback)."""

import json
import shutil

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL, FluxTransformer2DModel
from PIL import Image
from diffusers.pipelines.flux.modeling_flux import ReduxImageEncoder
from safetensors.torch import save_file
from transformers import CLIPConfig, CLIPModel, CLIPTextConfig, CLIPTextModel, Dinov2Config, Dinov2Model
from transformers import SiglipVisionConfig, SiglipVisionModel

from vmdiff_jax.app.cli import main
from vmdiff_jax.checkpoints import CheckpointError
from vmdiff_jax.checkpoints.registry import load
from vmdiff_jax.engine.demo import TOKENIZER_FOLDER as DEMO_FOLDER


VOCAB = 1024  # the demo tokenizer's


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """A weights folder of tiny real-layout checkpoints (chained sizes, as VMDiff.from_pretrained
    needs them), each model a save_pretrained folder with its config.json."""
    torch.manual_seed(0)
    w = tmp_path_factory.mktemp("configs")
    FluxTransformer2DModel(patch_size=1, in_channels=64, num_layers=1, num_single_layers=2, attention_head_dim=16,
                           num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, guidance_embeds=True,
                           axes_dims_rope=(4, 6, 6)).save_pretrained(w / "flux")
    AutoencoderKL(in_channels=3, out_channels=3, latent_channels=16, block_out_channels=(8, 8, 16, 16), layers_per_block=1,
                  down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                  norm_num_groups=4, use_quant_conv=False, use_post_quant_conv=False, scaling_factor=0.3611,
                  shift_factor=0.1159).save_pretrained(w / "vae")
    CLIPTextModel(CLIPTextConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                 num_attention_heads=2, max_position_embeddings=77, hidden_act="quick_gelu",
                                 eos_token_id=2)).save_pretrained(w / "text_encoder")
    shutil.copytree(DEMO_FOLDER, w / "tokenizer")
    SiglipVisionModel(SiglipVisionConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=1, num_attention_heads=2,
                                         image_size=384, patch_size=14)).save_pretrained(w / "siglip")
    save_file(ReduxImageEncoder(redux_dim=32, txt_in_features=32).state_dict(), w / "flux1-redux-dev.safetensors")
    Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, patch_size=14,
                             image_size=56)).save_pretrained(w / "dinov2")
    CLIPModel(CLIPConfig(text_config=dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                          num_attention_heads=2, max_position_embeddings=77, hidden_act="gelu"),
                         vision_config=dict(hidden_size=48, intermediate_size=96, num_hidden_layers=1,
                                            num_attention_heads=2, image_size=224, patch_size=14, hidden_act="gelu"),
                         projection_dim=24)).save_pretrained(w / "clip_bigg")
    for f in ("vocab.json", "merges.txt"):
        shutil.copy(DEMO_FOLDER / f, w / "clip_bigg" / f)
    return w


# (folder, config section or None, field, bad value, words the message must hold)
CASES = [
    ("flux", None, "num_attention_heads", 3, "x_embedder"),
    ("flux", None, "attention_head_dim", 8, "norm_q"),
    ("flux", None, "num_layers", 19, "transformer_blocks"),
    ("flux", None, "num_single_layers", 1, "single_transformer_blocks"),
    ("flux", None, "in_channels", 16, "x_embedder"),
    ("flux", None, "joint_attention_dim", 4096, "context_embedder"),
    ("flux", None, "pooled_projection_dim", 768, "text_embedder"),
    ("flux", None, "guidance_embeds", False, "guidance"),
    ("flux", None, "axes_dims_rope", [4, 6, 4], "head dim"),
    ("flux", None, "patch_size", 2, "patch_size 1"),
    ("flux", None, "num_layers", "19", "not an integer"),
    ("vae", None, "block_out_channels", [8, 8, 16, 32], "widths"),
    ("vae", None, "layers_per_block", 2, "resnets"),
    ("vae", None, "latent_channels", 4, "conv_in"),
    ("vae", None, "norm_num_groups", 3, "does not divide"),
    ("vae", None, "out_channels", 4, "conv_out"),
    ("text_encoder", None, "num_attention_heads", 3, "does not divide"),
    ("text_encoder", None, "hidden_size", 768, "width"),
    ("text_encoder", None, "num_hidden_layers", 12, "depth"),
    ("text_encoder", None, "intermediate_size", 3072, "mlp_dim"),
    ("text_encoder", None, "vocab_size", 49408, "vocab_size"),
    ("text_encoder", None, "max_position_embeddings", 64, "context_length"),
    ("siglip", None, "num_attention_heads", 5, "does not divide"),
    ("siglip", None, "image_size", 224, "grid"),
    ("siglip", None, "patch_size", 16, "patch_size"),
    ("dinov2", None, "num_hidden_layers", 12, "depth"),
    ("dinov2", None, "num_attention_heads", 0, "integer >= 1"),
    ("clip_bigg", "vision_config", "num_attention_heads", 5, "does not divide"),
    ("clip_bigg", "text_config", "num_hidden_layers", 32, "depth"),
    ("clip_bigg", None, "projection_dim", 1280, "visual_projection"),
]


def _mutated(folders, tmp_path, name, section, field, value):
    d = tmp_path / name
    shutil.copytree(folders / name, d)
    conf = json.loads((d / "config.json").read_text())
    (conf[section] if section else conf)[field] = value
    (d / "config.json").write_text(json.dumps(conf))
    return d


@pytest.mark.parametrize("name", ["flux", "vae", "text_encoder", "siglip", "dinov2", "clip_bigg"])
def test_consistent_configs_pass(folders, name, capsys):
    assert main(["convert", "--check", str(folders / name)]) == 0, capsys.readouterr()
    assert load(folders / name, dtype=np.float32, check_finite=False) is not None


@pytest.mark.parametrize("name, section, field, value, needle", CASES,
                         ids=[f"{c[0]}-{c[1] + '.' if c[1] else ''}{c[2]}={c[3]}" for c in CASES])
def test_config_contradicting_tensors_is_one_line(folders, tmp_path, capsys, name, section, field, value, needle):
    d = _mutated(folders, tmp_path, name, section, field, value)
    code = main(["convert", "--check", str(d)])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("vmdiff: error:"), err
    assert f"{d / 'config.json'}" in lines[0] and field in lines[0] and needle in lines[0], lines[0]
    with pytest.raises(CheckpointError) as e:
        load(d, dtype=np.float32, check_finite=False)
    assert field in str(e.value) and "config.json" in str(e.value) and "\n" not in str(e.value)


def test_fuse_with_a_contradicting_config_is_one_line(folders, tmp_path, capsys):
    """The whole command: a text encoder whose config.json says 3 heads for width 32 stops
    `vmdiff fuse` with one line naming it, before any result is written (was: a reshape
    traceback)."""
    imgs = []
    for k in range(2):
        p = tmp_path / f"obj{k}.png"
        Image.fromarray(np.full((40, 40, 3), 60 * k, np.uint8)).save(p)
        imgs.append(str(p))
    weights = tmp_path / "weights"
    shutil.copytree(folders, weights)
    run = ["fuse", *imgs, "--weights", str(weights), "--steps", "2", "--size", "32", "--no-progress", "--locator", "whole"]
    conf = json.loads((weights / "text_encoder" / "config.json").read_text())
    (weights / "text_encoder" / "config.json").write_text(json.dumps({**conf, "num_attention_heads": 3}))
    code = main(run + ["--out", str(tmp_path / "bad")])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("vmdiff: error:"), err
    assert "text_encoder/config.json: num_attention_heads = 3 does not divide the width 32" in lines[0], lines[0]
    assert not (tmp_path / "bad").exists()

"""convert/flux_to_bfl.py: a sharded diffusers folder rewritten as one BFL file loads to the same model."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import torch
from flax import nnx
from diffusers import FluxTransformer2DModel

from vmdiff_jax.checkpoints import load_flux
from vmdiff_jax.checkpoints.files import open_checkpoint
from vmdiff_jax.checkpoints.rules import param_paths

ROOT = Path(__file__).resolve().parents[1]


def _tool():
    spec = importlib.util.spec_from_file_location("flux_to_bfl", ROOT / "convert" / "flux_to_bfl.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_diffusers_folder_to_bfl_file_round_trip(tmp_path):
    torch.manual_seed(0)
    ref = FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=2, attention_head_dim=16,
                                 num_attention_heads=2, joint_attention_dim=24, pooled_projection_dim=12,
                                 guidance_embeds=True, axes_dims_rope=(4, 6, 6))
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(0.05 * torch.randn_like(p))
    ref.save_pretrained(tmp_path / "transformer", max_shard_size="20KB")
    assert len(list((tmp_path / "transformer").glob("*.safetensors"))) > 1  # sharded, with an index
    n = _tool().convert(tmp_path / "transformer", tmp_path / "flux_bfl.safetensors", "F32")
    ck = open_checkpoint(tmp_path / "flux_bfl.safetensors")
    assert n == len(ck) and "double_blocks.0.img_attn.qkv.weight" in ck and "final_layer.adaLN_modulation.1.weight" in ck
    a = load_flux(tmp_path / "transformer", dtype=np.float32)
    b = load_flux(tmp_path / "flux_bfl.safetensors", dtype=np.float32)  # axes from the file's metadata
    assert a.cfg == b.cfg
    sa, sb = (jax.tree.leaves(nnx.state(m, nnx.Param)) for m in (a, b))
    assert len(sa) == len(sb) == len(param_paths(a))
    for x, y in zip(sa, sb):
        np.testing.assert_array_equal(x, y)
    r = subprocess.run([sys.executable, str(ROOT / "convert" / "flux_to_bfl.py"), str(tmp_path / "nope"), str(tmp_path / "o.safetensors")],
                       capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 2 and "no such file or folder" in r.stderr and "Traceback" not in r.stderr

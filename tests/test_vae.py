"""The FLUX VAE against diffusers AutoencoderKL (float32, CPU), and its loaders (diffusers and BFL layouts)."""

from __future__ import annotations

import json
import re

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL
from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint
from flax import nnx

from safetensors.numpy import save_file

from vmdiff_jax.checkpoints import files as sio
from vmdiff_jax.checkpoints.loader import Plan, check
from vmdiff_jax.checkpoints.rules import param_paths
from vmdiff_jax.nn.vae import AutoEncoder, VAEConfig, unscale_latents
from vmdiff_jax.checkpoints import load_vae
from vmdiff_jax.checkpoints.vae import VAE_BFL, VAE_DIFFUSERS, bfl_rules, detect_layout, diffusers_rules, infer_config

from helpers import MANIFESTS
ENC_TOL = 1e-4  # relative error of the encoded mean
DEC_TOL = 1e-3  # relative error of the decoded image
SIZES = [(16, 16), (24, 40)]


def rel_err(ours, ref) -> float:
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    return float(np.max(np.abs(ours - ref)) / max(1.0, np.max(np.abs(ref))))


def make_reference(widths: tuple[int, ...], groups: int, seed: int) -> AutoencoderKL:
    torch.manual_seed(seed)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=16, block_out_channels=widths, layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * len(widths), up_block_types=("UpDecoderBlock2D",) * len(widths),
        norm_num_groups=groups, use_quant_conv=False, use_post_quant_conv=False, scaling_factor=0.3611,
        shift_factor=0.1159,
    ).eval()
    with torch.no_grad():
        for p in vae.parameters():  # no default init (GroupNorm 1/0) may hide a mapping bug
            p.add_(0.05 * torch.randn_like(p))
    return vae


def diffusers_to_bfl(sd: dict[str, torch.Tensor], n_levels: int) -> dict[str, torch.Tensor]:
    """Inverse of diffusers' convert_ldm_vae_checkpoint, written independently of checkpoints/vae.py."""
    out = {}
    for k, v in sd.items():
        b = k
        b = re.sub(r"encoder\.down_blocks\.(\d+)\.resnets\.", r"encoder.down.\1.block.", b)
        b = re.sub(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.", r"encoder.down.\1.downsample.", b)
        b = re.sub(r"decoder\.up_blocks\.(\d+)\.resnets\.",
                   lambda m: f"decoder.up.{n_levels - 1 - int(m.group(1))}.block.", b)
        b = re.sub(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.",
                   lambda m: f"decoder.up.{n_levels - 1 - int(m.group(1))}.upsample.", b)
        b = b.replace("mid_block.resnets.0.", "mid.block_1.").replace("mid_block.resnets.1.", "mid.block_2.")
        b = b.replace("conv_shortcut", "nin_shortcut").replace("conv_norm_out", "norm_out")
        if "mid_block.attentions.0." in b:
            b = b.replace("mid_block.attentions.0.", "mid.attn_1.")
            for d, l in (("group_norm", "norm"), ("to_q", "q"), ("to_k", "k"), ("to_v", "v"), ("to_out.0", "proj_out")):
                b = b.replace(f"attn_1.{d}.", f"attn_1.{l}.")
            if v.ndim == 2:
                v = v[:, :, None, None]
        out[b] = v
    return out


def to_numpy(sd: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy().copy() for k, v in sd.items()}


def reference_outputs(vae: AutoencoderKL, size: tuple[int, int], seed: int):
    """(images NHWC, torch mean NHWC, latents NHWC, torch decoded NHWC) for one input size."""
    rng = np.random.default_rng(seed)
    f = 2 ** (len(vae.config.block_out_channels) - 1)
    x = rng.uniform(-1, 1, (2, *size, 3)).astype(np.float32)
    z = rng.standard_normal((2, size[0] // f, size[1] // f, 16)).astype(np.float32)
    with torch.no_grad():
        mean = vae.encode(torch.from_numpy(x).permute(0, 3, 1, 2)).latent_dist.mean
        img = vae.decode(torch.from_numpy(z).permute(0, 3, 1, 2)).sample
    return x, mean.permute(0, 2, 3, 1).numpy(), z, img.permute(0, 2, 3, 1).numpy()


def assert_parity(model: AutoEncoder, vae: AutoencoderKL, seed: int = 0):
    errs = []
    for i, size in enumerate(SIZES):
        x, mean_ref, z, img_ref = reference_outputs(vae, size, seed + i)
        mean = model.encode(jnp.asarray(x))
        img = model.decode(jnp.asarray(z))
        assert mean.shape == mean_ref.shape and img.shape == img_ref.shape
        e_enc, e_dec = rel_err(mean, mean_ref), rel_err(img, img_ref)
        assert e_enc <= ENC_TOL, f"encode {size}: relative error {e_enc:.2e} > {ENC_TOL}"
        assert e_dec <= DEC_TOL, f"decode {size}: relative error {e_dec:.2e} > {DEC_TOL}"
        errs.append((size, e_enc, e_dec))
    print("parity (size, encode rel err, decode rel err):", errs)


# (block_out_channels, norm_num_groups): two levels (2x) as VAEConfig.tiny, and three levels (4x)
# with two equal widths so that a wrong up-block order only shows in the numbers.
REFS = {"2lvl": ((8, 16), 4), "3lvl": ((8, 16, 16), 8)}


@pytest.fixture(scope="module", params=sorted(REFS))
def reference(request, tmp_path_factory):
    widths, groups = REFS[request.param]
    vae = make_reference(widths, groups, seed=len(widths))
    folder = tmp_path_factory.mktemp(f"vae_{request.param}")
    vae.save_pretrained(folder, safe_serialization=True)
    cfg = VAEConfig(ch=widths[0], ch_mult=tuple(w // widths[0] for w in widths), num_res_blocks=1,
                    z_channels=16, norm_groups=groups)
    return vae, folder, cfg


def test_diffusers_folder_parity(reference):
    vae, folder, cfg = reference
    assert (folder / "config.json").is_file() and (folder / "diffusion_pytorch_model.safetensors").is_file()
    ckpt = sio.open_checkpoint(folder)
    assert detect_layout(ckpt) == "diffusers" and VAE_DIFFUSERS.detect(set(ckpt)) and not VAE_BFL.detect(set(ckpt))
    assert infer_config(ckpt) == cfg  # norm_groups read from config.json
    model = load_vae(folder, dtype=jnp.float32)
    assert model.cfg == cfg and model.decoder.conv_in.kernel.dtype == jnp.float32
    assert_parity(model, vae)


def test_bfl_layout_parity(reference, tmp_path):
    vae, _, cfg = reference
    sd = vae.state_dict()
    bfl = diffusers_to_bfl(sd, len(cfg.ch_mult))
    # our inverse mapping is exactly undone by diffusers' own BFL -> diffusers converter
    back = convert_ldm_vae_checkpoint(bfl, dict(vae.config))
    assert set(back) == set(sd)
    assert all(torch.equal(back[k], sd[k]) for k in sd)
    assert len(bfl) == len(sd) and set(bfl) == {k for r in bfl_rules(cfg).values() for k in r.sources}
    path = tmp_path / "ae.safetensors"
    save_file(to_numpy(bfl), path)
    ckpt = sio.open_checkpoint(path)
    assert detect_layout(ckpt) == "bfl" and VAE_BFL.detect(set(ckpt)) and not VAE_DIFFUSERS.detect(set(ckpt))
    got = infer_config(ckpt)  # no config.json: groups cannot be seen in shapes
    assert got == VAEConfig(**{**cfg.__dict__, "norm_groups": got.norm_groups})
    model = load_vae(path, dtype=jnp.float32, config=cfg)
    assert_parity(model, vae, seed=10)


@pytest.mark.parametrize("manifest,kind", [("flux1_vae.diffusers.json", VAE_DIFFUSERS),
                                           ("flux1_vae.bfl_ae.json", VAE_BFL)])
def test_full_size_checkpoint_structure(manifest, kind, tmp_path):
    shapes = {k: tuple(v) for k, v in json.loads((MANIFESTS / manifest).read_text()).items()}
    path = tmp_path / "vae.safetensors"
    sio.write_sparse(shapes, path, dtype="F32")
    ckpt = sio.open_checkpoint(path)
    assert kind.detect(set(ckpt)) and sum(k.detect(set(ckpt)) for k in (VAE_BFL, VAE_DIFFUSERS)) == 1
    assert infer_config(ckpt) == VAEConfig.flux()
    model = nnx.eval_shape(lambda: AutoEncoder(VAEConfig.flux(), rngs=nnx.Rngs(0)))
    assert len(param_paths(model)) == len(shapes) == 244
    rules = diffusers_rules(VAEConfig.flux()) if kind is VAE_DIFFUSERS else bfl_rules(VAEConfig.flux())
    assert check(Plan(model, rules), ckpt) == []
    assert check(kind.build(ckpt), ckpt) == []
    # a dropped key and a wrong shape are reported by name
    del shapes[next(k for k in shapes if k.endswith("attn_1.q.weight") or k.endswith("to_q.weight"))]
    bad = next(k for k in shapes if k.startswith("decoder.conv_in.weight"))
    shapes[bad] = (512, 8, 3, 3)
    sio.write_sparse(shapes, tmp_path / "bad.safetensors", dtype="F32")
    problems = check(Plan(model, rules), sio.open_checkpoint(tmp_path / "bad.safetensors"))
    assert any("missing key" in p and "q.weight" in p for p in problems)
    assert any("wrong shape" in p and bad in p for p in problems)


def test_bf16_checkpoint_loads(tmp_path):
    shapes = {k: tuple(v) for k, v in json.loads((MANIFESTS / "flux1_vae.diffusers.json").read_text()).items()}
    sio.write_sparse(shapes, tmp_path / "vae.safetensors")  # BF16, the dtype of the real diffusers file
    ckpt = sio.open_checkpoint(tmp_path / "vae.safetensors")
    assert check(VAE_DIFFUSERS.build(ckpt), ckpt) == []
    vae = make_reference((8, 16), 4, seed=5)
    sd = {k: v.numpy().astype(ml_dtypes.bfloat16) for k, v in vae.state_dict().items()}
    save_file(sd, tmp_path / "tiny.safetensors")
    cfg = VAEConfig(ch=8, ch_mult=(1, 2), num_res_blocks=1, norm_groups=4)
    model = load_vae(tmp_path / "tiny.safetensors", dtype=jnp.bfloat16, config=cfg)
    assert model.decoder.conv_in.kernel.dtype == jnp.bfloat16
    z = jnp.asarray(np.random.default_rng(0).standard_normal((1, 8, 8, 16)), jnp.float32)
    img = model.decode(z)
    assert img.dtype == jnp.bfloat16 and bool(jnp.all(jnp.isfinite(img.astype(jnp.float32))))


def test_wrong_checkpoints_raise_checkpoint_error(reference, tmp_path):
    _, folder, cfg = reference
    with pytest.raises(sio.CheckpointError, match="not a VAE checkpoint"):
        detect_layout({"double_blocks.0.img_attn.qkv.weight"})
    wrong = VAEConfig(**{**cfg.__dict__, "z_channels": 4})
    with pytest.raises(sio.CheckpointError, match="decoder.conv_in.weight"):
        load_vae(folder, dtype=jnp.float32, config=wrong)


def test_encode_with_key_samples():
    cfg = VAEConfig.tiny()
    model = AutoEncoder(cfg, rngs=nnx.Rngs(0))
    x = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (2, 8, 12, 3)), jnp.float32)
    mean = model.encode(x)
    assert mean.shape == (2, 4, 6, 16)
    k1, k2 = jax.random.key(1), jax.random.key(2)
    s1, s1b, s2 = model.encode(x, key=k1), model.encode(x, key=k1), model.encode(x, key=k2)
    assert np.array_equal(s1, s1b)
    assert float(jnp.max(jnp.abs(s1 - mean))) > 1e-2 and float(jnp.max(jnp.abs(s1 - s2))) > 1e-2
    # the sample is mean + std * N(0, 1) with std = exp(logvar / 2), logvar clipped to [-30, 20]
    logvar = jnp.split(model.encoder(x), 2, axis=-1)[1]
    want = mean + jnp.exp(0.5 * jnp.clip(logvar, -30, 20)) * jax.random.normal(k1, mean.shape)
    np.testing.assert_allclose(s1, want, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="multiple of 2"):
        model.encode(x[:, :7])


def test_unscale_inverts_the_encoder_scaling_with_the_configs_factors():
    z = jnp.asarray(np.random.default_rng(0).standard_normal((1, 4, 4, 16)), jnp.float32)
    cfg = VAEConfig.flux()
    assert (cfg.scale_factor, cfg.shift_factor) == (0.3611, 0.1159)
    np.testing.assert_allclose(unscale_latents((z - 0.1159) * 0.3611, cfg), z, rtol=1e-5, atol=1e-6)
    odd = VAEConfig(scale_factor=2.0, shift_factor=1.0)
    np.testing.assert_allclose(unscale_latents(z, odd), z / 2.0 + 1.0, rtol=1e-6)
    assert VAEConfig.tiny().downsample_factor == 2 and VAEConfig.flux().downsample_factor == 8

"""HSP composed end to end against a PyTorch reference assembled from diffusers' own pieces:
BNoise (SCat context, guided Euler steps i < den_stop, then inversion) and MDeNoise (the
context interpolated, Euler steps to 0, FluxPipeline._unpack_latents, z / scaling + shift,
AutoencoderKL.decode, (x + 1) / 2 clipped), with the same random weights on both sides."""

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL, FluxTransformer2DModel
from diffusers.pipelines.flux.pipeline_flux import FluxPipeline

from helpers import perturbed, rel
from vmdiff_jax.method import hsp, mixing, sampling
from vmdiff_jax.checkpoints import load_flux, load_vae

STEPS, SIZE, L, D, DY = 5, 64, 6, 32, 16  # 64 x 64 image -> 8 x 8 latent -> 16 packed tokens


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("hsp")
    flux = perturbed(FluxTransformer2DModel(patch_size=1, in_channels=64, num_layers=1, num_single_layers=1,
                                            attention_head_dim=16, num_attention_heads=2, joint_attention_dim=D,
                                            pooled_projection_dim=DY, guidance_embeds=True, axes_dims_rope=(4, 6, 6)), 0)
    vae = perturbed(AutoencoderKL(in_channels=3, out_channels=3, latent_channels=16, block_out_channels=(8, 8, 16, 16),
                                  layers_per_block=1, down_block_types=("DownEncoderBlock2D",) * 4,
                                  up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=4, use_quant_conv=False,
                                  use_post_quant_conv=False, scaling_factor=0.3611, shift_factor=0.1159), 1)
    flux.save_pretrained(d / "flux")
    vae.save_pretrained(d / "vae")
    rng = np.random.default_rng(0)
    c1, c2 = (rng.standard_normal((L, D)).astype(np.float32) for _ in range(2))
    y = rng.standard_normal(DY).astype(np.float32)
    cfg = hsp.HSPConfig(num_steps=STEPS, size=SIZE)
    eps = rng.standard_normal((hsp.seq_len(SIZE, 8), 64)).astype(np.float32)
    return flux, vae, load_flux(d / "flux", dtype=jnp.float32), load_vae(d / "vae", dtype=jnp.float32), c1, c2, y, eps, cfg


def _torch_velocity(flux, cfg, ctx, y, guidance):
    h = SIZE // 8
    img_ids = torch.from_numpy(sampling.image_ids(h, h))
    txt_ids = torch.zeros(ctx.shape[0], 3)

    def v(x, sigma):
        with torch.no_grad():
            return flux(hidden_states=x, encoder_hidden_states=torch.from_numpy(ctx)[None], pooled_projections=torch.from_numpy(y)[None],
                        timestep=torch.tensor([sigma], dtype=torch.float32), img_ids=img_ids, txt_ids=txt_ids,
                        guidance=torch.tensor([guidance], dtype=torch.float32), return_dict=False)[0]
    return v


def test_bnoise_matches_reference(setup):
    flux, _, jflux, _, c1, c2, y, eps, cfg = setup
    b1, b2 = 1.0, 1.7
    s = [float(v) for v in cfg.sigmas(len(eps))]
    ctx = np.concatenate([b1 * c1, b2 * c2])
    v_den, v_inv = _torch_velocity(flux, cfg, ctx, y, 5.0), _torch_velocity(flux, cfg, ctx, y, 0.0)
    x = torch.from_numpy(eps)[None]
    for i in range(cfg.den_stop):
        x = x + (s[i + 1] - s[i]) * v_den(x, s[i])
    for k in reversed(range(cfg.den_stop)):
        x = x + (s[k] - s[k + 1]) * v_inv(x, s[k])
    ours = hsp.bnoise(jflux, cfg, jnp.asarray(eps), jnp.asarray(c1), jnp.asarray(c2), b1, b2, jnp.asarray(y))
    assert cfg.den_stop == 3
    err = rel(ours, x[0].numpy())
    print(f"BNoise max rel err {err:.2e}")
    assert err <= 1e-4


@pytest.mark.parametrize("method", ["slerp", "lerp"])
def test_mdenoise_matches_reference(setup, method):
    flux, vae, jflux, jvae, c1, c2, y, eps, cfg = setup
    cfg = hsp.HSPConfig(num_steps=STEPS, size=SIZE, slerp_method=method)
    alpha = 0.43
    ctx = np.asarray(mixing.slerp(jnp.asarray(c1), jnp.asarray(c2), alpha, method=method))  # mixing has its own tests
    s = [float(v) for v in cfg.sigmas(len(eps))]
    v = _torch_velocity(flux, cfg, ctx, y, 4.0)
    x = torch.from_numpy(eps)[None]
    for i in range(STEPS):
        x = x + (s[i + 1] - s[i]) * v(x, s[i])
    with torch.no_grad():
        z = FluxPipeline._unpack_latents(x, SIZE, SIZE, 8)
        z = z / vae.config.scaling_factor + vae.config.shift_factor
        img = vae.decode(z, return_dict=False)[0]
    ref = ((img[0].permute(1, 2, 0) + 1) / 2).clamp(0, 1).numpy()
    ours = hsp.mdenoise(jflux, jvae, cfg, jnp.asarray(eps), jnp.asarray(c1), jnp.asarray(c2), alpha, jnp.asarray(y))
    err = rel(ours, ref)
    print(f"MDeNoise ({method}) + decode max abs err {err:.2e}")
    assert ours.shape == (SIZE, SIZE, 3) and err <= 1e-3
    two = lambda x: jnp.stack([jnp.asarray(x)] * 2)  # noqa: E731
    cs = two(jnp.stack([jnp.asarray(c1), jnp.asarray(c2)]))  # (2 candidates, 2 objects, L, D)
    batch = hsp.mdenoise_candidates(jflux, jvae, cfg, two(eps), cs, jnp.array([[0.8, 0.2], [1 - alpha, alpha]]), two(y))
    np.testing.assert_allclose(np.asarray(batch[1]), np.asarray(ours), atol=1e-5)

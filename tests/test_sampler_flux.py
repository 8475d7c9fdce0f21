"""Sampler parity: our `denoise` with our FLUX transformer vs a diffusers Euler loop
(FluxTransformer2DModel + FlowMatchEulerDiscreteScheduler.step, set up as FluxPipeline does),
tiny config, perturbed random weights saved with save_pretrained and read by `load_flux`."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
from diffusers.pipelines.flux.pipeline_flux import calculate_shift, retrieve_timesteps

from vmdiff_jax.method import sampling
from vmdiff_jax.checkpoints import load_flux

B, C, H, W, L = 2, 4, 8, 8, 5  # latent (B, H, W, C) -> packed (B, 16, 16); context (B, 5, 32)
N, IN_CH = (H // 2) * (W // 2), 4 * C
CTX_DIM, POOLED_DIM = 32, 16
REL_TOL = 1e-4


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    torch.manual_seed(0)
    ref = FluxTransformer2DModel(
        patch_size=1,
        in_channels=IN_CH,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=CTX_DIM,
        pooled_projection_dim=POOLED_DIM,
        guidance_embeds=True,
        axes_dims_rope=(4, 6, 6),
    )
    with torch.no_grad():
        for p in ref.parameters():  # no zero-init may hide a bug
            p.add_(0.05 * torch.randn_like(p))
    ref.eval()
    path = tmp_path_factory.mktemp("tiny_flux")
    ref.save_pretrained(path)
    ours = load_flux(str(path), dtype=jnp.float32)
    return ref, ours


def inputs(seed=0):
    rng = np.random.default_rng(seed)
    x_nhwc = rng.standard_normal((B, H, W, C)).astype(np.float32)
    txt = rng.standard_normal((B, L, CTX_DIM)).astype(np.float32)
    y = rng.standard_normal((B, POOLED_DIM)).astype(np.float32)
    return x_nhwc, txt, y


def diffusers_loop(ref, x_packed, txt, y, guidance, num_steps):
    """FluxPipeline.__call__'s denoising loop, without the text encoders and VAE."""
    scheduler = FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
        base_image_seq_len=256, max_image_seq_len=4096,
    )  # fmt: skip
    sigmas = np.linspace(1.0, 1 / num_steps, num_steps)
    mu = calculate_shift(N, 256, 4096, 0.5, 1.15)
    timesteps, _ = retrieve_timesteps(scheduler, num_steps, "cpu", sigmas=sigmas, mu=mu)
    scheduler.set_begin_index(0)
    latents = torch.from_numpy(x_packed)
    img_ids = torch.from_numpy(sampling.image_ids(H, W))
    txt_ids = torch.zeros((L, 3))
    g = torch.full([B], guidance, dtype=torch.float32)
    with torch.no_grad():
        for t in timesteps:
            v = ref(
                hidden_states=latents,
                timestep=t.expand(B).to(latents.dtype) / 1000,
                guidance=g,
                pooled_projections=torch.from_numpy(y),
                encoder_hidden_states=torch.from_numpy(txt),
                txt_ids=txt_ids,
                img_ids=img_ids,
                return_dict=False,
            )[0]
            latents = scheduler.step(v, t, latents, return_dict=False)[0]
    return latents.numpy()


def our_velocity(model, txt, y, guidance):
    img_ids, txt_ids = sampling.prepare_ids(B, H, W, L)
    return sampling.flux_velocity(model, jnp.asarray(txt), txt_ids, img_ids, jnp.asarray(y), guidance)


@pytest.mark.parametrize("num_steps,guidance", [(4, 4.0), (3, 0.0)])
def test_denoise_matches_diffusers_euler_loop(models, num_steps, guidance):
    ref, ours = models
    x_nhwc, txt, y = inputs()
    x_packed = np.asarray(sampling.pack(jnp.asarray(x_nhwc)))
    want = diffusers_loop(ref, x_packed, txt, y, guidance, num_steps)
    sigmas = sampling.flux_sigmas(num_steps, N)
    got = sampling.denoise(our_velocity(ours, txt, y, guidance), jnp.asarray(x_packed), sigmas, 0, num_steps)
    got = np.asarray(got)
    rel = np.max(np.abs(got - want)) / np.max(np.abs(want))
    print(f"\nsampler parity, {num_steps} steps, guidance {guidance}: max|diff|/max|ref| = {rel:.2e}")
    assert np.max(np.abs(want - x_packed)) > 1e-2  # the loop moved the latents
    assert rel < REL_TOL


def test_denoise_then_invert_reconstruction(models):
    """BNoise's shape of loop on the tiny model: denoise i = 0..10 of 20 steps, invert back."""
    _, ours = models
    x_nhwc, txt, y = inputs(1)
    eps = sampling.pack(jnp.asarray(x_nhwc))
    sigmas = sampling.flux_sigmas(20, N)

    @jax.jit
    def roundtrip(eps, g_den, g_inv):
        x = sampling.denoise(our_velocity(ours, txt, y, g_den), eps, sigmas, 0, 11)
        return x, sampling.invert(our_velocity(ours, txt, y, g_inv), x, sigmas, 0, 11)

    errs = {}
    for g_den, g_inv in [(4.0, 4.0), (5.0, 0.0)]:
        mid, back = roundtrip(eps, g_den, g_inv)
        assert np.isfinite(np.asarray(back)).all()
        errs[(g_den, g_inv)] = float(jnp.linalg.norm(back - eps) / jnp.linalg.norm(eps))
        moved = float(jnp.linalg.norm(mid - eps) / jnp.linalg.norm(eps))
        print(f"\ndenoise(0, 11) g={g_den} then invert g={g_inv}: |x - eps|/|eps| = {errs[(g_den, g_inv)]:.3e} "
              f"(after denoising it was {moved:.3e})")  # fmt: skip
    # Euler inversion is only first-order exact: the same field gives a small, not zero, error.
    assert errs[(4.0, 4.0)] < 0.2
    assert errs[(5.0, 0.0)] < 1.0

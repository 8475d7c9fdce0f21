"""Schedule, packing and Euler loops against diffusers' FluxPipeline / FlowMatchEulerDiscreteScheduler."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from diffusers.pipelines.flux.pipeline_flux import FluxPipeline, calculate_shift, retrieve_timesteps

from vmdiff_jax.method import sampling

# FLUX.1-dev's scheduler/scheduler_config.json
FLUX_SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000,
    shift=3.0,
    use_dynamic_shifting=True,
    base_shift=0.5,
    max_shift=1.15,
    base_image_seq_len=256,
    max_image_seq_len=4096,
)


def diffusers_schedule(num_steps, image_seq_len):
    """(sigmas, timesteps) exactly as FluxPipeline.__call__ sets them."""
    scheduler = FlowMatchEulerDiscreteScheduler(**FLUX_SCHEDULER_CONFIG)
    sigmas = np.linspace(1.0, 1 / num_steps, num_steps)
    mu = calculate_shift(image_seq_len, 256, 4096, 0.5, 1.15)
    timesteps, _ = retrieve_timesteps(scheduler, num_steps, "cpu", sigmas=sigmas, mu=mu)
    return scheduler.sigmas.numpy(), timesteps.numpy()


@pytest.mark.parametrize("num_steps", [1, 4, 20, 28, 50])
@pytest.mark.parametrize("seq_len", [256, 729, 1024, 2000, 4096])
def test_schedule_matches_diffusers(num_steps, seq_len):
    ref_sigmas, ref_timesteps = diffusers_schedule(num_steps, seq_len)
    sigmas = sampling.flux_sigmas(num_steps, seq_len)
    assert sigmas.dtype == np.float32 and sigmas.shape == (num_steps + 1,)
    np.testing.assert_allclose(sigmas, ref_sigmas, rtol=0, atol=1e-6)
    np.testing.assert_allclose(np.asarray(sigmas)[:-1], ref_timesteps / 1000, rtol=0, atol=1e-6)
    assert sigmas[0] == 1.0 and sigmas[-1] == 0.0


def test_shift_constants():
    assert sampling.calculate_shift(1024) == pytest.approx(0.63, abs=1e-12)
    assert sampling.calculate_shift(256) == pytest.approx(0.5) and sampling.calculate_shift(4096) == pytest.approx(1.15)
    assert (sampling.BASE_SEQ_LEN, sampling.MAX_SEQ_LEN, sampling.BASE_SHIFT, sampling.MAX_SHIFT) == (256, 4096, 0.5, 1.15)


def test_reference_table_20_steps_1024_tokens():
    table = [1000, 972.7, 944.1, 914.1, 882.5, 849.2, 814.2, 777.1, 738.0, 696.5,
             652.5, 605.7, 555.9, 502.7, 445.9, 384.9, 319.5, 248.9, 172.6, 89.9]  # fmt: skip
    t = 1000 * sampling.flux_sigmas(20, 1024)[:-1]
    np.testing.assert_allclose(t, table, rtol=0, atol=0.05)
    assert abs(sampling.flux_sigmas(20, 1024)[11] - 0.6057) < 5e-5  # where BNoise lands


@pytest.mark.parametrize("b,c,h,w", [(1, 16, 64, 64), (2, 4, 6, 10), (3, 2, 8, 4)])
def test_pack_unpack_ids_match_diffusers(b, c, h, w):
    rng = np.random.default_rng(0)
    x_nchw = rng.standard_normal((b, c, h, w)).astype(np.float32)
    ref = FluxPipeline._pack_latents(torch.from_numpy(x_nchw), b, c, h, w).numpy()
    packed = sampling.pack(jnp.asarray(x_nchw.transpose(0, 2, 3, 1)))
    assert packed.shape == (b, h * w // 4, 4 * c)
    np.testing.assert_array_equal(np.asarray(packed), ref)

    # _unpack_latents takes the image size: latent size * vae_scale_factor (8).
    ref_unpacked = FluxPipeline._unpack_latents(torch.from_numpy(ref), h * 8, w * 8, 8).numpy()
    unpacked = sampling.unpack(packed, h, w)
    np.testing.assert_array_equal(np.asarray(unpacked), ref_unpacked.transpose(0, 2, 3, 1))
    np.testing.assert_array_equal(np.asarray(unpacked), x_nchw.transpose(0, 2, 3, 1))

    ref_ids = FluxPipeline._prepare_latent_image_ids(b, h // 2, w // 2, "cpu", torch.float32).numpy()
    ids = sampling.image_ids(h, w)
    assert ids.dtype == np.float32
    np.testing.assert_array_equal(ids, ref_ids)
    img, txt = sampling.prepare_ids(b, h, w, 5)
    assert img.shape == (b, h * w // 4, 3) and txt.shape == (b, 5, 3) and txt.dtype == np.float32
    for i in range(b):
        np.testing.assert_array_equal(img[i], ref_ids)
    assert not txt.any()


def velocity(x, t):
    """An analytic velocity field, nonlinear in x and t (so the step order matters)."""
    return jnp.sin(3.0 * x) * t + 0.5 * x - t * t


def loop_denoise(x, s, start, stop):
    x = np.asarray(x, np.float64)
    for i in range(start, stop):
        x = x + (s[i + 1] - s[i]) * np.asarray(velocity(x, s[i]), np.float64)
    return x


def loop_invert(x, s, start, stop):
    x = np.asarray(x, np.float64)
    for k in range(stop - 1, start - 1, -1):
        x = x + (s[k] - s[k + 1]) * np.asarray(velocity(x, s[k]), np.float64)
    return x


@pytest.mark.parametrize("start,stop", [(0, 20), (0, 11), (3, 9), (5, 5)])
def test_denoise_invert_match_python_loop(start, stop):
    s = sampling.flux_sigmas(20, 1024)
    x0 = np.random.default_rng(1).standard_normal((2, 16, 8)).astype(np.float32)
    got = sampling.denoise(velocity, jnp.asarray(x0), s, start, stop)
    assert got.dtype == jnp.float32 and got.shape == x0.shape
    np.testing.assert_allclose(np.asarray(got), loop_denoise(x0, s.astype(np.float64), start, stop), atol=2e-5)
    got = sampling.invert(velocity, jnp.asarray(x0), s, start, stop)
    np.testing.assert_allclose(np.asarray(got), loop_invert(x0, s.astype(np.float64), start, stop), atol=2e-5)
    if start == stop:
        np.testing.assert_array_equal(np.asarray(got), x0)


def test_constant_field_inversion_roundtrip():
    """For v independent of x, invert(0, n) after denoise(0, n) returns the start (to float error)."""
    s = sampling.flux_sigmas(20, 1024)
    field = lambda x, t: jnp.cos(7.0 * t) + t * jnp.arange(x.shape[-1], dtype=jnp.float32)  # noqa: E731
    x0 = jnp.asarray(np.random.default_rng(2).standard_normal((3, 12)), jnp.float32)
    mid = sampling.denoise(field, x0, s, 0, 11)
    assert float(jnp.max(jnp.abs(mid - x0))) > 0.1
    back = sampling.invert(field, mid, s, 0, 11)
    np.testing.assert_allclose(np.asarray(back), np.asarray(x0), atol=1e-5)


def test_bf16_velocity_keeps_float32_state():
    s = sampling.flux_sigmas(4, 256)
    x0 = jnp.ones((2, 4), jnp.bfloat16)
    out = sampling.denoise(lambda x, t: (x * t).astype(jnp.bfloat16), x0, s)
    assert out.dtype == jnp.float32


def test_jit_vmap_and_kwargs():
    s = jnp.asarray(sampling.flux_sigmas(20, 1024))
    x0 = jnp.asarray(np.random.default_rng(3).standard_normal((4, 6, 8)), jnp.float32)

    @jax.jit
    def bnoise(x, sig):
        x = sampling.denoise(velocity, x, sig, 0, 11)
        return sampling.invert(velocity, x, sig, 0, 11)

    want = loop_invert(loop_denoise(np.asarray(x0), np.asarray(s, np.float64), 0, 11), np.asarray(s, np.float64), 0, 11)
    np.testing.assert_allclose(np.asarray(bnoise(x0, s)), want, atol=5e-5)
    vm = jax.vmap(bnoise, in_axes=(0, None))(x0, s)
    np.testing.assert_allclose(np.asarray(vm), want, atol=5e-5)

    # keywords reach velocity_fn; vmapped over a per-example scale
    field = lambda x, t, scale: scale * x * t  # noqa: E731
    scales = jnp.asarray([0.5, 1.0, 2.0, -1.0])
    f = jax.jit(jax.vmap(lambda x, c: sampling.denoise(field, x, s, 2, 7, scale=c)))
    looped = [sampling.denoise(field, x0[i], s, 2, 7, scale=scales[i]) for i in range(4)]
    np.testing.assert_allclose(np.asarray(f(x0, scales)), np.stack(looped), atol=1e-6)


def test_bad_range_raises():
    s = sampling.flux_sigmas(4, 256)
    with pytest.raises(ValueError):
        sampling.denoise(velocity, jnp.zeros(2), s, 3, 2)
    with pytest.raises(ValueError):
        sampling.invert(velocity, jnp.zeros(2), s, 0, 5)


def test_flux_velocity_passes_model_inputs():
    calls = {}

    def model(img, img_ids, txt, txt_ids, timesteps, y, guidance):
        calls.update(img=img, timesteps=timesteps, guidance=guidance, txt=txt, y=y)
        return img * timesteps[:, None, None] + guidance[:, None, None]

    b, n, c = 2, 4, 8
    img_ids, txt_ids = sampling.prepare_ids(b, 4, 4, 3)
    txt, y = jnp.ones((b, 3, 5)), jnp.ones((b, 6))
    v = sampling.flux_velocity(model, txt, txt_ids, img_ids, y, guidance=5.0)
    out = v(jnp.ones((b, n, c)), jnp.float32(0.25))
    assert calls["timesteps"].shape == (b,) and calls["guidance"].shape == (b,)
    np.testing.assert_allclose(np.asarray(out), 0.25 + 5.0)
    assert calls["txt"] is txt and calls["y"] is y

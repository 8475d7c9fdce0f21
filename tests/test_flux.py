"""FLUX transformer parity against diffusers' FluxTransformer2DModel (float32, CPU, tiny configs).

The same random (perturbed) weights reach our model twice: through a diffusers
`save_pretrained` folder and through a BFL-layout single file written here with an
independent diffusers -> BFL mapping. Both must match diffusers' forward.
"""

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import FluxTransformer2DModel
from flax import nnx
from diffusers.models.embeddings import apply_rotary_emb, get_timestep_embedding
from diffusers.models.transformers.transformer_flux import FluxPosEmbed
from safetensors.torch import save_file as torch_save_file

from helpers import flux_forward, grid_ids, to_bfl
from vmdiff_jax.nn.flux import Flux, FluxConfig
from vmdiff_jax.checkpoints import load_flux
from vmdiff_jax.checkpoints.flux import infer_config
from vmdiff_jax.nn.layers import embed_nd
from vmdiff_jax.nn.math import apply_rope, timestep_embedding
from vmdiff_jax.checkpoints.files import open_checkpoint

RTOL = 1e-4  # max|ours - diffusers| <= RTOL * max(1, max|diffusers|)


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    heads: int
    head_dim: int
    axes: tuple
    depth: int
    single: int
    in_ch: int
    out_ch: int
    ctx: int
    vec: int
    guidance: bool
    grid: tuple  # latent grid (h, w) of packed tokens
    batch: int
    txt_len: int
    txt_ids_nonzero: bool
    shard: bool  # save_pretrained into several shards + index


CASES = [
    Case("guided_6x4", 2, 16, (4, 6, 6), 1, 1, 16, 16, 32, 16, True, (6, 4), 2, 5, False, False),
    Case("unguided_3x5_txtids", 2, 16, (4, 6, 6), 2, 1, 8, 8, 24, 12, False, (3, 5), 3, 7, True, True),
    Case("head32_4x6_outch", 2, 32, (8, 12, 12), 1, 2, 16, 12, 32, 16, True, (4, 6), 2, 4, True, False),
]




@pytest.fixture(scope="module", params=CASES, ids=lambda c: c.name)
def case(request, tmp_path_factory):
    """(case, diffusers folder, BFL file, inputs, diffusers output)."""
    c = request.param
    torch.manual_seed(0)
    ref = FluxTransformer2DModel(
        patch_size=1,
        in_channels=c.in_ch,
        out_channels=c.out_ch,
        num_layers=c.depth,
        num_single_layers=c.single,
        attention_head_dim=c.head_dim,
        num_attention_heads=c.heads,
        joint_attention_dim=c.ctx,
        pooled_projection_dim=c.vec,
        guidance_embeds=c.guidance,
        axes_dims_rope=c.axes,
    ).eval()
    with torch.no_grad():
        for p in ref.parameters():  # no zero/one init may hide a bug
            p.add_(0.1 * torch.randn_like(p))
    tmp = tmp_path_factory.mktemp(c.name)
    ref.save_pretrained(tmp / "transformer", safe_serialization=True, max_shard_size="40KB" if c.shard else "10GB")
    sd = {k: v.detach().clone() for k, v in ref.state_dict().items()}
    meta = {"axes_dim": str(list(c.axes))} if c.axes != (4, 6, 6) else None
    torch_save_file(to_bfl(sd, c.depth, c.single), tmp / "flux-bfl.safetensors", metadata=meta)

    rng = np.random.default_rng(1)
    h, w = c.grid
    n, b = h * w, c.batch
    img = rng.standard_normal((b, n, c.in_ch)).astype(np.float32)
    txt = rng.standard_normal((b, c.txt_len, c.ctx)).astype(np.float32)
    y = rng.standard_normal((b, c.vec)).astype(np.float32)
    t = rng.uniform(0.05, 1.0, b).astype(np.float32)
    g = rng.uniform(1.0, 6.0, b).astype(np.float32)
    img_ids = grid_ids(h, w)
    txt_ids = np.zeros((c.txt_len, 3), np.float32)
    if c.txt_ids_nonzero:
        txt_ids = rng.integers(0, 9, (c.txt_len, 3)).astype(np.float32)
    with torch.no_grad():
        out = ref(
            hidden_states=torch.from_numpy(img),
            encoder_hidden_states=torch.from_numpy(txt),
            pooled_projections=torch.from_numpy(y),
            timestep=torch.from_numpy(t),  # diffusers multiplies by 1000 inside, like BFL
            img_ids=torch.from_numpy(img_ids),
            txt_ids=torch.from_numpy(txt_ids),
            guidance=torch.from_numpy(g) if c.guidance else None,
            return_dict=False,
        )[0].numpy()
    inputs = dict(
        img=jnp.asarray(img),
        img_ids=jnp.asarray(np.broadcast_to(img_ids, (b, n, 3))),
        txt=jnp.asarray(txt),
        txt_ids=jnp.asarray(np.broadcast_to(txt_ids, (b, c.txt_len, 3))),
        timesteps=jnp.asarray(t),
        y=jnp.asarray(y),
        guidance=jnp.asarray(g) if c.guidance else None,
    )
    return c, tmp / "transformer", tmp / "flux-bfl.safetensors", inputs, out


def _max_err(model, inputs, ref):
    ours = flux_forward(model, inputs)
    assert ours.shape == ref.shape
    return float(np.abs(ours - ref).max()), RTOL * max(1.0, float(np.abs(ref).max()))


def _expected_config(c):
    return FluxConfig(
        in_channels=c.in_ch,
        out_channels=c.out_ch,
        vec_in_dim=c.vec,
        context_in_dim=c.ctx,
        hidden_size=c.heads * c.head_dim,
        num_heads=c.heads,
        depth=c.depth,
        depth_single_blocks=c.single,
        axes_dim=c.axes,
        guidance_embed=c.guidance,
    )


def test_diffusers_folder_matches_diffusers(case):
    c, folder, _, inputs, ref = case
    if c.shard:
        assert len(list(folder.glob("*.safetensors"))) > 1 and list(folder.glob("*.index.json"))
    assert infer_config(open_checkpoint(folder)) == _expected_config(c)
    model = load_flux(folder, dtype=jnp.float32)
    err, tol = _max_err(model, inputs, ref)
    print(f"{c.name} diffusers layout: max|diff| {err:.2e} (tol {tol:.2e})")
    assert err <= tol


def test_bfl_file_matches_diffusers(case):
    c, _, bfl_file, inputs, ref = case
    assert infer_config(open_checkpoint(bfl_file)) == _expected_config(c)
    model = load_flux(bfl_file, dtype=jnp.float32)
    err, tol = _max_err(model, inputs, ref)
    print(f"{c.name} BFL layout: max|diff| {err:.2e} (tol {tol:.2e})")
    assert err <= tol


def test_bf16_load_runs_close_to_float32(case):
    c, folder, _, inputs, ref = case
    if c.name != CASES[0].name:
        pytest.skip("one case is enough")
    model = load_flux(folder, dtype=jnp.bfloat16)
    out = flux_forward(model, inputs)
    assert out.dtype == jnp.bfloat16
    err = float(np.abs(np.asarray(out, np.float32) - ref).max())
    assert err <= 0.1 * max(1.0, float(np.abs(ref).max())), err


def test_rope_matches_diffusers_pos_embed():
    rng = np.random.default_rng(0)
    ids = np.concatenate([rng.integers(0, 4, (7, 3)), grid_ids(64, 48)[::37]], 0).astype(np.float32)
    axes = (16, 56, 56)
    cos, sin = FluxPosEmbed(theta=10_000, axes_dim=list(axes))(torch.from_numpy(ids))
    x = rng.standard_normal((2, len(ids), 3, sum(axes))).astype(np.float32)
    want = apply_rotary_emb(torch.from_numpy(x), (cos, sin), sequence_dim=1).numpy()
    got = np.asarray(apply_rope(jnp.asarray(x), embed_nd(jnp.asarray(ids)[None], axes, 10_000)))
    np.testing.assert_allclose(got, want, atol=5e-5, rtol=0)


def test_timestep_embedding_matches_diffusers():
    t = np.array([0.0, 0.05, 0.3127, 0.6525, 1.0], np.float32)
    want = get_timestep_embedding(torch.from_numpy(t) * 1000, 256, flip_sin_to_cos=True, downscale_freq_shift=0)
    got = np.asarray(timestep_embedding(jnp.asarray(t), 256))
    assert got.dtype == np.float32 and got.shape == (5, 256)
    # arguments reach 1000 rad: 1 ulp of a float32 frequency moves them by ~6e-5
    np.testing.assert_allclose(got, want.numpy(), atol=1e-4, rtol=0)


def test_guidance_required_and_config_checks():
    m = Flux(FluxConfig.tiny(), rngs=nnx.Rngs(0))
    b, n, l = 1, 4, 2
    z = jnp.zeros
    args = (z((b, n, 16)), z((b, n, 3)), z((b, l, 32)), z((b, l, 3)), jnp.ones((b,)), z((b, 16)))
    with pytest.raises(ValueError, match="guidance"):
        m(*args)
    with pytest.raises(ValueError, match="axes_dim"):
        Flux(FluxConfig.tiny(axes_dim=(4, 6, 4)), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="multiple"):
        Flux(FluxConfig.tiny(num_heads=3), rngs=nnx.Rngs(0))

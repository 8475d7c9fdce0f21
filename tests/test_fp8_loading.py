"""fp8 FLUX checkpoints against diffusers (float32, CPU, head dim 128 like FLUX.1).

A random diffusers FLUX is converted to BFL names, then written by torch as a plain fp8 file
(every tensor cast to float8_e4m3fn) and as a scaled fp8 file (block Linear weights float8 with
a float32 per-tensor scale, both key spellings, ComfyUI's marker and an input scale). diffusers
runs the same dequantized weights (put back into its own layout by inverting the BFL
conversion element by element); our fp8-loaded model computes in float32.
"""

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import FluxTransformer2DModel
from flax import nnx
from safetensors.torch import save_file as torch_save_file

from helpers import flux_forward, rel, to_bfl
from vmdiff_jax.checkpoints import CheckpointError, load, load_flux, open_checkpoint
from vmdiff_jax.checkpoints.registry import FLUX
from vmdiff_jax.checkpoints.rules import param_paths
from vmdiff_jax.app.cli import main
from vmdiff_jax.nn.quant import FP8, to_fp8

HEADS, HEAD_DIM, DEPTH, SINGLE = 2, 128, 1, 2
F8 = torch.float8_e4m3fn


def _blocks_linear(key, t):
    return key.startswith(("double_blocks.", "single_blocks.")) and key.endswith(".weight") and t.ndim == 2


def _diffusers_from_bfl(bfl_values, ids_bfl, template):
    """The diffusers state dict whose element i is the BFL element that came from it (`ids_bfl`)."""
    offsets, o = {}, 0
    for k, v in template.items():
        offsets[k] = (o, o + v.numel())
        o += v.numel()
    allflat = torch.empty(o, dtype=torch.float32)
    for k, ids in ids_bfl.items():
        allflat[ids.reshape(-1)] = bfl_values[k].reshape(-1).float()
    return {k: allflat[a:b].reshape(template[k].shape).clone() for k, (a, b) in offsets.items()}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    torch.manual_seed(0)
    ref = FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=DEPTH, num_single_layers=SINGLE,
                                 attention_head_dim=HEAD_DIM, num_attention_heads=HEADS, joint_attention_dim=32,
                                 pooled_projection_dim=16, guidance_embeds=True, axes_dims_rope=(16, 56, 56)).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(0.05 * torch.randn_like(p))
    sd = {k: v.detach().clone() for k, v in ref.state_dict().items()}
    bfl = to_bfl(sd, DEPTH, SINGLE)
    start, ids = 0, {}
    for k, v in sd.items():  # the index of every diffusers element, through the same conversion
        ids[k] = torch.arange(start, start + v.numel(), dtype=torch.int64).reshape(v.shape)
        start += v.numel()
    ids_bfl = to_bfl(ids, DEPTH, SINGLE)
    tmp = tmp_path_factory.mktemp("fp8")
    meta = {"axes_dim": "[16, 56, 56]"}
    torch_save_file(bfl, tmp / "flux-f32.safetensors", metadata=meta)

    plain = {k: v.to(F8) for k, v in bfl.items()}
    torch_save_file(plain, tmp / "flux-fp8.safetensors", metadata=meta)

    scaled, deq_scaled = {"scaled_fp8": torch.empty(0, dtype=F8)}, {}
    n_linear = 0
    for k, v in sorted(bfl.items()):
        if _blocks_linear(k, v):
            n_linear += 1
            s = v.abs().max() / 448
            q = (v / s).clamp(-448, 448).to(F8)
            layer = k[: -len(".weight")]
            scaled[k] = q
            scaled[f"{layer}.{'scale_weight' if n_linear % 2 else 'weight_scale'}"] = s.reshape(())
            deq_scaled[k] = q.float() * s
        else:
            scaled[k] = v.to(torch.bfloat16)
            deq_scaled[k] = scaled[k].float()
    scaled["double_blocks.0.img_attn.qkv.scale_input"] = torch.tensor(1.0)  # an activation scale: not needed
    torch_save_file(scaled, tmp / "flux-fp8-scaled.safetensors", metadata=meta)
    assert {"weight_scale", "scale_weight"} <= {k.rsplit(".", 1)[-1] for k in scaled}

    def reference(bfl_values):
        m = FluxTransformer2DModel(**ref.config).eval()
        m.load_state_dict(_diffusers_from_bfl(bfl_values, ids_bfl, sd), strict=True)
        return m

    refs = {"plain": reference({k: v.float() for k, v in plain.items()}), "scaled": reference(deq_scaled),
            "float32": ref}
    rng = np.random.default_rng(1)
    b, n, l = 2, 24, 5
    img, txt = rng.standard_normal((b, n, 16)).astype(np.float32), rng.standard_normal((b, l, 32)).astype(np.float32)
    y, t, g = rng.standard_normal((b, 16)).astype(np.float32), np.float32([0.3, 0.9]), np.float32([3.5, 4.0])
    img_ids = np.zeros((4, 6, 3), np.float32)
    img_ids[..., 1], img_ids[..., 2] = np.arange(4)[:, None], np.arange(6)[None, :]
    img_ids = img_ids.reshape(n, 3)
    txt_ids = np.zeros((l, 3), np.float32)
    outs = {}
    with torch.no_grad():
        for name, m in refs.items():
            outs[name] = m(hidden_states=torch.from_numpy(img), encoder_hidden_states=torch.from_numpy(txt),
                           pooled_projections=torch.from_numpy(y), timestep=torch.from_numpy(t),
                           img_ids=torch.from_numpy(img_ids), txt_ids=torch.from_numpy(txt_ids),
                           guidance=torch.from_numpy(g), return_dict=False)[0].numpy()
    inputs = dict(img=jnp.asarray(img), img_ids=jnp.asarray(img_ids[None]), txt=jnp.asarray(txt),
                  txt_ids=jnp.asarray(txt_ids[None]), timesteps=jnp.asarray(t), y=jnp.asarray(y), guidance=jnp.asarray(g))
    return tmp, inputs, outs


def _fp8_kernels(model):
    return {p for p, s in param_paths(model).items() if s.dtype == FP8}


def _fp8_layers(model):
    """Number of float8 kernels counted per layer (a stacked kernel (depth, in, out) is depth of them)."""
    return sum(s.shape[0] if s.ndim == 3 else 1 for s in param_paths(model).values() if s.dtype == FP8)


@pytest.mark.parametrize("name", ["plain", "scaled"])
def test_fp8_file_float32_matches_diffusers_dequantized(files, name):
    tmp, inputs, outs = files
    path = tmp / ("flux-fp8.safetensors" if name == "plain" else "flux-fp8-scaled.safetensors")
    model = load(path, FLUX, dtype=jnp.float32, fp8=True)
    assert model.cfg.head_dim == HEAD_DIM and _fp8_layers(model) == 10 * DEPTH + 3 * SINGLE
    err = rel(flux_forward(model, inputs), outs[name])
    print(f"{name} fp8 file, our float32 compute vs diffusers on the dequantized weights: rel {err:.1e}")
    assert err <= 1e-4
    # the same file into a bf16/f32 model (no fp8 storage) dequantizes the weights at load
    err = rel(flux_forward(load(path, FLUX, dtype=jnp.float32), inputs), outs[name])
    assert err <= 1e-4


def test_fp8_bf16_activations_error_next_to_bf16(files):
    tmp, inputs, outs = files
    ref = outs["float32"]
    e = {}
    for label, path, dtype in [("bf16", "flux-f32.safetensors", jnp.bfloat16), ("fp8 (quantized at load)", "flux-f32.safetensors", "fp8"),
                               ("fp8 scaled file", "flux-fp8-scaled.safetensors", "fp8")]:
        m = load_flux(tmp / path, dtype=dtype)
        assert (len(_fp8_kernels(m)) > 0) == (dtype == "fp8")
        e[label] = rel(flux_forward(m, inputs), ref)
    print("against the float32 model (bf16 activations): " + ", ".join(f"{k} rel {v:.2e}" for k, v in e.items()))
    assert e["bf16"] < 0.02 and e["fp8 (quantized at load)"] < 0.1 and e["fp8 scaled file"] < 0.1


def test_quantize_at_load_equals_quantizing_the_loaded_model(files):
    tmp, _, _ = files
    f32 = load(tmp / "flux-f32.safetensors", FLUX, dtype=jnp.float32)
    to_fp8(f32.double_blocks)
    to_fp8(f32.single_blocks)
    q = load(tmp / "flux-f32.safetensors", FLUX, dtype=jnp.float32, fp8=True)
    a, b = dict(nnx.to_flat_state(nnx.state(f32, nnx.Param))), dict(nnx.to_flat_state(nnx.state(q, nnx.Param)))
    assert a.keys() == b.keys()
    for k in a:
        assert a[k][...].dtype == b[k][...].dtype
        np.testing.assert_array_equal(np.asarray(a[k][...]).view(np.uint8), np.asarray(b[k][...]).view(np.uint8))


def test_plain_fp8_kernels_taken_as_they_are(files):
    tmp, _, _ = files
    m = load(tmp / "flux-fp8.safetensors", FLUX, dtype=jnp.float32, fp8=True)
    ck = open_checkpoint(tmp / "flux-fp8.safetensors")
    w = ck.read("single_blocks.1.linear1.weight")
    np.testing.assert_array_equal(np.asarray(m.single_blocks.linear1.kernel[1]).view(np.uint8), w.T.view(np.uint8))
    np.testing.assert_array_equal(m.single_blocks.linear1.scale[1], 1.0)


def test_check_accepts_fp8_files_and_names_what_is_wrong(files, tmp_path, capsys):
    tmp, _, _ = files
    for f in ("flux-fp8.safetensors", "flux-fp8-scaled.safetensors"):
        assert main(["convert", "--check", str(tmp / f)]) == 0, capsys.readouterr().err
    from safetensors.torch import load_file

    sd = load_file(tmp / "flux-fp8-scaled.safetensors")
    bad = dict(sd, **{"double_blocks.0.img_attn.qkv.mystery": torch.ones(2)})
    torch_save_file(bad, tmp_path / "extra.safetensors")
    with pytest.raises(CheckpointError, match="unexpected key double_blocks.0.img_attn.qkv.mystery"):
        load_flux(tmp_path / "extra.safetensors", dtype="fp8")
    key = next(k for k in sd if k.endswith(".scale_weight"))
    torch_save_file(dict(sd, **{key: torch.ones(3)}), tmp_path / "badscale.safetensors")
    with pytest.raises(CheckpointError, match="wrong shape"):
        load_flux(tmp_path / "badscale.safetensors", dtype="fp8")
    layer = key[: -len(".scale_weight")]
    torch_save_file(dict(sd, **{f"{layer}.weight_scale": sd[key].clone()}), tmp_path / "both.safetensors")
    with pytest.raises(CheckpointError, match="one scale per weight"):
        load_flux(tmp_path / "both.safetensors", dtype="fp8")
    capsys.readouterr()
    assert main(["convert", "--check", str(tmp_path / "extra.safetensors")]) == 2
    assert "unexpected key double_blocks.0.img_attn.qkv.mystery" in capsys.readouterr().out


def test_auto_fsdp_counts_the_bytes_loaded(files):
    """fp8 FLUX fits where bf16 needs two shards: a '24 GB device' scaled to this model."""
    from vmdiff_jax.checkpoints import flux
    from vmdiff_jax.engine.fsdp_auto import auto_fsdp

    tmp, _, _ = files
    path = tmp / "flux-fp8-scaled.safetensors"
    nbytes = {d: sum(np.prod(s.shape) * np.dtype(s.dtype).itemsize
                     for s in param_paths(flux.build(open_checkpoint(path), dtype=d).model).values())
              for d in ("fp8", jnp.bfloat16, jnp.float32)}
    assert nbytes["fp8"] < 0.6 * nbytes[jnp.bfloat16] and nbytes[jnp.float32] == 2 * nbytes[jnp.bfloat16]
    mem = int(nbytes["fp8"] / 0.6 * 1.05)  # fp8 fits under 60%, bf16 does not
    assert auto_fsdp(path, "fp8", 4, device_memory=mem) == 1
    assert auto_fsdp(path, jnp.bfloat16, 4, device_memory=mem) == 2
    assert auto_fsdp(path, jnp.float32, 4, device_memory=mem) == 4
    assert auto_fsdp(path, jnp.float32, 1, device_memory=mem) == 1  # one device: nothing to shard over


def test_demo_models_run_in_fp8():
    """The demo's tiny random models with an fp8 FLUX (bf16 activations) fuse end to end on CPU."""
    from vmdiff_jax.method import search
    from vmdiff_jax.engine.demo import demo_models, example_images
    from vmdiff_jax.app.inputs import load_image
    from vmdiff_jax.engine.pipeline import VMDiff
    from vmdiff_jax.method.hsp import HSPConfig

    models = demo_models(0, dtype=jnp.bfloat16)
    to_fp8(models.flux.double_blocks)
    to_fp8(models.flux.single_blocks)
    assert _fp8_kernels(models.flux)
    pipe = VMDiff(models, HSPConfig(num_steps=2, size=32), search.EAAConfig.tiny(), locator="whole")
    (p1, l1), (p2, l2) = example_images(random=True)[:2]
    r = pipe.fuse(load_image(p1, 32), load_image(p2, 32), l1, l2, key=0)
    assert r.image.shape == (32, 32, 3) and r.image.std() > 0 and np.isfinite(r.score)


def test_fuse_from_pretrained_in_fp8(weights, photos, tmp_path):
    """`vmdiff fuse --dtype fp8` on the tiny checkpoints of every model (FLUX from a diffusers
    folder, quantized while loading: block kernels float8, the rest bf16), end to end."""
    import json

    from PIL import Image

    from vmdiff_jax.checkpoints.weights import find_weights

    flux = load_flux(find_weights(weights)["flux"], dtype="fp8")
    assert {s.dtype for s in param_paths(flux).values()} == {np.dtype(FP8), np.dtype(jnp.bfloat16), np.dtype(np.float32)}
    out = tmp_path / "fp8"
    assert main(["fuse", str(photos[0]), str(photos[1]), "--weights", str(weights), "--out", str(out), "--steps", "2",
                 "--size", "32", "--no-progress", "--locator", "whole", "--dtype", "fp8"]) == 0
    r = json.loads((out / "report.json").read_text())
    assert np.isfinite(r["score"]) and all(np.isfinite(t["S"]) for t in r["trajectory"])
    assert r["settings"]["flux_weights"] == "float8_e4m3fn" and r["settings"]["dtype"] == "bfloat16"
    img = np.asarray(Image.open(out / "fused.png"))
    assert img.shape == (32, 32, 3) and img.std() > 0

"""The stages compiled by the real TPU compiler (libtpu) for a v5e 2x2 slice on this CPU machine:
FSDP over 'fsdp', candidates over 'data', splash attention through Mosaic, fp8 FLUX; each must
compile and its memory analysis agree with the parameter bytes it was given."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vmdiff_jax.engine import sharding, stages, targets
from vmdiff_jax.engine.demo import demo_models
from vmdiff_jax.method.hsp import HSPConfig
from vmdiff_jax.nn.flux import Flux, FluxConfig
from vmdiff_jax.nn.math import compiling_for, resolve_attention_impl

pytestmark = pytest.mark.skipif(not targets.libtpu_available(), reason="libtpu not installed")


@pytest.fixture(scope="module")
def mesh():
    devs = targets.devices(targets.TARGETS["v5e-4"])
    return sharding.make_mesh(data=2, fsdp=2, devices=devs)


@pytest.fixture(scope="module")
def models():
    return demo_models(0, dtype=jnp.bfloat16)


def _state(model, mesh, min_size=0):
    return targets.abstract_state(model, mesh, min_size=min_size)


def _bytes_per_chip(state) -> int:
    return sum(math.prod(x.sharding.shard_shape(x.shape)) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(state))


@pytest.mark.parametrize("name", sorted(targets.TARGETS))
def test_every_target_gives_one_device_a_chip(name):
    """v4's topology gives a device per TensorCore unless asked for megacore (as a v4 VM shows)."""
    target = targets.TARGETS[name]
    assert len(targets.devices(target)) == target.chips


def test_auto_attention_resolves_for_the_target():
    assert resolve_attention_impl("auto", jnp.bfloat16, 4096, 128) == "chunked"  # this CPU host
    with compiling_for("tpu"):
        assert resolve_attention_impl("auto", jnp.bfloat16, 4096, 128) == "splash"
        assert resolve_attention_impl("auto", jnp.bfloat16, 4096, 64) == "xla"


def _flux_stage(name, mesh, models, min_size=0):
    cfg = HSPConfig(num_steps=2, size=32)
    fd, fs = _state(models.flux, mesh, min_size)
    n, seq, ch = 4, 4, models.flux.cfg.in_channels
    ctx, dy = models.flux.cfg.context_in_dim, models.flux.cfg.vec_in_dim
    r = lambda shape, dt=jnp.float32: targets.rows(mesh, shape, dt)  # noqa: E731
    cs = r((n, 2, 729, ctx), jnp.bfloat16)
    if name == "bnoise":
        args, parts = (fd, fs, r((n, seq, ch)), cs, r((n, 2)), r((n, dy), jnp.bfloat16)), 2
    else:
        vd, vs = _state(models.vae, mesh, min_size)
        args, parts = (fd, fs, vd, vs, r((n, seq, ch)), cs, r((n, 2)), r((n, dy), jnp.bfloat16)), 4
    out = targets.compile_stage(getattr(stages, name), args, {"cfg": cfg}, platform="tpu", param_arg_count=parts)
    return out, sum(_bytes_per_chip(a) for a in args[1:parts:2])


@pytest.mark.parametrize("name", ["bnoise", "mdenoise"])
def test_flux_stages_compile_with_fsdp_and_data(mesh, models, name):
    fsdp, want = _flux_stage(name, mesh, models)
    replicated, want_rep = _flux_stage(name, mesh, models, min_size=2**62)  # nothing sharded
    assert fsdp.error is None and replicated.error is None, (fsdp.error, replicated.error)
    # the program holds at least what it was given (TPU tiles pad small arrays); FSDP holds less per chip
    assert replicated.parameters_bytes >= want_rep and fsdp.parameters_bytes >= want
    assert want < want_rep and fsdp.parameters_bytes < replicated.parameters_bytes
    assert fsdp.flops > 0 and fsdp.collectives.get("all-gather", 0) > 0  # the FSDP gathers
    assert replicated.collectives.get("all-gather", 0) < fsdp.collectives["all-gather"]


def test_scorer_stages_compile(mesh, models):
    n = 4
    dd, ds = _state(models.dinov2, mesh)
    bd, bs = _state(models.clip_bigg, mesh)
    img = targets.rows(mesh, (n, 32, 32, 3), jnp.uint8)
    w = targets.rows(mesh, (n, 224, 32), jnp.int32)
    out = targets.compile_stage(stages.features, (dd, ds, bd, bs, img, w, w), platform="tpu", param_arg_count=4)
    assert out.error is None and out.output_bytes >= n * 2 * 24 * 2 and out.flops > 0  # (n, Dd) + (n, E) features
    assert out.parameters_bytes > 0 and out.peak_bytes >= out.parameters_bytes


def _flux_forward_compile(mesh, flux, n=2, seq=256, ctx=256):
    fd, fs = _state(flux, mesh)
    r = lambda shape, dt=jnp.bfloat16: targets.rows(mesh, shape, dt)  # noqa: E731
    cfg = flux.cfg

    @jax.jit
    def fwd(fd, fs, x, img_ids, txt, txt_ids, t, y):
        return nnx.merge(fd, fs)(x, img_ids, txt, txt_ids, t, y, t)

    args = (fd, fs, r((n, seq, cfg.in_channels)), r((n, seq, 3), jnp.float32), r((n, ctx, cfg.context_in_dim)),
            r((n, ctx, 3), jnp.float32), r((n,), jnp.float32), r((n, cfg.vec_in_dim)))
    with compiling_for("tpu"), targets.mesh_context(mesh):
        text = fwd.trace(*args).lower().as_text()
    return targets.compile_stage(fwd, args, platform="tpu", param_arg_count=2), text


def _head128() -> FluxConfig:
    return dataclasses.replace(FluxConfig.tiny(), hidden_size=256, num_heads=2, axes_dim=(16, 56, 56))


def test_splash_attention_lowers_through_mosaic(mesh):
    flux = nnx.eval_shape(lambda: Flux(_head128(), dtype=jnp.bfloat16, param_dtype=jnp.bfloat16, rngs=nnx.Rngs(0),
                                       attention_impl="splash"))
    out, text = _flux_forward_compile(mesh, flux)
    assert out.error is None, out.error
    assert "tpu_custom_call" in text  # the Pallas kernel, not an interpreted emulation


def test_fp8_flux_compiles_with_fewer_parameter_bytes(mesh):
    make = lambda fp8: nnx.eval_shape(lambda: Flux(_head128(), dtype=jnp.bfloat16, param_dtype=jnp.bfloat16,  # noqa: E731
                                                   rngs=nnx.Rngs(0), fp8=fp8))
    bf16, _ = _flux_forward_compile(mesh, make(False))
    fp8, _ = _flux_forward_compile(mesh, make(True))
    assert bf16.error is None and fp8.error is None, (bf16.error, fp8.error)
    assert fp8.parameters_bytes < 0.75 * bf16.parameters_bytes


def test_installed_libtpu_changes_nothing_for_other_commands(tmp_path):
    """With libtpu installed and no TPU here, a command prints what it prints without it (no
    libtpu start-up errors) and does not try the TPU backend (_platform.py)."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
    p = subprocess.run([sys.executable, "-c", "import vmdiff_jax.nn.flux, jax; print(jax.default_backend())"],
                       env=env, capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert p.returncode == 0 and p.stdout.strip() == "cpu" and p.stderr == "", p.stderr


def test_plan_without_libtpu_is_one_line(monkeypatch, capsys):
    import importlib.util

    from vmdiff_jax.app.cli import main

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "libtpu" else real(name, *a))
    assert main(["plan", "--topology", "v5e-8"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and 'pip install -e ".[tpu]"' in err[0], err


def test_plan_of_a_small_stage_for_v5e_8(capsys):
    from vmdiff_jax.app.cli import main

    assert main(["plan", "--topology", "v5e-8", "--stages", "pooled_text", "--json"]) == 0
    import json

    out = json.loads(capsys.readouterr().out)
    assert out["topology"] == "v5e-8" and out["mesh"] == {"data": 2, "fsdp": 4} and out["fits"] is True
    (st,) = out["stages"]
    for k in ("name", "parameters_bytes", "temp_bytes", "output_bytes", "peak_bytes", "flops", "collective_bytes",
              "compile_s", "estimated_s"):
        assert k in st
    # CLIP-L text, 123M parameters in bf16, FSDP over 4 chips: about a quarter a chip (small ones replicated)
    assert 0.2 * 246e6 / 4 < st["parameters_bytes"] < 2 * 246e6 / 4
    assert out["hbm_bytes"] == int(15.75 * 2**30) and "pairs_per_call" in out and "pairs_per_hour" in out
    # no FLUX stage planned: --fsdp auto's estimate (nothing else compiled); every network counted as
    # resident (30.45 GB in bf16, FSDP over 4 chips, small ones replicated), and the stage's need with them
    assert out["fsdp_from"] == "estimate" and out["fsdp_tried"] == {}
    assert 30.45e9 / 4 < out["resident_bytes"] < 1.1 * 30.45e9 / 4
    assert st["required_bytes"] == st["peak_bytes"] - st["parameters_bytes"] + out["resident_bytes"]
    assert out["compilations"] == 3 * len(out["call_sizes"]) + 4 and out["compile_total_stages"] == ["pooled_text"]


def test_pairs_per_call_auto_reads_the_compiled_temporaries(monkeypatch):
    """--pairs-per-call auto on a device with a memory figure uses the compiler's temporaries of
    the actual calls (here the CPU's compiler; on an accelerator its own)."""
    from vmdiff_jax.app import capacity
    from vmdiff_jax.engine import sharding as sh
    from vmdiff_jax.engine.pipeline import VMDiff

    pipe = VMDiff.demo(random=True, num_steps=2, size=32, locator="whole")
    per = capacity.compiled_candidate_bytes(pipe)
    assert per is not None and per > 0
    params = sum(x.size * x.dtype.itemsize for part in pipe.split.parts().values() for x in jax.tree.leaves(part.state))
    monkeypatch.setattr(sh, "device_memory_bytes", lambda device=None: int((params + 5.5 * per) / capacity.MEMORY_FRACTION))
    assert capacity.auto_pairs_per_call(pipe) == 2  # 5 candidate slots, 2 a pair


@pytest.mark.xfail(strict=True, reason="splash under the candidates' jax.vmap: _splash_sharded sees a batch of 1, "
                   "so shard_map replicates the vmapped candidates over 'data' (an all-gather of every attention "
                   "input, each chip attending every candidate); vmap(spmd_axis_name='data') in method/hsp.py's "
                   "*_candidates would tell it")
def test_splash_on_a_data_mesh_gathers_no_candidates(models):
    """BNoise on a data-only mesh (4 x 1): with 'xla' attention nothing moves between chips; splash
    should not either."""
    from vmdiff_jax.engine.targets import stage_calls

    mesh = sharding.make_mesh(data=4, fsdp=1, devices=targets.devices(targets.TARGETS["v5e-4"]))
    cfg = HSPConfig(num_steps=2, size=32)
    got = {}
    for impl in ("xla", "splash"):
        flux = nnx.eval_shape(lambda impl=impl: Flux(_head128(), dtype=jnp.bfloat16, param_dtype=jnp.bfloat16,
                                                     rngs=nnx.Rngs(0), attention_impl=impl))
        fn, args, kw, parts = stage_calls("bnoise", cfg, {"flux": flux, "vae": models.vae}, mesh, 4, ctx=256)
        got[impl] = targets.compile_stage(fn, args, kw, platform="tpu", param_arg_count=parts)
        assert got[impl].error is None, got[impl].error
    assert got["xla"].collectives == {}
    assert got["splash"].collectives == {}

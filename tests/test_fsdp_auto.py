"""`--fsdp auto` from the compiled memory analysis (fsdp_auto.auto_fsdp, shared by `vmdiff plan`
and `VMDiff.from_pretrained`): on compile-only TPU devices (a v5e 2x2 slice, libtpu) with the
demo's networks, FLUX widened so that its kernels are FSDP-sharded, and a device memory between
what fsdp 1 and fsdp 2 need; the fallback to the estimate; CPU unchanged."""

import dataclasses

import jax.numpy as jnp
import pytest

from vmdiff_jax.checkpoints.flux import abstract_flux
from vmdiff_jax.checkpoints.vae import abstract_vae
from vmdiff_jax.engine import fsdp_auto, sharding, targets
from vmdiff_jax.engine.demo import demo_configs
from vmdiff_jax.method.hsp import HSPConfig

tpu = pytest.mark.skipif(not targets.libtpu_available(), reason="libtpu not installed")
CFG = HSPConfig(num_steps=2, size=32)


@pytest.fixture(scope="module")
def models():
    c = demo_configs(1024)
    # hidden 512 (4 heads of 128): its block kernels are over sharding's 2^18 elements, so FSDP shards them
    flux = dataclasses.replace(c["flux"], hidden_size=512, num_heads=4, axes_dim=(16, 56, 56))
    return {"flux": abstract_flux(flux, jnp.bfloat16), "vae": abstract_vae(c["vae"], jnp.bfloat16)}


@pytest.fixture(scope="module")
def devices():
    return targets.devices(targets.TARGETS["v5e-4"]) if targets.libtpu_available() else None


@pytest.fixture
def memo_compiles(monkeypatch):
    """Each stage compiled once per mesh shape in a test (the verdicts differ, the programs do not)."""
    real, seen = targets.compile_stage, {}

    def compile_stage(fn, args, kwargs=None, **kw):
        key = (getattr(fn, "__name__", str(fn)), tuple(targets._mesh_of(args).shape.items()))
        if key not in seen:
            seen[key] = real(fn, args, kwargs, **kw)
        return seen[key]

    monkeypatch.setattr(targets, "compile_stage", compile_stage)
    return seen


@tpu
def test_auto_fsdp_picks_the_smallest_size_whose_compiled_calls_fit(models, devices, memo_compiles):
    fits = targets.fsdp_fits(models, CFG, devices, 10**12, "tpu")
    one, two = fits(1), fits(2)
    assert one.ok and two.ok, (one.why, two.why)
    assert set(one.compiled) == {"bnoise", "mdenoise"} and all(c.error is None for c in one.compiled.values())
    flux1 = targets.resident_bytes({"flux": models["flux"]}, sharding.make_mesh(data=4, fsdp=1, devices=devices))["flux"]
    # sharding FLUX over 2 chips halves most of its bytes a chip; the calls' temporaries stay
    assert two.need < one.need and one.need - two.need > 0.3 * flux1
    mem = (one.need + two.need) // 2
    assert flux1 < mem  # the parameters alone would fit at fsdp 1: the compiled calls decide
    record = {}
    got = fsdp_auto.auto_fsdp(models["flux"], None, 4, device_memory=mem, models=models, cfg=CFG, devices=devices,
                             platform="tpu", record=record)
    assert got == 2 and record["from"] == "compiled"
    assert "needs" in record["tried"][1] and f"> {mem / 1e9:.2f} GB" in record["tried"][1]  # fsdp 1 does not fit
    assert targets.fsdp_fits(models, CFG, devices, mem, "tpu")(1).ok is False
    # just the memory fsdp 1 needs: 1, where the estimate (FLUX under 60% of the memory) would shard it
    assert fsdp_auto.auto_fsdp(models["flux"], None, 4, device_memory=one.need, models=models, cfg=CFG,
                              devices=devices, platform="tpu") == 1
    assert flux1 > 0.6 * one.need and fsdp_auto.auto_fsdp(models["flux"], None, 4, device_memory=one.need) == 2
    # memory for nothing: the largest size, still not fitting (its parameters alone: nothing compiled)
    record = {}
    assert fsdp_auto.auto_fsdp(models["flux"], None, 4, device_memory=flux1 // 8, models=models, cfg=CFG,
                              devices=devices, platform="tpu", record=record) == 4
    assert record["from"] == "compiled" and "parameters" in record["tried"][4] and not record["compiled"][4]


def _fake(error_for):
    def compile_stage(fn, args, kwargs=None, platform="tpu", param_arg_count=0):
        mesh = targets._mesh_of(args)
        err = error_for(mesh.shape["fsdp"], fn.__name__)
        return targets.Compiled(1000, 10, 10, 1020, 1.0, None, {}, 0.0, error=err)

    return compile_stage


@tpu
def test_a_refusal_for_memory_is_not_fitting_and_another_failure_falls_back(models, devices, monkeypatch):
    monkeypatch.setattr(targets, "compile_stage", _fake(
        lambda f, name: "RESOURCE_EXHAUSTED: Ran out of memory in memory space hbm" if f == 1 else None))
    record = {}
    assert fsdp_auto.auto_fsdp(models["flux"], None, 4, device_memory=10**12, models=models, cfg=CFG, devices=devices,
                              platform="tpu", record=record) == 2
    assert "RESOURCE_EXHAUSTED" in record["tried"][1] and record["from"] == "compiled"
    monkeypatch.setattr(targets, "compile_stage", _fake(lambda f, name: "UNIMPLEMENTED: no kernel" if name == "mdenoise" else None))
    record = {}
    flux = sum(targets.resident_bytes({"flux": models["flux"]}, sharding.make_mesh(data=4, fsdp=1, devices=devices)).values())
    mem = int(flux / 0.6 / 1.5)  # the estimate: 2 shards
    assert fsdp_auto.auto_fsdp(models["flux"], None, 4, device_memory=mem, models=models, cfg=CFG, devices=devices,
                              platform="tpu", record=record) == 2
    assert record["from"] == "estimate" and "UNIMPLEMENTED" in record["tried"][1]


def test_cpu_keeps_the_estimate_and_compiles_nothing(models, monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("compiled on CPU")

    monkeypatch.setattr(targets, "compile_stage", refuse)
    assert fsdp_auto.auto_fsdp(models["flux"], None, 4, models=models, cfg=CFG, platform="cpu") == 1  # no memory figure
    record = {}
    assert fsdp_auto.auto_fsdp(models["flux"], None, 4, device_memory=10**12, models=models, cfg=CFG, platform="cpu",
                              record=record) == 1
    assert record["from"] == "estimate"
    assert fsdp_auto.fsdp_sizes(8) == [1, 2, 4, 8] and fsdp_auto.fsdp_sizes(6) == [1, 2] and fsdp_auto.fsdp_sizes(1) == [1]


@tpu
def test_from_the_checkpoints_of_a_weights_folder(weights, monkeypatch):
    """The pipeline's path: the networks built abstractly from `find_weights`' files, compiled
    on the slice's devices (here: v5e 2x2 compile-only ones)."""
    from vmdiff_jax.checkpoints.weights import find_weights

    found = find_weights(weights, use_hf_cache=False)
    nets = fsdp_auto.checkpoint_models(found, jnp.float32, jnp.float32)
    assert set(nets) == {"flux", "vae", "redux", "siglip", "clip_l", "dinov2", "clip_bigg"}
    assert targets.context_tokens(nets) == 729  # SigLIP at 384 / 14
    record = {}
    devs = targets.devices(targets.TARGETS["v5e-4"])
    assert fsdp_auto.auto_fsdp(found["flux"], jnp.float32, 4, device_memory=16 * 2**30, weights=found,
                              other_dtype=jnp.float32, cfg=CFG, devices=devs, platform="tpu", record=record) == 1
    assert record["from"] == "compiled" and set(record["compiled"][1]) == {"bnoise", "mdenoise"}
    assert all(c.error is None for c in record["compiled"][1].values())

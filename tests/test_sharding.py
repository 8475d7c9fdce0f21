"""SPMD placement on 4 simulated CPU devices (XLA_FLAGS=--xla_force_host_platform_device_count=4,
which must be set before jax starts, hence one subprocess for the whole file):

(a) data parallelism: the backend's candidate rows (two pairs in one padded call) sharded
    over a 4-device 'data' mesh (and over a 2 x 2 (data, fsdp) mesh) give the same BNoise
    latents, images and scores as on a 1-device mesh;
(b) FSDP: a tiny FLUX sharded with `shard_model(model, make_mesh(data=1, fsdp=4))` really
    splits its big parameters over 'fsdp' and gives the unsharded forward;
(c) `param_sharding_fn` as the `sharding` callback of `checkpoints.loader.fill` (through `load_flux`).

Tolerances (relative to max(1, max|reference|)): BNoise latents and FLUX outputs 1e-5; uint8
images may differ by one level (a float near .5 rounded after a reordered reduction) on < 1%
of pixels; the scores, computed from those uint8 images, 1e-4.

The subprocess uses JAX's persistent compilation cache (VMDIFF_JAX_CACHE or
~/.cache/vmdiff_jax/xla, every compile cached): about 25 s cold, 8 s warm on 2 CPU cores.
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest

CACHE_ENV = {
    "JAX_COMPILATION_CACHE_DIR": os.environ.get("VMDIFF_JAX_CACHE", os.path.expanduser("~/.cache/vmdiff_jax/xla")),
    "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
    "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "-1",
}

FLOAT_TOL = 1e-5
SCORE_TOL = 1e-4  # S and its sub-scores: computed from the uint8 images, so a one-level flip moves them ~4e-5
MAX_LEVELS = 1
MAX_DIFF_FRACTION = 0.01

SCRIPT = textwrap.dedent(
    r"""
    import json, os, sys
    import jax, jax.numpy as jnp, numpy as np
    from flax import nnx
    from vmdiff_jax.engine import pipeline, sharding
    from vmdiff_jax.method import search
    from vmdiff_jax.engine.pairs import FusionInput, PipelineBackend
    from vmdiff_jax.engine.scheduler import BNoiseItem, MDeNoiseItem
    from vmdiff_jax.engine.demo import demo_models, example_images
    from vmdiff_jax.method.hsp import HSPConfig
    from vmdiff_jax.app.inputs import load_image
    from vmdiff_jax.nn.flux import Flux, FluxConfig
    from safetensors.numpy import save_file
    from vmdiff_jax.checkpoints import load_flux

    out = {"devices": len(jax.devices())}

    def rel(a, b):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        return float(np.max(np.abs(a - b)) / max(1.0, float(np.max(np.abs(b)))))

    # (a) candidate rows of two pairs over 'data': 4-device and 2 x 2 meshes vs a 1-device mesh.
    (p1, l1), (p2, l2) = example_images(random=True)
    im1, im2 = load_image(p1, 64), load_image(p2, 64)
    inputs = {0: FusionInput.pair(im1, im2, l1, l2, jax.random.key(3), 3), 1: FusionInput.pair(im2, im1, l2, l1, jax.random.key(4), 4)}
    models = demo_models(0)
    res = {}
    meshes = (("one", sharding.make_mesh(devices=jax.devices()[:1])), ("four", sharding.make_mesh(data=4)),
              ("two_by_two", sharding.make_mesh(data=2, fsdp=2)))
    for name, mesh in meshes:
        pipe = pipeline.VMDiff(models, HSPConfig(num_steps=4, size=64), search.EAAConfig.tiny(), mesh=mesh)
        backend = PipelineBackend(pipe, inputs.__getitem__, lambda p, r: None, schedule="paper", settings={})
        backend.start(0)
        backend.start(1)
        betas = [[1.0, 1.0], [0.5, 1.5], [1.5, 0.7], [2.1, 1.0], [1.0, 3.1]]
        items = [BNoiseItem(k % 2, 1, np.array(b)) for k, b in enumerate(betas)]  # 5 rows of two pairs in 8 slots
        eps_b = backend.bnoise(items, 8)
        alphas = [0.4, 0.45, 0.5, 0.55, 0.6]
        ev = backend.mdenoise([MDeNoiseItem(it.pair, e, np.array([1 - a, a])) for it, e, a in zip(items, eps_b, alphas)], 8)
        e, cs, y = (np.repeat(np.asarray(x)[None], 8, 0) for x in (eps_b[0], backend.pairs[0].c, backend.pairs[0].y))
        raw = pipe.mdenoise(e, cs, np.full((8, 2), 0.5, np.float32), y)
        seen = [len(raw.sharding.device_set), raw.addressable_shards[0].data.shape[0], raw.shape[0]]
        res[name] = dict(eps_b=np.stack(eps_b), images=np.stack(ev.payload), S=np.asarray(ev.S),
                         d1=np.asarray(ev.d1), c2=np.asarray(ev.c2), seen=seen, multiple=pipe.data)
    a, b, m = res["four"], res["one"], res["two_by_two"]
    lv = np.abs(a["images"].astype(int) - b["images"].astype(int))
    lv22 = np.abs(m["images"].astype(int) - b["images"].astype(int))
    out["a22"] = dict(multiple=m["multiple"], seen=m["seen"], eps_b_err=rel(m["eps_b"], b["eps_b"]), S_err=rel(m["S"], b["S"]),
                      max_levels=int(lv22.max()), diff_fraction=float((lv22 > 0).mean()))
    out["a"] = dict(
        multiple=[a["multiple"], b["multiple"]], seen_four=a["seen"], seen_one=b["seen"],
        eps_b_err=rel(a["eps_b"], b["eps_b"]), S_err=rel(a["S"], b["S"]), d1_err=rel(a["d1"], b["d1"]),
        c2_err=rel(a["c2"], b["c2"]), max_levels=int(lv.max()), diff_fraction=float((lv > 0).mean()),
        image_std=float(b["images"].std()), n=int(len(b["S"])),
    )

    # (b) FSDP: tiny FLUX, big parameters (>= 1024 elements) split 4 ways.
    cfg = FluxConfig.tiny()
    model = Flux(cfg, rngs=nnx.Rngs(0))
    for _, v in nnx.to_flat_state(nnx.state(model, nnx.Param)):  # no zero-init hides a bug
        v.set_value(v.get_value() + 0.05 * jax.random.normal(jax.random.key(hash(v.get_value().shape) % 997), v.get_value().shape))
    rng = np.random.default_rng(0)
    B, N, L = 4, 12, 5
    img_ids = np.zeros((1, N, 3), np.float32); img_ids[0, :, 1] = np.arange(N) // 4; img_ids[0, :, 2] = np.arange(N) % 4
    inputs = (jnp.asarray(rng.standard_normal((B, N, 16)), jnp.float32), jnp.asarray(img_ids),
              jnp.asarray(rng.standard_normal((B, L, 32)), jnp.float32), jnp.zeros((1, L, 3), jnp.float32),
              jnp.asarray(rng.uniform(0, 1, B), jnp.float32), jnp.asarray(rng.standard_normal((B, 16)), jnp.float32),
              jnp.full((B,), 4.0, jnp.float32))

    @jax.jit
    def forward(graphdef, state, *xs):
        return nnx.merge(graphdef, state)(*xs)

    ref = forward(*nnx.split(model), *inputs)
    mesh = sharding.make_mesh(data=1, fsdp=4)
    MIN = 1024
    sharded = sharding.shard_model(model, mesh, min_size=MIN)
    got = forward(*nnx.split(sharded), *inputs)
    specs = {}
    for path, v in nnx.to_flat_state(nnx.state(sharded, nnx.Param)):
        x = v.get_value()
        specs[".".join(map(str, path))] = dict(shape=list(x.shape), spec=[s for s in x.sharding.spec],
                                               shard=list(x.addressable_shards[0].data.shape), devices=len(x.sharding.device_set))
    out["b"] = dict(err=rel(got, ref), specs=specs, min_size=MIN, out_devices=len(got.sharding.device_set))

    # (c) param_sharding_fn as the loader's `sharding` callback (load_flux -> checkpoints.loader.fill):
    # write the model as a BFL-layout file (Linear kernel (in, out) -> weight (out, in), stacked
    # blocks as their layers `double_blocks.{i}.*`), load it sharded.
    tensors = {}
    for path, v in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        k, x = ".".join(map(str, path)), np.asarray(v.get_value())
        head, _, rest = k.partition(".")
        for k, x in [(f"{head}.{i}.{rest}", x[i]) for i in range(len(x))] if head in model.layer_stacks else [(k, x)]:
            if k.endswith(".kernel"):
                k, x = k[: -len(".kernel")] + ".weight", x.T
            tensors[k] = np.ascontiguousarray(x)  # save_file writes raw memory
    f = os.path.join(sys.argv[1], "flux_tiny.safetensors")
    save_file(tensors, f)
    called = []
    fn = sharding.param_sharding_fn(mesh, min_size=MIN)

    def spy_fn(path, shape):
        called.append(path)
        return fn(path, shape)

    loaded = load_flux(f, dtype=jnp.float32, sharding=spy_fn)
    lspecs = {".".join(map(str, p)): [s for s in v.get_value().sharding.spec] for p, v in nnx.to_flat_state(nnx.state(loaded, nnx.Param))}
    lgot = forward(*nnx.split(loaded), *inputs)
    out["c"] = dict(err=rel(lgot, ref), calls=len(called), params=len(specs),
                    same_specs=all(lspecs[k] == specs[k]["spec"] for k in specs),
                    n_sharded=sum(any(s is not None for s in sp) for sp in lspecs.values()))
    print("RESULT " + json.dumps(out))
    """
)


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sharding")
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu", **CACHE_ENV)
    p = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp)], env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-4000:]
    line = [l for l in p.stdout.splitlines() if l.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


def test_four_host_devices(result):
    assert result["devices"] == 4


def test_candidates_sharded_over_data_match_one_device(result):
    a = result["a"]
    assert a["multiple"] == [4, 1]  # call sizes are multiples of the 'data' axis
    # on the 4-device mesh an 8-row MDeNoise output is spread over 4 devices, 2 rows each
    assert a["seen_four"] == [4, 2, 8] and a["seen_one"] == [1, 8, 8], a
    assert a["n"] == 5 and a["image_std"] > 1.0  # non-trivial images
    assert a["eps_b_err"] <= FLOAT_TOL, a["eps_b_err"]
    for k in ("S_err", "d1_err", "c2_err"):
        assert a[k] <= SCORE_TOL, (k, a[k])
    assert a["max_levels"] <= MAX_LEVELS and a["diff_fraction"] < MAX_DIFF_FRACTION, a


def test_data_by_fsdp_mesh_matches_one_device(result):
    """A (data=2, fsdp=2) mesh: candidate rows split over 'data' (4 per device pair), same results."""
    m = result["a22"]
    assert m["multiple"] == 2 and m["seen"] == [4, 4, 8], m
    assert m["eps_b_err"] <= FLOAT_TOL and m["S_err"] <= SCORE_TOL, m
    assert m["max_levels"] <= MAX_LEVELS and m["diff_fraction"] < MAX_DIFF_FRACTION, m


def test_fsdp_shards_big_params_and_matches(result):
    b = result["b"]
    assert b["err"] <= FLOAT_TOL, b["err"]
    n_sharded = 0
    for path, s in b["specs"].items():
        size = 1
        for d in s["shape"]:
            size *= d
        if size >= b["min_size"] and any(d % 4 == 0 for d in s["shape"]):
            assert "fsdp" in s["spec"], (path, s)
            ax = s["spec"].index("fsdp")
            assert s["shard"][ax] * 4 == s["shape"][ax] and s["devices"] == 4, (path, s)
            n_sharded += 1
        else:
            assert all(x is None for x in s["spec"]), (path, s)  # small: replicated
    assert n_sharded >= 10  # qkv, proj, mlp, modulation, linear1/2, ... of the tiny FLUX


def test_param_sharding_fn_as_fill_callback(result):
    c = result["c"]
    assert c["calls"] == c["params"]  # called once per parameter
    assert c["same_specs"] and c["n_sharded"] >= 10
    assert c["err"] <= FLOAT_TOL, c["err"]

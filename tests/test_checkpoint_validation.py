"""Malformed and poisoned checkpoints: every header defect, a bad index, NaN/Inf weights and
broken tokenizer files end in one CheckpointError line naming the file (and the key), in the
loader and in `vmdiff convert --check`; a seeded fuzz of headers never gets anything else through."""

import copy
import json
import random
import struct

import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import save_file

from vmdiff_jax.checkpoints import CheckpointError, load_vae
from vmdiff_jax.checkpoints import files as st
from vmdiff_jax.checkpoints.loader import Plan, fill
from vmdiff_jax.checkpoints.rules import conv, conv1x1_as_linear, linear, param_paths, same
from vmdiff_jax.checkpoints.vae import VAE_BFL, VAE_DIFFUSERS
from vmdiff_jax.app.cli import main
from vmdiff_jax.checkpoints.tokenizer import load_tokenizer
from vmdiff_jax.engine.demo import TOKENIZER_FOLDER as DEMO_FOLDER
from vmdiff_jax.nn.vae import VAEConfig


class Small(nnx.Module):
    def __init__(self, rngs):
        self.lin = nnx.Linear(4, 6, rngs=rngs)
        self.conv = nnx.Conv(3, 5, (3, 3), rngs=rngs)
        self.norm = nnx.LayerNorm(6, rngs=rngs)


def _plan():
    return Plan(nnx.eval_shape(lambda: Small(nnx.Rngs(0))),
                {"lin.kernel": linear("lin.weight"), "lin.bias": same("lin.bias"), "conv.kernel": conv("conv.weight"),
                 "conv.bias": same("conv.bias"), "norm.scale": same("norm.weight"), "norm.bias": same("norm.bias")})


def _tensors(seed=0):
    rng = np.random.default_rng(seed)
    shapes = {"lin.weight": (6, 4), "lin.bias": (6,), "conv.weight": (5, 3, 3, 3), "conv.bias": (5,),
              "norm.weight": (6,), "norm.bias": (6,)}
    return {k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}


def _split(raw: bytes) -> tuple[dict, bytes]:
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def _join(header, data: bytes, pad: bool = True) -> bytes:
    h = header if isinstance(header, bytes) else json.dumps(header).encode()
    if pad:
        h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + data


@pytest.fixture(scope="module")
def original(tmp_path_factory):
    path = tmp_path_factory.mktemp("ok") / "small.safetensors"
    t = _tensors()
    save_file(t, path)
    return t, path.read_bytes()


def _entry(h, key, **kw):
    h = copy.deepcopy(h)
    h[key].update(kw)
    return h


# (name, mutate(header) -> header or bytes, the key the message must name or None)
HEADER_DEFECTS = [
    ("negative offset", lambda h: _entry(h, "lin.bias", data_offsets=[-8, h["lin.bias"]["data_offsets"][1]]), "lin.bias"),
    ("overlap", lambda h: _entry(h, "norm.bias", data_offsets=[h["norm.bias"]["data_offsets"][0] - 8,
                                                              h["norm.bias"]["data_offsets"][1] - 8]), "norm.bias"),
    ("fractional offset", lambda h: _entry(h, "conv.bias", data_offsets=[float(o) + 0.5 for o in h["conv.bias"]["data_offsets"]]),
     "conv.bias"),
    ("fractional shape", lambda h: _entry(h, "lin.weight", shape=[6.0, 4]), "lin.weight"),
    ("out of range", lambda h: _entry(h, "norm.weight", data_offsets=[h["norm.weight"]["data_offsets"][0], 10**6]),
     "norm.weight"),
    ("length mismatch", lambda h: _entry(h, "conv.weight", shape=[5, 3, 3, 2]), "conv.weight"),
    ("dtype list", lambda h: _entry(h, "lin.bias", dtype=["F32"]), "lin.bias"),
    ("unknown dtype", lambda h: _entry(h, "lin.bias", dtype="F33"), "lin.bias"),
    ("unsupported dtype", lambda h: _entry(h, "lin.bias", dtype="C64", shape=[3]), "lin.bias"),
    ("shape string", lambda h: _entry(h, "norm.bias", shape="6"), "norm.bias"),
    ("offsets missing", lambda h: {**h, "conv.bias": {k: v for k, v in h["conv.bias"].items() if k != "data_offsets"}},
     "conv.bias"),
    ("nested metadata", lambda h: {**h, "__metadata__": {"x": [[1]]}}, None),
    ("deeply nested", lambda h: ("[" * 5000 + "]" * 5000).encode(), None),
    ("huge header size", lambda h: struct.pack("<Q", 2**62), None),
    ("not an object", lambda h: b'["a"]', None),
]


@pytest.mark.parametrize("name,mutate,key", HEADER_DEFECTS, ids=[d[0] for d in HEADER_DEFECTS])
def test_header_defects_are_refused_by_loader_and_check(original, tmp_path, capsys, name, mutate, key):
    _, raw = original
    header, data = _split(raw)
    m = mutate(header)
    path = tmp_path / "bad.safetensors"
    path.write_bytes(m + data if name == "huge header size" else _join(m, data))
    with pytest.raises(CheckpointError) as e:
        fill(_plan(), st.open_checkpoint(path))
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg
    if key is not None:
        assert repr(key) in msg, msg
    assert main(["convert", "--check", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("vmdiff: error: ") and err.count("\n") == 1 and "Traceback" not in err


def test_sharded_index_defects(tmp_path):
    t = _tensors()
    keys = sorted(t)
    save_file({k: t[k] for k in keys[:3]}, tmp_path / "m-1.safetensors")
    save_file({k: t[k] for k in keys[3:]}, tmp_path / "m-2.safetensors")
    index = tmp_path / "m.safetensors.index.json"
    good = {"weight_map": {k: "m-1.safetensors" if i < 3 else "m-2.safetensors" for i, k in enumerate(keys)}}
    index.write_text(json.dumps(good))
    np.testing.assert_array_equal(np.asarray(fill(_plan(), st.open_checkpoint(tmp_path)).norm.bias), t["norm.bias"])
    bad = [
        ("{not json", "corrupt index"),
        (json.dumps([1, 2]), "no weight_map"),
        (json.dumps({"weight_map": ["m-1.safetensors"]}), "no weight_map"),
        (json.dumps({"weight_map": {keys[0]: 7}}), repr(keys[0])),
        (json.dumps({"weight_map": {keys[0]: "../m-1.safetensors"}}), "not a .safetensors file in this folder"),
        (json.dumps({"weight_map": {**good["weight_map"], keys[0]: "m-2.safetensors"}}), f"{keys[0]!r} is not in m-2"),
        (json.dumps({"weight_map": {k: v for k, v in good["weight_map"].items() if k != keys[-1]}}), "not in the weight_map"),
        (json.dumps({"weight_map": {**good["weight_map"], "ghost.weight": "m-1.safetensors"}}), "'ghost.weight'"),
        ("[" * 100000 + "]" * 100000, "corrupt index"),
    ]
    for text, needle in bad:
        index.write_text(text)
        with pytest.raises(CheckpointError, match="index") as e:
            st.open_checkpoint(tmp_path)
        assert needle in str(e.value) and "\n" not in str(e.value), (text[:40], str(e.value))


@pytest.mark.parametrize("poison", [np.nan, np.inf, -np.inf])
def test_nan_or_inf_stops_the_load_naming_the_tensor(tmp_path, poison):
    t = _tensors()
    t["conv.weight"][2, 1, 0, 2] = poison
    save_file(t, tmp_path / "p.safetensors")
    ckpt = st.open_checkpoint(tmp_path / "p.safetensors")
    with pytest.raises(CheckpointError, match=r"tensor 'conv.weight' has 1 NaN or Inf values"):
        fill(_plan(), ckpt)
    model = fill(_plan(), ckpt, check_finite=False)  # trusted files: the check can be skipped
    assert np.isnan(np.asarray(model.conv.kernel)).any() or np.isinf(np.asarray(model.conv.kernel)).any()


def _write_from_rules(plan, path, dtype, rng, config_json=None):
    """A checkpoint in the layout `plan.rules` reads (single-source rules), random values."""
    t = {}
    for name, sd in param_paths(plan.model).items():
        (key,) = plan.rules[name].sources
        shape = tuple(sd.shape)
        if name.endswith(".kernel"):
            shape = shape[::-1] if len(shape) == 2 else (shape[3], shape[2], shape[0], shape[1])
            if plan.rules[name].fn.__code__ is conv1x1_as_linear("k").fn.__code__:
                shape = shape + (1, 1)
        t[key] = rng.standard_normal(shape).astype(dtype)
    save_file(t, path / "diffusion_pytorch_model.safetensors")
    if config_json is not None:
        (path / "config.json").write_text(json.dumps(config_json))
    return t


VAE_TINY = VAEConfig(ch=8, ch_mult=(1, 2), num_res_blocks=1, norm_groups=4)


@pytest.mark.parametrize("name", ["F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"])
def test_nonfinite_count_by_bits_equals_isfinite(name):
    dt = st.DTYPES[name]
    values = [0.0, 1.5, -2.0, 240.0, np.nan, -np.nan] + ([] if name == "F8_E4M3" else [np.inf, -np.inf])
    a = np.array(values * 3, np.float32).astype(dt).reshape(3, -1)
    want = int(a.size - np.count_nonzero(np.isfinite(a.astype(np.float64))))
    assert st.count_nonfinite(a, name) == want == (6 if name == "F8_E4M3" else 12)
    assert st.count_nonfinite(np.arange(6, dtype=np.int32), "I32") == 0


def test_nan_in_bf16_vae_stops_load_vae(tmp_path):
    t = _write_from_rules(VAE_BFL.build(None, config=VAE_TINY), tmp_path, ml_dtypes.bfloat16, np.random.default_rng(0))
    t["decoder.mid.attn_1.v.weight"][0, 0, 0, 0] = np.nan
    save_file(t, tmp_path / "diffusion_pytorch_model.safetensors")
    with pytest.raises(CheckpointError, match="'decoder.mid.attn_1.v.weight' has 1 NaN"):
        load_vae(tmp_path, config=VAE_TINY)
    assert load_vae(tmp_path, config=VAE_TINY, check_finite=False).cfg == VAE_TINY


def test_vae_scale_and_shift_come_from_the_checkpoint_config(tmp_path):
    """A diffusers vae/ folder's scaling_factor / shift_factor are carried by the loaded model's cfg."""
    conf = {"_class_name": "AutoencoderKL", "block_out_channels": [8, 16], "norm_num_groups": 4,
            "scaling_factor": 0.5, "shift_factor": 0.25}
    _write_from_rules(VAE_DIFFUSERS.build(None, config=VAE_TINY), tmp_path, np.float32, np.random.default_rng(1), conf)
    vae = load_vae(tmp_path, dtype=jnp.float32)
    assert (vae.cfg.scale_factor, vae.cfg.shift_factor, vae.cfg.norm_groups) == (0.5, 0.25, 4)
    (tmp_path / "config.json").write_text(json.dumps({**conf, "scaling_factor": 0.3611, "shift_factor": 0.1159}))
    vae = load_vae(tmp_path, dtype=jnp.float32)
    assert (vae.cfg.scale_factor, vae.cfg.shift_factor) == (0.3611, 0.1159)
    (tmp_path / "config.json").write_text(json.dumps({**conf, "scaling_factor": "big"}))
    with pytest.raises(CheckpointError, match="scaling_factor 'big'"):
        load_vae(tmp_path, dtype=jnp.float32)
    (tmp_path / "config.json").write_text("{broken")
    with pytest.raises(CheckpointError, match="config.json"):
        load_vae(tmp_path, dtype=jnp.float32)


def test_tokenizer_files_malformed_and_num_tokens(tmp_path):
    tok = load_tokenizer(DEMO_FOLDER)
    assert tok.num_tokens("a photo of a cat") == len(tok.encode("a photo of a cat")) == 5
    long = "word " * 100
    assert tok.num_tokens(long) == 100 * tok.num_tokens("word") > 75  # before truncation to 77 - 2
    assert tok([long])[0][-1] == tok.eos_id
    vocab, merges = (DEMO_FOLDER / "vocab.json").read_text(), (DEMO_FOLDER / "merges.txt").read_text()
    cases = [("{oops", merges, "vocab.json"), ('["a", "b"]', merges, "vocab.json"), ('{"a": "zero"}', merges, "vocab.json"),
             (vocab, "#version: 0.2\na b c\n", "merges.txt"), (vocab, "#version: 0.2\nzz yy\n", "merges.txt")]
    for v, m, needle in cases:
        d = tmp_path / f"t{len(list(tmp_path.iterdir()))}"
        d.mkdir()
        (d / "vocab.json").write_text(v)
        (d / "merges.txt").write_text(m)
        with pytest.raises(CheckpointError, match="malformed vocab.json / merges.txt") as e:
            load_tokenizer(d)
        assert "\n" not in str(e.value)
    d = tmp_path / "json"
    d.mkdir()
    (d / "tokenizer.json").write_text('{"model": {"type": "BPE"')
    with pytest.raises(CheckpointError, match="tokenizer.json"):
        load_tokenizer(d)
    (d / "tokenizer.json").write_text('{"model": 3}')
    with pytest.raises(CheckpointError, match="malformed tokenizer.json"):
        load_tokenizer(d)
    d = tmp_path / "cfg"
    d.mkdir()
    (d / "vocab.json").write_text(vocab)
    (d / "merges.txt").write_text(merges)
    (d / "special_tokens_map.json").write_text("[" * 10000 + "]" * 10000)
    with pytest.raises(CheckpointError, match="special_tokens_map.json"):
        load_tokenizer(d)
    (d / "special_tokens_map.json").write_text(json.dumps({"pad_token": ["x"]}))
    with pytest.raises(CheckpointError, match="pad token"):
        load_tokenizer(d)


# ------------------------------------------------------------------------------------- fuzz

_JUNK = [None, True, -1, -8, 0.5, 2.0, 2**64, 10**30, "", "x", "F33", [], [1], [1, 2, 3], [-1, 4], [2.5],
         {"a": 1}, [[1]], "[0, 8]"]


def _mutate_field(h, rng: random.Random):
    h = copy.deepcopy(h)
    keys = [k for k in h if k != "__metadata__"]
    key = rng.choice(keys)
    what = rng.randrange(8)
    if what == 0:
        h[key][rng.choice(["dtype", "shape", "data_offsets"])] = rng.choice(_JUNK)
    elif what == 1:
        del h[key][rng.choice(["dtype", "shape", "data_offsets"])]
    elif what == 2:
        s, e = h[key]["data_offsets"]
        d = rng.choice([-16, -8, -4, -1, 1, 4, 8, 16])
        h[key]["data_offsets"] = rng.choice([[s + d, e + d], [s + d, e], [s, e + d], [e, s]])
    elif what == 3:
        shape = list(h[key]["shape"])
        i = rng.randrange(len(shape))
        shape[i] = rng.choice([0, shape[i] + 1, shape[i] - 1, -shape[i], 2**40])
        h[key]["shape"] = rng.choice([shape, shape[::-1], shape + [1], shape[:-1]])
    elif what == 4:
        h[key]["dtype"] = rng.choice(["F16", "BF16", "F64", "I32", "U8", "BOOL", "F8_E4M3", "f32", "F4", "C64"])
    elif what == 5:
        h["__metadata__"] = rng.choice([{"a": 1}, {"a": ["b"]}, [], "x", {"format": "pt"}])
    elif what == 6:
        other = rng.choice(keys)
        h[key]["data_offsets"] = list(h[other]["data_offsets"])
    else:
        h[key][rng.choice(["shape", "data_offsets"])] = "__DEEP__"
    return h


def _dump(h, rng: random.Random) -> bytes:
    depth = rng.choice([10, 200, 3000])
    return json.dumps(h).replace('"__DEEP__"', "[" * depth + "]" * depth).encode()


def test_fuzzed_headers_load_exactly_or_raise_checkpoint_error(original, tmp_path):
    """2500 seeded cases: header fields mutated, or single bits of the size prefix and header flipped,
    or the file cut/extended. Each either loads the original values exactly or raises CheckpointError."""
    t, raw = original
    header, data = _split(raw)
    (n,) = struct.unpack("<Q", raw[:8])
    rng = random.Random(1234)
    plan = _plan()
    path = tmp_path / "f.safetensors"
    outcomes = {"refused": 0, "loaded": 0}
    for case in range(2500):
        kind = case % 5
        if kind in (0, 1):
            blob = _join(_dump(_mutate_field(header, rng), rng), data)
        elif kind in (2, 3):
            b = bytearray(raw)
            i = rng.randrange(8 + n)
            b[i] ^= 1 << rng.randrange(8)
            blob = bytes(b)
        else:
            cut = rng.choice([-1, -4, -200, 7, 8 + n - 1, 3, 1])
            blob = raw[:cut] if rng.random() < 0.5 else raw + bytes(rng.randrange(1, 9))
        path.write_bytes(blob)
        try:
            model = fill(plan, st.open_checkpoint(path))
        except CheckpointError as e:
            assert "\n" not in str(e) and str(path) in str(e), str(e)
            outcomes["refused"] += 1
            continue
        outcomes["loaded"] += 1
        np.testing.assert_array_equal(np.asarray(model.lin.kernel), t["lin.weight"].T, err_msg=f"case {case}")
        np.testing.assert_array_equal(np.asarray(model.conv.kernel), t["conv.weight"].transpose(2, 3, 1, 0))
        for ours, theirs in (("lin.bias", "lin.bias"), ("conv.bias", "conv.bias"), ("norm.scale", "norm.weight"),
                             ("norm.bias", "norm.bias")):
            mod, leaf = ours.split(".")
            np.testing.assert_array_equal(np.asarray(getattr(getattr(model, mod), leaf)), t[theirs], err_msg=f"case {case}")
    assert outcomes["refused"] > 1500 and outcomes["loaded"] > 10, outcomes  # both branches exercised

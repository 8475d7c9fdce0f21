"""The checkpoint reader (safetensors library) and rule-based filling: exact round trips and named errors."""

import json
import struct

import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
import torch
from flax import nnx
from safetensors.numpy import save_file
from safetensors.torch import save_file as torch_save_file

from vmdiff_jax.checkpoints import files as st
from vmdiff_jax.checkpoints import rules as loading
from vmdiff_jax.checkpoints.loader import Plan, check, fill


class Two(nnx.Module):
    def __init__(self, rngs, dtype=jnp.float32):
        self.blocks = nnx.List([nnx.Linear(4, 6, param_dtype=dtype, rngs=rngs) for _ in range(2)])
        self.conv = nnx.Conv(3, 5, (3, 3), param_dtype=dtype, rngs=rngs)


def _rules():
    r = {}
    for i in range(2):
        r[f"blocks.{i}.kernel"] = loading.linear_cat([f"b.{i}.q.weight", f"b.{i}.k.weight"])
        r[f"blocks.{i}.bias"] = loading.cat([f"b.{i}.q.bias", f"b.{i}.k.bias"])
    r["conv.kernel"] = loading.conv("conv.weight")
    r["conv.bias"] = loading.same("conv.bias")
    return r


def _tensors(rng):
    t = {f"b.{i}.{n}.weight": rng.standard_normal((3, 4)).astype(np.float32) for i in range(2) for n in "qk"}
    t.update({f"b.{i}.{n}.bias": rng.standard_normal(3).astype(np.float32) for i in range(2) for n in "qk"})
    t["conv.weight"] = rng.standard_normal((5, 3, 3, 3)).astype(np.float32)
    t["conv.bias"] = rng.standard_normal(5).astype(np.float32)
    return t


def test_reader_matches_safetensors_library_including_bf16(tmp_path):
    rng = np.random.default_rng(0)
    tensors = {"a": torch.randn(3, 5), "b": torch.randn(7).to(torch.bfloat16), "c": torch.arange(6).reshape(2, 3)}
    torch_save_file(tensors, tmp_path / "m.safetensors")
    ck = st.open_checkpoint(tmp_path / "m.safetensors")
    assert set(ck) == {"a", "b", "c"} and ck["b"].dtype == "BF16" and ck["a"].shape == (3, 5)
    np.testing.assert_array_equal(ck.read("a"), tensors["a"].numpy())
    np.testing.assert_array_equal(ck.read("b").astype(np.float32), tensors["b"].float().numpy())
    np.testing.assert_array_equal(ck.read("c"), tensors["c"].numpy())
    np.testing.assert_array_equal(ck.read("a", (slice(1, 3), slice(None))), tensors["a"].numpy()[1:3])
    # our streaming writer round-trips bf16 and is readable by the reference library
    arr = rng.standard_normal((4, 2)).astype(ml_dtypes.bfloat16)
    st.write_streaming(tmp_path / "o.safetensors", [("x", (4, 2), "BF16")], lambda k: arr)
    from safetensors.torch import load_file

    back = load_file(tmp_path / "o.safetensors")["x"]
    assert back.dtype == torch.bfloat16
    np.testing.assert_array_equal(back.float().numpy(), arr.astype(np.float32))


def test_fill_converts_linear_cat_and_conv_exactly(tmp_path):
    t = _tensors(np.random.default_rng(1))
    save_file(t, tmp_path / "m.safetensors")
    ck = st.open_checkpoint(tmp_path / "m.safetensors")
    model = fill(Plan(nnx.eval_shape(lambda: Two(nnx.Rngs(0))), _rules()), ck)
    x = np.random.default_rng(2).standard_normal((2, 4)).astype(np.float32)
    ref = x @ np.concatenate([t["b.1.q.weight"], t["b.1.k.weight"]]).T + np.concatenate([t["b.1.q.bias"], t["b.1.k.bias"]])
    np.testing.assert_allclose(np.asarray(model.blocks[1](x)), ref, rtol=1e-6, atol=1e-6)
    img = np.random.default_rng(3).standard_normal((1, 3, 8, 8)).astype(np.float32)
    ref = torch.nn.functional.conv2d(torch.from_numpy(img), torch.from_numpy(t["conv.weight"]), torch.from_numpy(t["conv.bias"]), padding=1)
    ours = model.conv(jnp.asarray(img.transpose(0, 2, 3, 1)))
    np.testing.assert_allclose(np.asarray(ours), ref.numpy().transpose(0, 2, 3, 1), rtol=1e-5, atol=1e-5)
    # the loader casts to the abstract parameter's dtype
    bf = fill(Plan(nnx.eval_shape(lambda: Two(nnx.Rngs(0), jnp.bfloat16)), _rules()), ck)
    assert bf.blocks[0].kernel.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(bf.conv.bias, np.float32),
                                  t["conv.bias"].astype(ml_dtypes.bfloat16).astype(np.float32))


@pytest.mark.parametrize(
    "mutate, needle",
    [
        (lambda t: t.pop("b.0.k.bias"), "missing key b.0.k.bias"),
        (lambda t: t.__setitem__("surplus.weight", np.zeros(2, np.float32)), "unexpected key surplus.weight"),
        (lambda t: t.__setitem__("conv.weight", np.zeros((5, 3, 1, 3), np.float32)), "conv.weight (5, 3, 1, 3)"),
        (lambda t: t.__setitem__("conv.bias", np.zeros(5, np.int32)), "key conv.bias: dtype I32"),
    ],
)
def test_problems_name_the_key(tmp_path, mutate, needle):
    t = _tensors(np.random.default_rng(4))
    mutate(t)
    save_file(t, tmp_path / "m.safetensors")
    ck = st.open_checkpoint(tmp_path / "m.safetensors")
    plan = Plan(nnx.eval_shape(lambda: Two(nnx.Rngs(0))), _rules())
    assert any(needle in p for p in check(plan, ck))
    with pytest.raises(st.CheckpointError, match=needle.split()[-1].replace("(", r"\(").replace(")", r"\)")):
        fill(plan, ck)


def test_truncated_corrupt_and_pickle_files_are_refused(tmp_path):
    t = _tensors(np.random.default_rng(5))
    save_file(t, tmp_path / "m.safetensors")
    data = (tmp_path / "m.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[:-10])
    with pytest.raises(st.CheckpointError, match="cut.safetensors.*truncated"):
        st.open_checkpoint(tmp_path / "cut.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(struct.pack("<Q", 5) + b"{nope")
    with pytest.raises(st.CheckpointError, match="junk.safetensors: not a valid safetensors file: header is not JSON"):
        st.open_checkpoint(tmp_path / "junk.safetensors")
    for suffix in (".bin", ".pt", ".pth", ".ckpt"):
        (tmp_path / f"w{suffix}").write_bytes(b"\x80\x04junk")
        with pytest.raises(st.CheckpointError, match="pickle checkpoints"):
            st.open_checkpoint(tmp_path / f"w{suffix}")
    folder = tmp_path / "only_pickle"
    folder.mkdir()
    (folder / "pytorch_model.bin").write_bytes(b"x")
    with pytest.raises(st.CheckpointError, match="pickle checkpoints"):
        st.open_checkpoint(folder)


def test_sharded_folder_with_index_and_sparse_full_size_header(tmp_path):
    t = _tensors(np.random.default_rng(6))
    keys = sorted(t)
    save_file({k: t[k] for k in keys[:4]}, tmp_path / "a-00001.safetensors")
    save_file({k: t[k] for k in keys[4:]}, tmp_path / "a-00002.safetensors")
    wm = {k: ("a-00001.safetensors" if i < 4 else "a-00002.safetensors") for i, k in enumerate(keys)}
    (tmp_path / "m.safetensors.index.json").write_text(json.dumps({"weight_map": wm}))
    ck = st.open_checkpoint(tmp_path)
    assert set(ck) == set(t)
    np.testing.assert_array_equal(ck.read(keys[-1]), t[keys[-1]])
    st.write_sparse({"huge": (3072, 12288), "small": (4,)}, tmp_path / "sparse.safetensors")
    assert (tmp_path / "sparse.safetensors").stat().st_blocks * 512 < 1_000_000  # a hole, not 75 MB
    ck = st.open_checkpoint(tmp_path / "sparse.safetensors")
    assert ck["huge"].shape == (3072, 12288) and ck["huge"].dtype == "BF16"

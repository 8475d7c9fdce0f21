"""Safetensors checkpoints on disk: a file or a folder of them, read with the `safetensors` library.

A checkpoint is one `.safetensors` file or a folder of them (diffusers shards with a
`*.safetensors.index.json`, or any `*.safetensors` files). Pickle formats are refused.
Headers and tensors are read by `safetensors.safe_open(..., framework="numpy")`, whose Rust
parser refuses every malformed header (wrong-typed fields, negative, fractional,
overlapping or out-of-range offsets, byte lengths that do not match dtype x shape, unknown
dtypes, headers over 100 MB or nested too deeply, files shorter or longer than the header
says). Our own code here only names the offending key when the library refuses a file, and
writes files tensor by tensor (the library's writers need every tensor in memory at once).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import struct
from pathlib import Path
from typing import Iterable, Iterator, Mapping

import ml_dtypes  # registers bfloat16 / float8 with numpy
import numpy as np
from safetensors import safe_open

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")

# The safetensors dtypes we load, as numpy dtypes (ml_dtypes for bf16 and fp8).
DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype(np.float64),
    "F32": np.dtype(np.float32),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn),
    "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2),
    "I64": np.dtype(np.int64),
    "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16),
    "I8": np.dtype(np.int8),
    "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}
FLOAT_DTYPES = frozenset(k for k, v in DTYPES.items() if np.issubdtype(v, np.floating) or k.startswith(("BF", "F8")))

# safetensors' numpy framework looks float8 dtypes up as numpy attributes (`numpy.float8_e4m3fn`),
# which numpy does not define; ml_dtypes' float8 types are real numpy dtypes, so name them there.
# (bfloat16 is looked up with numpy.dtype("bfloat16"), which importing ml_dtypes makes work.)
for _name in ("float8_e4m3fn", "float8_e5m2"):
    if not hasattr(np, _name):
        setattr(np, _name, getattr(ml_dtypes, _name))

MAX_INDEX_BYTES = 64 * 1024 * 1024

# (unsigned view, mask): a value is NaN or Inf iff all the mask's bits are set (the exponent;
# float8 e4m3fn has no Inf and NaN = all low 7 bits). ~4x faster than np.isfinite on bf16.
_NONFINITE_BITS = {
    "F64": (np.uint64, 0x7FF0000000000000),
    "F32": (np.uint32, 0x7F800000),
    "F16": (np.uint16, 0x7C00),
    "BF16": (np.uint16, 0x7F80),
    "F8_E4M3": (np.uint8, 0x7F),
    "F8_E5M2": (np.uint8, 0x7C),
}


def count_nonfinite(a: np.ndarray, dtype: str) -> int:
    """Number of NaN / Inf values of `a`, a tensor of safetensors dtype `dtype` (0 for non-float dtypes)."""
    if dtype not in _NONFINITE_BITS:
        return 0
    view, mask = _NONFINITE_BITS[dtype]
    u = np.ascontiguousarray(a).view(view)
    m = view(mask)
    return int(np.count_nonzero((u & m) == m))


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded; the one-line message names the file and the key."""


@dataclasses.dataclass(frozen=True)
class TensorInfo:
    """One tensor of a checkpoint, from its header: file, safetensors dtype name, shape."""

    file: Path
    dtype: str
    shape: tuple[int, ...]


def refuse_pickle(path: Path) -> None:
    """Raise for pickle checkpoints (arbitrary code on load): safetensors only."""
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise CheckpointError(
            f"{path}: pickle checkpoints ({path.suffix}) are refused; "
            "convert it to .safetensors (safetensors only, no code execution on load)"
        )


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def _diagnose(path: Path) -> str | None:
    """Which key of a header the library refused, and why (only called after it refused the file).

    The library's messages give a JSON column or no key at all; this names the tensor.
    """
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) < 8:
                return "shorter than 8 bytes"
            (n,) = struct.unpack("<Q", raw)
            if n > 100 * 1024 * 1024 or 8 + n > size:
                return f"header of {n} bytes in a file of {size}"
            header = json.loads(f.read(n))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
        return f"header is not JSON ({_one_line(e)[:120]})"
    if not isinstance(header, dict):
        return "header is not a JSON object"
    meta = header.pop("__metadata__", None)
    if meta is not None and not (isinstance(meta, dict) and all(isinstance(v, str) for v in meta.values())):
        return "__metadata__ is not an object of strings"

    def nat(x) -> bool:
        return isinstance(x, int) and not isinstance(x, bool) and x >= 0

    spans = []
    for key, h in header.items():
        if not isinstance(h, dict):
            return f"tensor {key!r}: entry is not an object"
        dtype, shape, offsets = h.get("dtype"), h.get("shape"), h.get("data_offsets")
        if not isinstance(dtype, str):
            return f"tensor {key!r}: dtype {dtype!r} is not a string"
        if not (isinstance(shape, list) and all(nat(d) for d in shape)):
            return f"tensor {key!r}: shape {shape!r} is not a list of non-negative integers"
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(nat(o) for o in offsets)):
            return f"tensor {key!r}: data_offsets {offsets!r} are not two non-negative integers"
        if dtype not in DTYPES:
            return f"tensor {key!r}: unknown or unsupported dtype {dtype!r}"
        if offsets[1] - offsets[0] != math.prod(shape) * DTYPES[dtype].itemsize:
            return f"tensor {key!r}: {offsets[1] - offsets[0]} bytes for dtype {dtype} x shape {tuple(shape)}"
        spans.append((offsets[0], offsets[1], key))
    end = 0
    for s, e, key in sorted(spans):
        if s != end:
            return f"tensor {key!r}: data_offsets [{s}, {e}] {'overlap' if s < end else 'leave a gap after'} the previous tensor"
        end = e
    if 8 + n + end != size:
        last = max(spans)[2] if spans else None
        return f"data region ends at byte {8 + n + end} (tensor {last!r}) but the file has {size} bytes (truncated or padded)"
    return None


def _open(path: Path):
    """safe_open(path, numpy), with every refusal turned into one CheckpointError line."""
    try:
        return safe_open(path, framework="numpy")
    except Exception as e:  # noqa: BLE001 - SafetensorError, OSError, ...: the file is unusable
        why = _diagnose(path) if path.is_file() else None
        raise CheckpointError(f"{path}: not a valid safetensors file: {why or _one_line(e)}") from None


def read_header(path: str | os.PathLike) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """({key: TensorInfo}, metadata) of one safetensors file; reads no tensor data."""
    path = Path(path)
    refuse_pickle(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    with _open(path) as f:
        infos = {}
        for key in f.keys():
            s = f.get_slice(key)
            dtype = s.get_dtype()
            if dtype not in DTYPES:
                raise CheckpointError(f"{path}: tensor {key!r} has unsupported dtype {dtype}")
            infos[key] = TensorInfo(path, dtype, tuple(int(d) for d in s.get_shape()))
        meta = f.metadata() or {}
    return infos, meta


class Checkpoint(Mapping[str, TensorInfo]):
    """All tensors of a file or folder of safetensors, by key (header only); `read` loads one.

    `bytes_read` counts the tensor bytes read so far (for tests and benchmarks).
    """

    def __init__(self, infos: dict[str, TensorInfo], source: Path, metadata: dict | None = None):
        self._infos = infos
        self.source = Path(source)
        self.metadata = metadata or {}
        self.bytes_read = 0

    def __getitem__(self, key: str) -> TensorInfo:
        return self._infos[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._infos)

    def __len__(self) -> int:
        return len(self._infos)

    def read(self, key: str, index: tuple[slice, ...] | None = None, *, check_finite: bool = False) -> np.ndarray:
        """Tensor `key` (or its slice `index`: only those bytes are read), as a numpy array.

        check_finite: raise CheckpointError naming the tensor if a float value is NaN or Inf.
        The file is opened for this read only, so no mapping of it outlives the call.
        """
        info = self._infos[key]
        try:
            with safe_open(info.file, framework="numpy") as f:
                a = f.get_tensor(key) if index is None else f.get_slice(key)[index]
        except Exception as e:  # noqa: BLE001 - the file changed or became unreadable since its header was read
            raise CheckpointError(f"{info.file}: tensor {key!r} unreadable: {_one_line(e)}") from None
        a = np.asarray(a)
        self.bytes_read += a.nbytes
        if check_finite and (bad := count_nonfinite(a, info.dtype)):
            raise CheckpointError(f"{info.file}: tensor {key!r} has {bad} NaN or Inf values "
                                  "(a corrupt or diverged checkpoint; check_finite=False skips this check)")
        return a

    def shape(self, key: str, ndim: int | None = None) -> tuple[int, ...]:
        """The shape of `key` (of `ndim` dimensions when given), or CheckpointError naming it."""
        if key not in self._infos:
            raise CheckpointError(f"{self.source}: missing key {key}")
        shape = self._infos[key].shape
        if ndim is not None and len(shape) != ndim:
            raise CheckpointError(f"{self.source}: key {key} has shape {shape}, expected {ndim} dimensions")
        return shape

    def count_blocks(self, prefix: str) -> int:
        """Number n of blocks `prefix{i}.*` (0 if none); they must be numbered 0..n-1."""
        rx = re.compile(re.escape(prefix) + r"(\d+)\.")
        idx = {int(m.group(1)) for k in self._infos if (m := rx.match(k))}
        missing = sorted(set(range(max(idx) + 1)) - idx) if idx else []
        if missing:
            raise CheckpointError(f"{self.source}: block {prefix}{missing[0]}.* is missing")
        return len(idx)

    def config_json(self) -> dict | None:
        """The config.json in the checkpoint folder (or beside the file), None when there is none."""
        folder = self.source if self.source.is_dir() else self.source.parent
        f = folder / "config.json"
        return read_json_object(f, "config.json") if f.is_file() else None


def read_json_object(path: Path, what: str, max_bytes: int = MAX_INDEX_BYTES) -> dict:
    """A JSON object from a small side file (config.json, tokenizer files); CheckpointError
    naming the file for anything else (too large, unreadable, not JSON, not an object)."""
    try:
        if path.stat().st_size > max_bytes:
            raise CheckpointError(f"{path}: {path.stat().st_size} bytes, too large for a {what}")
        d = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
        raise CheckpointError(f"{path}: unreadable {what} ({_one_line(e)[:160]})") from None
    if not isinstance(d, dict):
        raise CheckpointError(f"{path}: {what} is not a JSON object")
    return d


def _index_files(index: Path) -> tuple[list[Path], dict[str, str]]:
    """The shard files a `*.safetensors.index.json` names, validated."""
    try:
        if index.stat().st_size > MAX_INDEX_BYTES:
            raise CheckpointError(f"{index}: index file of {index.stat().st_size} bytes is too large")
        d = json.loads(index.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
        raise CheckpointError(f"{index}: corrupt index ({_one_line(e)[:160]})") from None
    wm = d.get("weight_map") if isinstance(d, dict) else None
    if not isinstance(wm, dict) or not wm:
        raise CheckpointError(f"{index}: corrupt index (no weight_map object)")
    for key, name in wm.items():
        if not isinstance(name, str) or not name.endswith(".safetensors") or Path(name).name != name:
            raise CheckpointError(f"{index}: key {key!r} maps to {name!r}, not a .safetensors file in this folder")
    return [index.parent / n for n in sorted(set(wm.values()))], wm


def checkpoint_files(path: str | os.PathLike) -> tuple[list[Path], Path | None, dict | None]:
    """(safetensors files, index file or None, its weight_map) of the checkpoint at `path`."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or folder")
    if path.is_file():
        refuse_pickle(path)
        if path.suffix != ".safetensors":
            raise CheckpointError(f"{path}: not a .safetensors file")
        return [path], None, None
    indexes = sorted(path.glob("*.safetensors.index.json"))
    if len(indexes) > 1:
        raise CheckpointError(f"{path}: several index files ({indexes[0].name}, {indexes[1].name}); keep one")
    if indexes:
        files, wm = _index_files(indexes[0])
        for f in files:
            if not f.is_file():
                raise CheckpointError(f"{f}: shard named in {indexes[0].name} is missing")
        return files, indexes[0], wm
    files = sorted(path.glob("*.safetensors"))
    if not files:
        pickles = [p for p in path.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES]
        if pickles:
            refuse_pickle(pickles[0])
        raise CheckpointError(f"{path}: no .safetensors files in this folder")
    return files, None, None


def open_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Index every tensor of a checkpoint file or folder from the headers alone."""
    files, index, wm = checkpoint_files(path)
    infos: dict[str, TensorInfo] = {}
    meta: dict = {}
    for f in files:
        part, m = read_header(f)
        dup = infos.keys() & part.keys()
        if dup:
            raise CheckpointError(f"{f}: key {sorted(dup)[0]!r} appears in more than one shard")
        infos.update(part)
        meta.update(m)
    if wm is not None:
        for key, name in wm.items():
            if key not in infos or infos[key].file.name != name:
                raise CheckpointError(f"{index}: key {key!r} is not in {name}")
        extra = sorted(infos.keys() - wm.keys())
        if extra:
            raise CheckpointError(f"{index}: key {extra[0]!r} of {infos[extra[0]].file.name} is not in the weight_map")
    return Checkpoint(infos, Path(path), meta)


# --------------------------------------------------------------------------- writing


def _header(specs: Iterable[tuple[str, tuple[int, ...], str]], metadata: Mapping | None) -> tuple[bytes, int]:
    """(8-byte size + padded JSON header, data bytes) for [(key, shape, dtype name)] laid out in order."""
    header: dict = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    offset = 0
    for key, shape, dt in specs:
        n = math.prod(shape) * DTYPES[dt].itemsize
        header[key] = {"dtype": dt, "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw, offset


def write_streaming(path: str | os.PathLike, specs, produce, metadata: Mapping | None = None) -> None:
    """Write a safetensors file tensor by tensor: specs = [(key, shape, dtype name)], produce(key) -> array.

    Ours because the library's writers (`save_file`, `serialize_file`) take every tensor at
    once: here the header is computed from `specs` first, so one tensor is in memory at a
    time. Written under a temporary name and renamed when complete.
    """
    path = Path(path)
    specs = list(specs)
    head, _ = _header(specs, metadata)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(head)
            for key, shape, dt in specs:
                a = np.asarray(produce(key)).astype(DTYPES[dt], copy=False)  # 0-d stays 0-d; tobytes is C order
                if a.shape != tuple(shape):
                    raise CheckpointError(f"{key}: produced shape {a.shape}, header says {tuple(shape)}")
                f.write(a.tobytes())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_sparse(shapes: Mapping[str, tuple[int, ...]], path: str | os.PathLike, dtype: str = "BF16") -> None:
    """A safetensors file with a real header and the data region left as a hole (sparse).

    For structure checks of real layouts without the weights: the full-size FLUX manifest
    costs a few KB on disk. (The library's writers would need the tensors in memory.)
    """
    head, n = _header([(k, tuple(shapes[k]), dtype) for k in sorted(shapes)], None)
    with open(path, "wb") as f:
        f.write(head)
        f.truncate(len(head) + n)

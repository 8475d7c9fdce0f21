"""Safetensors reading without torch: headers alone, or one tensor at a time.

A checkpoint is one `.safetensors` file or a folder of them (diffusers shards with a
`*.safetensors.index.json`, or any `*.safetensors` files). Pickle formats are refused.
Nothing here reads more than one tensor's bytes into host memory at once.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import struct
from pathlib import Path
from typing import Iterator, Mapping

import ml_dtypes
import numpy as np

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")

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
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}

_MAX_HEADER = 100 * 1024 * 1024


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded; the message names the file or key."""


@dataclasses.dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives: its file, dtype name, shape and absolute byte range."""

    file: Path
    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.start


def refuse_pickle(path: Path) -> None:
    """Raise for pickle checkpoints (arbitrary code on load): safetensors only."""
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise CheckpointError(
            f"{path}: pickle checkpoints ({path.suffix}) are refused; "
            "convert it to .safetensors (safetensors only, no code execution on load)"
        )


def read_header(path: str | os.PathLike) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """Parse one safetensors header: ({key: TensorInfo}, metadata). Reads no tensor data.

    Checks that every byte range lies inside the file, so a truncated file is named here.
    """
    path = Path(path)
    refuse_pickle(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    size = path.stat().st_size
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise CheckpointError(f"{path}: not a safetensors file (shorter than 8 bytes)")
        (n,) = struct.unpack("<Q", raw)
        if n > _MAX_HEADER or 8 + n > size:
            raise CheckpointError(
                f"{path}: not a safetensors file or truncated (header of {n} bytes, file of {size})"
            )
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{path}: corrupt safetensors header ({e})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: corrupt safetensors header (not a JSON object)")
    meta = header.pop("__metadata__", None) or {}
    base = 8 + n
    infos: dict[str, TensorInfo] = {}
    for key, h in header.items():
        try:
            dtype, shape, (s, e) = h["dtype"], tuple(int(d) for d in h["shape"]), h["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"{path}: corrupt header entry for {key!r}") from None
        if dtype not in DTYPES:
            raise CheckpointError(f"{path}: tensor {key!r} has unsupported dtype {dtype}")
        if e - s != math.prod(shape) * DTYPES[dtype].itemsize:
            raise CheckpointError(f"{path}: tensor {key!r} byte range does not match shape {shape}")
        if base + e > size:
            raise CheckpointError(
                f"{path}: truncated file: tensor {key!r} ends at byte {base + e} but the file has {size}"
            )
        infos[key] = TensorInfo(path, dtype, shape, base + s, base + e)
    return infos, meta


def read_tensor(info: TensorInfo) -> np.ndarray:
    """Read one tensor's bytes into a fresh numpy array (host memory: this tensor only)."""
    out = np.empty(info.shape, DTYPES[info.dtype])
    buf = out.reshape(-1).view(np.uint8)
    with open(info.file, "rb", buffering=0) as f:
        f.seek(info.start)
        got = f.readinto(buf)
    if got != info.nbytes:
        raise CheckpointError(f"{info.file}: truncated while reading a tensor ({got} of {info.nbytes} bytes)")
    return out


class Checkpoint(Mapping[str, TensorInfo]):
    """All tensors of a file or folder of safetensors, by key, read lazily.

    `ckpt[key]` is the TensorInfo (header only); `ckpt.load(key)` reads that tensor.
    """

    def __init__(self, infos: dict[str, TensorInfo], source: Path, metadata: dict | None = None):
        self._infos = infos
        self.source = source
        self.metadata = metadata or {}

    def __getitem__(self, key: str) -> TensorInfo:
        return self._infos[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._infos)

    def __len__(self) -> int:
        return len(self._infos)

    def load(self, key: str) -> np.ndarray:
        return read_tensor(self._infos[key])


def checkpoint_files(path: str | os.PathLike) -> list[Path]:
    """The safetensors files that make up the checkpoint at `path` (file or folder)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or folder")
    if path.is_file():
        refuse_pickle(path)
        if path.suffix != ".safetensors":
            raise CheckpointError(f"{path}: not a .safetensors file")
        return [path]
    indexes = sorted(path.glob("*.safetensors.index.json"))
    if indexes:
        try:
            weight_map = json.loads(indexes[0].read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as e:
            raise CheckpointError(f"{indexes[0]}: corrupt index ({e})") from None
        files = [path / f for f in sorted(set(weight_map.values()))]
        for f in files:
            if not f.is_file():
                raise CheckpointError(f"{f}: shard named in {indexes[0].name} is missing")
        return files
    files = sorted(path.glob("*.safetensors"))
    if not files:
        pickles = [p for p in path.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES]
        if pickles:
            refuse_pickle(pickles[0])
        raise CheckpointError(f"{path}: no .safetensors files in this folder")
    return files


def open_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Index every tensor of a checkpoint file or folder from the headers alone."""
    infos: dict[str, TensorInfo] = {}
    meta: dict = {}
    for f in checkpoint_files(path):
        part, m = read_header(f)
        dup = infos.keys() & part.keys()
        if dup:
            raise CheckpointError(f"{f}: key {sorted(dup)[0]!r} appears in more than one shard")
        infos.update(part)
        meta.update(m)
    return Checkpoint(infos, Path(path), meta)


def save_file(tensors: Mapping[str, np.ndarray], path: str | os.PathLike, metadata: dict | None = None) -> None:
    """Write numpy arrays (bf16 included) as safetensors, atomically (temp name, then rename)."""
    path = Path(path)
    header: dict = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    offset = 0
    arrays = {}
    for k in sorted(tensors):
        a = np.ascontiguousarray(tensors[k])
        header[k] = {"dtype": DTYPE_NAMES[a.dtype], "shape": list(a.shape), "data_offsets": [offset, offset + a.nbytes]}
        offset += a.nbytes
        arrays[k] = a
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for k in sorted(arrays):
            f.write(arrays[k].tobytes())
    os.replace(tmp, path)


def write_sparse(shapes: Mapping[str, tuple[int, ...]], path: str | os.PathLike, dtype: str = "BF16") -> None:
    """A safetensors file with a real header and the data region left as a hole (sparse).

    For structure tests: the full-size FLUX manifest costs a few KB on disk.
    """
    header: dict = {}
    offset = 0
    item = DTYPES[dtype].itemsize
    for k in sorted(shapes):
        n = math.prod(shapes[k]) * item
        header[k] = {"dtype": dtype, "shape": list(shapes[k]), "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        f.truncate(8 + len(raw) + offset)


def write_streaming(path: str | os.PathLike, specs, produce, metadata: dict | None = None) -> None:
    """Write a safetensors file tensor by tensor: specs = [(key, shape, dtype name)], produce(key) -> array.

    The header is computed from `specs` first, so only one tensor is in memory at a time.
    Written under a temporary name and renamed when complete.
    """
    path = Path(path)
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
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(struct.pack("<Q", len(raw)))
            f.write(raw)
            for key, shape, dt in specs:
                a = np.asarray(produce(key)).astype(DTYPES[dt], copy=False)  # 0-d stays 0-d; tobytes is C order
                if a.shape != tuple(shape):
                    raise CheckpointError(f"{key}: produced shape {a.shape}, header says {tuple(shape)}")
                f.write(a.tobytes())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()

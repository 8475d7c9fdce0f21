"""Argument checks of the public API (`vmdiff_jax.__init__`'s exports, `VMDiff.fuse`): a wrong
type is a TypeError, a wrong value, range or shape a ValueError, each naming the argument,
raised before any JAX work. Shapes and dtypes are checked on tracers too (under jit / vmap);
values only when they are concrete (Python or numpy numbers).

Images (`image`): uint8 RGB (H, W, 3) as given; other integer dtypes holding 0..255 are taken
as uint8; floating images (any float dtype) must hold values in [0, 1] and are converted to
uint8 as round(255 x); bool, NaN / Inf, values out of range, other shapes are refused.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Sequence

import numpy as np

SEED_MAX = 2**32 - 1  # jax.random.key keeps 32 bits without x64: larger seeds would repeat smaller ones


def _type(x: Any) -> str:
    return type(x).__name__


def _kind(dtype: Any) -> str:
    """'f' floating (bfloat16 and float8 included), 'i' integer, 'b' bool, 'c' complex, '' other."""
    import jax.numpy as jnp

    try:
        dt = jnp.dtype(dtype)
    except TypeError:
        return ""
    for kind, parent in (("b", jnp.bool_), ("f", jnp.floating), ("i", jnp.integer), ("c", jnp.complexfloating)):
        if jnp.issubdtype(dt, parent):
            return kind
    return ""


def integer(name: str, value: Any, lo: int | None = None, hi: int | None = None) -> int:
    """`value` as an int (Python or numpy integer, not bool) within [lo, hi]."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {_type(value)} {value!r}")
    v = int(value)
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        rng = f"from {lo} to {hi}" if lo is not None and hi is not None else (f">= {lo}" if lo is not None else f"<= {hi}")
        raise ValueError(f"{name} must be an integer {rng}, got {v}")
    return v


def _concrete(value: Any) -> bool:
    return isinstance(value, (numbers.Number, np.ndarray, np.generic))


def number(name: str, value: Any, lo: float | None = None, hi: float | None = None, *, above: float | None = None,
           finite: bool = True) -> Any:
    """A real scalar (Python / numpy number, or a 0-d array, traced or not); when concrete, finite
    and within [lo, hi] (and > above). Returns `value` (a float when concrete)."""
    if isinstance(value, (bool, np.bool_)) or isinstance(value, (str, bytes)):
        raise TypeError(f"{name} must be a real number, got {_type(value)} {value!r}")
    if not _concrete(value):
        if not hasattr(value, "shape") or not hasattr(value, "dtype"):
            raise TypeError(f"{name} must be a real number, got {_type(value)}")
        if tuple(value.shape) != ():
            raise ValueError(f"{name} must be a scalar, got shape {tuple(value.shape)}")
        if _kind(value.dtype) not in ("f", "i"):
            raise TypeError(f"{name} must be a real number, got dtype {value.dtype}")
        return value
    a = np.asarray(value)
    if a.shape != ():
        raise ValueError(f"{name} must be a scalar, got shape {a.shape}")
    if _kind(a.dtype) not in ("f", "i"):
        raise TypeError(f"{name} must be a real number, got {_type(value)} {value!r}")
    v = float(a)
    if finite and not math.isfinite(v):
        raise ValueError(f"{name} must be finite, got {v}")
    if (lo is not None and v < lo) or (hi is not None and v > hi) or (above is not None and not v > above):
        want = " and ".join(s for s in (f">= {lo}" if lo is not None else "", f"<= {hi}" if hi is not None else "",
                                        f"> {above}" if above is not None else "") if s)
        raise ValueError(f"{name} must be {want}, got {v}")
    return v


def array(name: str, x: Any, *, min_ndim: int = 0, ndim: int | None = None, floating: bool = False) -> Any:
    """An array (numpy / JAX, traced or not) of `ndim` (or at least min_ndim) dimensions; floating:
    of a float dtype. Returns `x`."""
    if not hasattr(x, "shape") or not hasattr(x, "dtype"):
        raise TypeError(f"{name} must be an array (numpy or JAX), got {_type(x)}")
    nd = len(x.shape)
    if (ndim is not None and nd != ndim) or nd < min_ndim:
        want = f"{ndim}" if ndim is not None else f"at least {min_ndim}"
        raise ValueError(f"{name} must have {want} dimensions, got shape {tuple(x.shape)}")
    if floating and _kind(x.dtype) != "f":
        raise TypeError(f"{name} must be a floating-point array, got dtype {x.dtype}")
    return x


def reals(name: str, x: Any) -> Any:
    """A real number or an array of them (any shape; traced or not); finite when concrete. Returns `x`."""
    if isinstance(x, (bool, np.bool_, str, bytes)) or x is None:
        raise TypeError(f"{name} must be a real number or an array of them, got {_type(x)}")
    if hasattr(x, "shape") and hasattr(x, "dtype") and not isinstance(x, (np.ndarray, np.generic)):
        if _kind(x.dtype) not in ("f", "i"):  # a JAX array or tracer: its dtype only
            raise TypeError(f"{name} must hold real numbers, got dtype {x.dtype}")
        return x
    try:
        a = np.asarray(x)
    except Exception:  # noqa: BLE001
        raise TypeError(f"{name} must be a real number or an array of them, got {_type(x)}") from None
    if _kind(a.dtype) not in ("f", "i"):
        raise TypeError(f"{name} must hold real numbers, got {_type(x)} of dtype {a.dtype}")
    if not np.isfinite(a).all():
        raise ValueError(f"{name} must be finite, got {a if a.size <= 8 else 'NaN or Inf among its values'}")
    return x


def path(name: str, p: Any) -> Any:
    """A file system path (str or os.PathLike)."""
    import os

    if not isinstance(p, (str, os.PathLike)) or (isinstance(p, str) and not p.strip()):
        raise TypeError(f"{name} must be a path (str or os.PathLike), got {_type(p)} {p!r}")
    return p


FLOAT_DTYPES = ("float32", "bfloat16", "float16")


def float_dtype(name: str, dtype: Any, fp8: bool = False) -> Any:
    """A parameter dtype: float32, bfloat16 or float16 (a name or dtype); with fp8 also "fp8"."""
    import jax.numpy as jnp

    if fp8 and isinstance(dtype, str) and dtype.lower() in ("fp8", "float8", "float8_e4m3fn", "f8_e4m3"):
        return dtype
    try:
        dt = jnp.dtype(dtype)
    except TypeError:
        dt = None
    if dt is None or dt.name not in FLOAT_DTYPES + (("float8_e4m3fn",) if fp8 else ()):
        allowed = ", ".join(FLOAT_DTYPES + (("'fp8'",) if fp8 else ()))
        raise ValueError(f"{name} must be one of {allowed}, got {dtype!r}")
    return dtype


def instance(name: str, value: Any, cls: type | tuple, optional: bool = False) -> Any:
    if (value is None and optional) or isinstance(value, cls):
        return value
    want = " or ".join(c.__name__ for c in (cls if isinstance(cls, tuple) else (cls,)))
    raise TypeError(f"{name} must be a {want}{' (or None)' if optional else ''}, got {_type(value)}")


def broadcastable(names: str, *shapes: Sequence[int]) -> tuple[int, ...]:
    """The broadcast shape of `shapes`; ValueError naming the arguments when they do not broadcast."""
    try:
        return tuple(np.broadcast_shapes(*(tuple(s) for s in shapes)))
    except ValueError:
        raise ValueError(f"{names} must have broadcastable shapes, got {', '.join(str(tuple(s)) for s in shapes)}") from None


def function(name: str, f: Any) -> Any:
    if not callable(f):
        raise TypeError(f"{name} must be callable, got {_type(f)}")
    return f


def choice(name: str, value: Any, options: Sequence[Any]) -> Any:
    if not isinstance(value, str) or value not in options:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, options))}, got {value!r}")
    return value


def label(name: str, value: Any) -> str:
    """A label: a str with some non-space text."""
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str (what the image shows, e.g. 'panda figurine'), got {_type(value)}")
    if not value.strip():
        raise ValueError(f"{name} is empty: give what the image shows, e.g. 'panda figurine'")
    return value


def seed(name: str, value: Any, span: int = 0) -> int:
    """A PRNG seed from 0 to SEED_MAX - span (span: further seeds used after it)."""
    return integer(name, value, 0, SEED_MAX - span)


def prng_key(name: str, key: Any) -> Any:
    """One JAX PRNG key: a typed key (jax.random.key, shape ()) or a raw uint32 (2,) key (jax.random.PRNGKey)."""
    import jax

    if not hasattr(key, "shape") or not hasattr(key, "dtype"):
        raise TypeError(f"{name} must be a JAX PRNG key (jax.random.key(seed)) or an int seed, got {_type(key)}")
    if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        if tuple(key.shape) != ():
            raise ValueError(f"{name} must be one PRNG key, got an array of keys of shape {tuple(key.shape)}")
        return key
    if np.dtype(key.dtype) == np.uint32 and tuple(key.shape) == (2,):
        return key
    raise TypeError(f"{name} must be a JAX PRNG key (jax.random.key(seed)) or an int seed, got an array of "
                    f"dtype {key.dtype} and shape {tuple(key.shape)}")


def image(name: str, img: Any, size: int | None = None) -> np.ndarray:
    """An RGB image as uint8 (H, W, 3) (module doc for the dtypes taken); (size, size, 3) when size is given."""
    if isinstance(img, (str, bytes)) or img is None:
        raise TypeError(f"{name} must be an image array (uint8 (H, W, 3)), got {_type(img)}; "
                        "read files with vmdiff_jax.app.inputs.load_image(path, size)")
    try:
        a = np.asarray(img)
    except Exception:  # noqa: BLE001 - whatever cannot become an array
        raise TypeError(f"{name} must be an image array (uint8 (H, W, 3)), got {_type(img)}") from None
    if _kind(a.dtype) not in ("f", "i"):
        raise TypeError(f"{name} must be uint8 (or floats in [0, 1]), got dtype {a.dtype}")
    want = "(H, W, 3)" if size is None else f"({size}, {size}, 3)"
    if a.ndim != 3 or a.shape[-1] != 3 or (size is not None and a.shape[:2] != (size, size)):
        hint = " (RGB: drop the alpha channel)" if a.ndim == 3 and a.shape[-1] == 4 else ""
        raise ValueError(f"{name} must be an RGB image of shape {want}, got {a.shape}{hint}")
    if a.dtype == np.uint8:
        return a
    if a.size == 0:
        return a.astype(np.uint8)
    if _kind(a.dtype) == "f":
        f = a.astype(np.float64)
        if not np.isfinite(f).all():
            raise ValueError(f"{name} holds NaN or Inf")
        lo, hi = float(f.min()), float(f.max())
        if lo < 0.0 or hi > 1.0:
            raise ValueError(f"{name}: a float image must hold values in [0, 1], got [{lo:g}, {hi:g}] "
                             "(pass uint8 0..255, or divide by 255)")
        return np.round(f * 255.0).astype(np.uint8)
    lo, hi = int(a.min()), int(a.max())
    if lo < 0 or hi > 255:
        raise ValueError(f"{name}: an integer image must hold values in 0..255, got [{lo}, {hi}] (convert it to uint8)")
    return a.astype(np.uint8)

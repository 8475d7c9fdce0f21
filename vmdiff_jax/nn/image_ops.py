"""Image resizing exactly as Pillow computes it, and the encoders' preprocessing, in JAX.

Pillow resizes separably (libImaging/Resample.c): a horizontal pass, then a vertical one,
each a weighted sum of input pixels with coefficients from `precompute_coeffs` (filter
support widened by the downscale factor, i.e. antialiased). Here those coefficients are
built on the host with numpy as dense matrices (out, in) and applied with two einsums, so
a resize is jittable and `box` (a crop, in input pixels) costs nothing extra.

Two arithmetic paths, as in Pillow:
- float images ("F" mode): float weights, no rounding (matches PIL to ~1e-5);
- uint8 images: Pillow's 8-bit fixed point (22-bit integer coefficients, rounding and
  clipping to 0..255 after each pass), emulated with int32 matrices: bit-exact.

Images are NHWC. Sizes are (height, width); boxes are PIL's (x0, y0, x1, y1).
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

PRECISION_BITS = 32 - 8 - 2  # Pillow's fixed point for 8-bit images

SIGLIP_MEAN = (0.5, 0.5, 0.5)
SIGLIP_STD = (0.5, 0.5, 0.5)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _bicubic(x: np.ndarray) -> np.ndarray:
    a = -0.5
    x = np.abs(x)
    return np.where(
        x < 1.0,
        ((a + 2.0) * x - (a + 3.0)) * x * x + 1,
        np.where(x < 2.0, (((x - 5) * x + 8) * x - 4) * a, 0.0),
    )


def _bilinear(x: np.ndarray) -> np.ndarray:
    x = np.abs(x)
    return np.where(x < 1.0, 1.0 - x, 0.0)


def _box(x: np.ndarray) -> np.ndarray:
    return np.where((x > -0.5) & (x <= 0.5), 1.0, 0.0)


def _hamming(x: np.ndarray) -> np.ndarray:
    x = np.abs(x)
    with np.errstate(divide="ignore", invalid="ignore"):
        px = x * np.pi
        v = np.sin(px) / px * (0.54 + 0.46 * np.cos(px))
    return np.where(x == 0.0, 1.0, np.where(x >= 1.0, 0.0, v))


def _sinc(x: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        v = np.sin(x * np.pi) / (x * np.pi)
    return np.where(x == 0.0, 1.0, v)


def _lanczos(x: np.ndarray) -> np.ndarray:
    return np.where((x > -3.0) & (x < 3.0), _sinc(x) * _sinc(x / 3.0), 0.0)


_FILTERS = {
    "bicubic": (_bicubic, 2.0),
    "bilinear": (_bilinear, 1.0),
    "box": (_box, 0.5),
    "hamming": (_hamming, 1.0),
    "lanczos": (_lanczos, 3.0),
}
METHODS = ("nearest", *_FILTERS)


def _trunc(v: float) -> int:
    """C's (int) cast of a double: truncation toward zero."""
    return int(v)


def resample_matrix(
    in_size: int, out_size: int, method: str = "bicubic", start: float = 0.0, end: float | None = None
) -> np.ndarray:
    """Pillow's 1-D resampling of the input span [start, end) to `out_size` pixels: float64 (out_size, in_size)."""
    end = float(in_size) if end is None else end
    # Pillow keeps the box as C floats.
    in0, in1 = np.float32(start), np.float32(end)
    m = np.zeros((out_size, in_size), np.float64)
    if method == "nearest":
        # ImagingScaleAffine: xo = a2 + a0 / 2, then xo += a0 per pixel (accumulated in double).
        a0 = float(np.float32(in1 - in0)) / out_size
        xo = float(in0) + a0 * 0.5
        for x in range(out_size):
            xin = -1 if xo < 0.0 else int(xo)
            if 0 <= xin < in_size:
                m[x, xin] = 1.0
            xo += a0
        return m
    if method not in _FILTERS:
        raise ValueError(f"unknown resize method {method!r}; expected one of {METHODS}")
    fn, base_support = _FILTERS[method]
    scale = float(np.float32(in1 - in0)) / out_size
    filterscale = max(scale, 1.0)
    support = base_support * filterscale
    ss = 1.0 / filterscale
    for xx in range(out_size):
        center = float(in0) + (xx + 0.5) * scale
        xmin = max(_trunc(center - support + 0.5), 0)
        xmax = min(_trunc(center + support + 0.5), in_size)
        if xmax <= xmin:
            continue
        x = np.arange(xmin, xmax)
        w = fn((x - center + 0.5) * ss)
        ww = np.cumsum(w)[-1]  # sequential, as the C loop
        if ww != 0.0:
            w = w / ww
        m[xx, xmin:xmax] = w
    return m


def quantize_8bpc(m: np.ndarray) -> np.ndarray:
    """Pillow's `normalize_coeffs_8bpc`: float64 coefficients -> int32 fixed point (2^22 = 1)."""
    s = m * float(1 << PRECISION_BITS)
    return np.trunc(np.where(s < 0, s - 0.5, s + 0.5)).astype(np.int32)


def resize_matrices(
    in_size: Sequence[int],
    out_size: Sequence[int],
    method: str = "bicubic",
    box=None,
) -> tuple[np.ndarray, np.ndarray]:
    """Host-side (float64) matrices of PIL's `Image.resize((w, h), method, box=box)`.

    in_size, out_size: (height, width). box: None (the whole image), (x0, y0, x1, y1) in
    input pixels (floats allowed), or an array (B, 4) of one box per image.
    Returns (wy (h, H), wx (w, W)), or (wy (B, h, H), wx (B, w, W)) for boxes (B, 4);
    out = wy @ image @ wx^T per channel.
    """
    (hin, win), (hout, wout) = tuple(in_size), tuple(out_size)
    if box is None:
        box = (0.0, 0.0, float(win), float(hin))
    b = np.asarray(box, np.float64)
    if b.ndim == 2:
        pairs = [resize_matrices(in_size, out_size, method, row) for row in b]
        return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])
    if b.shape != (4,):
        raise ValueError(f"box must be (x0, y0, x1, y1) or (B, 4), got shape {b.shape}")
    x0, y0, x1, y1 = b.tolist()
    wy = resample_matrix(hin, hout, method, y0, y1)
    wx = resample_matrix(win, wout, method, x0, x1)
    return wy, wx


def _check_matrices(images, wy, wx):
    if images.ndim != 4:
        raise ValueError(f"images must be (B, H, W, C), got shape {images.shape}")
    if wy.shape[-1] != images.shape[1] or wx.shape[-1] != images.shape[2]:
        raise ValueError(f"matrices {wy.shape}, {wx.shape} do not fit images {images.shape}")


def apply_resize(images, wy, wx, *, clip: tuple[float, float] | None = None):
    """Resize images (B, H, W, C) with matrices from `resize_matrices` -> (B, h, w, C). Jittable.

    Float matrices: float path, out = wy . (wx . image) in float32 (or the images' float dtype),
    clipped to `clip` after each pass when given (as Pillow clips its 8-bit passes).
    Integer matrices (`quantize_8bpc`): Pillow's 8-bit path on images holding 0..255, exact;
    returns uint8. Matrices may carry a leading batch axis (one per image).
    """
    _check_matrices(images, wy, wx)
    by = "bh" if wy.ndim == 3 else "h"
    bx = "bw" if wx.ndim == 3 else "w"
    eq_x = f"{bx[:-1]}xw,bhwc->bhxc"
    eq_y = f"{by[:-1]}yh,bhxc->byxc"
    if jnp.issubdtype(wy.dtype, jnp.integer):
        half = 1 << (PRECISION_BITS - 1)

        def one_pass(eq, k, x):
            s = jnp.einsum(eq, jnp.asarray(k, jnp.int32), x, preferred_element_type=jnp.int32)
            return jnp.clip((s + half) >> PRECISION_BITS, 0, 255)

        x = images.astype(jnp.int32)
        x = one_pass(eq_x, wx, x)
        x = one_pass(eq_y, wy, x)
        return x.astype(jnp.uint8)
    dtype = images.dtype if jnp.issubdtype(images.dtype, jnp.floating) else jnp.float32
    x = images.astype(dtype)
    hi = jax.lax.Precision.HIGHEST
    bound = (lambda v: jnp.clip(v, *clip)) if clip is not None else (lambda v: v)
    x = bound(jnp.einsum(eq_x, jnp.asarray(wx, dtype), x, precision=hi))
    return bound(jnp.einsum(eq_y, jnp.asarray(wy, dtype), x, precision=hi))


def _use_uint8(images, emulate_uint8: bool | None) -> bool:
    return images.dtype == jnp.uint8 if emulate_uint8 is None else emulate_uint8


def resize(
    images,
    size: Sequence[int],
    method: str = "bicubic",
    box=None,
    *,
    emulate_uint8: bool | None = None,
    clip: tuple[float, float] | None = None,
):
    """PIL's Image.resize((w, h), method, box=box) on a batch (B, H, W, C) -> (B, h, w, C).

    size: (h, w). box: None, (x0, y0, x1, y1) or (B, 4) host values (crop before resizing).
    emulate_uint8 (default: whether images are uint8): Pillow's 8-bit arithmetic on values
    0..255 (floats are rounded and clipped first), returns uint8, exact; otherwise the float
    path (PIL "F" mode) in the images' float dtype, clipped to `clip` after each pass when
    given. Jittable (size, method and box static).
    """
    hin, win = images.shape[1], images.shape[2]
    uint8 = _use_uint8(images, emulate_uint8)
    if uint8 and images.dtype != jnp.uint8:
        images = jnp.clip(jnp.round(images), 0, 255).astype(jnp.uint8)
    if method == "nearest" and (box is None or np.asarray(box).ndim == 1):
        wy, wx = resize_matrices((hin, win), size, "nearest", box)
        rows, cols = wy.argmax(-1), wx.argmax(-1)
        if not (wy.any(-1).all() and wx.any(-1).all()):
            raise ValueError(f"nearest resize: box {box} reaches outside the {win}x{hin} image")
        out = jnp.take(jnp.take(images, rows, axis=1), cols, axis=2)
        return out if (uint8 or jnp.issubdtype(out.dtype, jnp.floating)) else out.astype(jnp.float32)
    wy, wx = resize_matrices((hin, win), size, method, box)
    if uint8:
        wy, wx = quantize_8bpc(wy), quantize_8bpc(wx)
    else:
        wy, wx = wy.astype(np.float32), wx.astype(np.float32)
    return apply_resize(images, wy, wx, clip=None if uint8 else clip)


def to_uint8(images):
    """Float images in [0, 1] -> uint8 as diffusers' numpy_to_pil: round(x * 255) (clipped to 0..255)."""
    return jnp.clip(jnp.round(images.astype(jnp.float32) * 255), 0, 255).astype(jnp.uint8)


def preprocess(
    images,
    size: Sequence[int],
    mean: Sequence[float],
    std: Sequence[float],
    box=None,
    *,
    emulate_uint8: bool | None = None,
):
    """Resize (bicubic, optional crop `box`), rescale to [0, 1], normalize -> float32 (B, h, w, C).

    images: uint8 (B, H, W, C) or float in [0, 1]. emulate_uint8 (default: whether images
    are uint8): resize as PIL does on uint8 images (floats first go through `to_uint8`),
    as transformers' PIL image processors and torchvision-on-PIL do; otherwise a float
    resize (no quantization, values clipped to [0, 1] after each pass as PIL clips;
    differentiable).
    """
    if _use_uint8(images, emulate_uint8):
        u8 = images if images.dtype == jnp.uint8 else to_uint8(images)
        x = resize(u8, size, "bicubic", box, emulate_uint8=True).astype(jnp.float32) / 255.0
    else:
        x = images.astype(jnp.float32)
        if images.dtype == jnp.uint8:
            x = x / 255.0
        x = resize(x, size, "bicubic", box, emulate_uint8=False, clip=(0.0, 1.0))
    return normalize(x, mean, std)


def siglip_preprocess(images, box=None, *, emulate_uint8: bool | None = None):
    """SigLIP so400m-384 input (FLUX Redux): bicubic 384x384, mean 0.5, std 0.5 -> (B, 384, 384, 3)."""
    return preprocess(images, (384, 384), SIGLIP_MEAN, SIGLIP_STD, box, emulate_uint8=emulate_uint8)


def dino_preprocess(images, box=None, *, emulate_uint8: bool | None = None):
    """DINOv2 input: bicubic 224x224, ImageNet mean/std -> (B, 224, 224, 3)."""
    return preprocess(images, (224, 224), IMAGENET_MEAN, IMAGENET_STD, box, emulate_uint8=emulate_uint8)


def box_matrices(boxes, in_size: Sequence[int], out_size: Sequence[int], *, uint8: bool = True):
    """Per-image crop+resize matrices for `apply_resize` from host boxes (B, 4) (x0, y0, x1, y1).

    Returns (wy (B, h, H), wx (B, w, W)): int32 (Pillow's 8-bit path) when `uint8`, else
    float32. Pass them as arguments to a jitted function so new boxes do not retrace.
    """
    wy, wx = resize_matrices(in_size, out_size, "bicubic", np.asarray(boxes, np.float64).reshape(-1, 4))
    if uint8:
        return quantize_8bpc(wy), quantize_8bpc(wx)
    return wy.astype(np.float32), wx.astype(np.float32)


def crop_matrices(boxes, in_size: Sequence[int], out_size: Sequence[int]):
    """Float crop-then-resize matrices for `apply_resize`, as the authors score (REFERENCE.md,
    similarity score): each box (x0, y0, x1, y1) cut at int() coordinates, the crop alone
    resized to out_size with antialiased bicubic (torchvision's Resize on a float tensor; its
    filter reaches no pixel outside the crop, unlike PIL's resize(box=)). boxes (B, 4) ->
    (wy (B, h, H), wx (B, w, W)) float32."""
    (hin, win), (hout, wout) = tuple(in_size), tuple(out_size)
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    wy = np.zeros((len(b), hout, hin), np.float64)
    wx = np.zeros((len(b), wout, win), np.float64)
    for i, (x0, y0, x1, y1) in enumerate(b):
        x0, y0 = min(max(int(x0), 0), win - 1), min(max(int(y0), 0), hin - 1)
        x1, y1 = max(min(int(x1), win), x0 + 1), max(min(int(y1), hin), y0 + 1)
        ry, rx = resize_matrices((y1 - y0, x1 - x0), (hout, wout), "bicubic")
        wy[i, :, y0:y1], wx[i, :, x0:x1] = ry, rx
    return wy.astype(np.float32), wx.astype(np.float32)


def normalize(images01, mean: Sequence[float], std: Sequence[float]):
    """(x - mean) / std over the channel axis, float32."""
    return (images01.astype(jnp.float32) - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)

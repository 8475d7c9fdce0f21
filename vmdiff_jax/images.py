"""Reading input photos safely and writing images atomically.

Every problem with an input image is an `InputError` whose one-line message names the
file and the problem; nothing is written until the whole result is ready.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

MIN_SIDE = 16
MAX_PIXELS = 64_000_000  # 8000 x 8000


class InputError(ValueError):
    """Bad user input (image, label, output folder); the message is one line."""


def load_image(path: str | os.PathLike, size: int | None = 512) -> np.ndarray:
    """Read a photo as uint8 RGB (H, W, 3), resized to size x size (nearest, as the authors do).

    RGBA / LA / P-with-alpha are composited on white; L, CMYK, 16-bit and float modes are
    converted to 8-bit RGB. Refuses missing, unreadable, corrupt, truncated, tiny and
    enormous images with an InputError naming the file.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such image file")
    if path.is_dir():
        raise InputError(f"{path}: is a folder, not an image")
    if not os.access(path, os.R_OK):
        raise InputError(f"{path}: image is not readable (permission denied)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                w, h = im.size
                if w * h > MAX_PIXELS:
                    raise InputError(f"{path}: image of {w}x{h} is too large (at most {MAX_PIXELS // 1_000_000} megapixels)")
                if min(w, h) < MIN_SIDE:
                    raise InputError(f"{path}: image of {w}x{h} is too small (at least {MIN_SIDE}x{MIN_SIDE})")
                im.load()
                im = ImageOps.exif_transpose(im)
                rgb = _to_rgb(im)
    except InputError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise InputError(f"{path}: image is too large (decompression bomb guard)") from None
    except UnidentifiedImageError:
        raise InputError(f"{path}: not an image file or a format Pillow cannot read") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise InputError(f"{path}: corrupt or truncated image ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    if size is not None:
        rgb = rgb.resize((size, size), Image.Resampling.NEAREST)
    return np.asarray(rgb, dtype=np.uint8)


def _to_rgb(im: Image.Image) -> Image.Image:
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        a = np.asarray(im, dtype=np.float64)
        hi = 65535.0 if im.mode.startswith("I") else max(float(a.max()), 1.0)
        if im.mode == "F" and a.max() <= 1.0:
            hi = 1.0
        im = Image.fromarray(np.clip(a / hi * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        im = im.convert("RGBA")
        white = Image.new("RGBA", im.size, (255, 255, 255, 255))
        im = Image.alpha_composite(white, im)
    return im.convert("RGB")


def check_label(label: str, which: str) -> str:
    """A label must hold some non-space text; returns it stripped."""
    if label is None or not label.strip():
        raise InputError(f"{which} is empty: give a short object name such as 'panda figurine'")
    if len(label) > 200:
        raise InputError(f"{which} is longer than 200 characters")
    return " ".join(label.split())


def label_from_path(path: str | os.PathLike) -> str:
    """File name without extension, underscores and dashes as spaces ('rubber_duck.png' -> 'rubber duck')."""
    return " ".join(Path(path).stem.replace("_", " ").replace("-", " ").split())


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write to a temporary name in the same folder, then rename: never half-written."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def png_bytes(image: np.ndarray | Image.Image) -> bytes:
    """PNG encoding of a uint8 (H, W, 3) array or PIL image (deterministic bytes)."""
    import io

    im = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image, dtype=np.uint8))
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def ensure_writable_dir(path: str | os.PathLike) -> Path:
    """Create the output folder if needed and prove it is writable (InputError otherwise)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InputError(f"{path}: --out exists and is not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".write-test.", dir=path)
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise InputError(f"{path}: cannot write to the output folder ({e.strerror or e})") from None
    return path

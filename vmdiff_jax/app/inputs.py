"""Reading the inputs safely: photos, and the labels that name what they show.

Every problem with an input is an `InputError` whose one-line message names the file and
the problem. What is accepted but changed (an animated image's first frame, a label CLIP
cuts) is said in one-line notices. File names need not be valid UTF-8: paths keep Python's
surrogate escapes; labels and printed names replace the undecodable bytes. Every name shown
(messages, notices, tables, pages) goes through `displayable`: no control characters reach a
terminal, a spreadsheet or a page raw. `image_suffixes()` is the one list of the formats
Pillow reads, shared by `fuse` (any of them) and `batch` (a folder's images).
"""

from __future__ import annotations

import os
import re
import tempfile
import warnings
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from vmdiff_jax.app.outputs import atomic_write_bytes  # noqa: F401  (batch.py imports it from here until it moves)

MIN_SIDE = 16
MAX_PIXELS = 64_000_000  # 8000 x 8000


class InputError(ValueError):
    """Bad user input (image, label, output folder); the message is one line."""


def image_suffixes() -> tuple[str, ...]:
    """The file suffixes of the formats Pillow can read here ('.png', '.jpg', '.gif', '.tif', ...), sorted."""
    from PIL import ImageFile

    Image.init()

    def readable(fmt: str) -> bool:  # stubs (HDF5, GRIB, BUFR, ...) only identify a file, with no decoder
        factory = Image.OPEN.get(fmt, (None,))[0]
        return factory is not None and not (isinstance(factory, type) and issubclass(factory, ImageFile.StubImageFile))

    return tuple(sorted(ext for ext, fmt in Image.registered_extensions().items() if readable(fmt)))


def _shown(path) -> str:
    return displayable(str(path))


def load_image(path: str | os.PathLike, size: int | None = 512, notices: list[str] | None = None) -> np.ndarray:
    """Read a photo as uint8 RGB (H, W, 3), resized to size x size (nearest, as the authors do).

    RGBA / LA / P-with-alpha are composited on white; L, CMYK, 16-bit and float modes are
    converted to 8-bit RGB; an animated image gives its first frame (and a line in `notices`).
    Refuses missing, unreadable, corrupt, truncated, tiny and enormous images with an
    InputError naming the file.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{_shown(path)}: no such image file")
    if path.is_dir():
        raise InputError(f"{_shown(path)}: is a folder, not an image")
    if not os.access(path, os.R_OK):
        raise InputError(f"{_shown(path)}: image is not readable (permission denied)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                w, h = im.size
                if w * h > MAX_PIXELS:
                    raise InputError(f"{_shown(path)}: image of {w}x{h} is too large (at most {MAX_PIXELS // 1_000_000} megapixels)")
                if min(w, h) < MIN_SIDE:
                    raise InputError(f"{_shown(path)}: image of {w}x{h} is too small (at least {MIN_SIDE}x{MIN_SIDE})")
                frames = getattr(im, "n_frames", 1)
                if frames > 1 and notices is not None:
                    notices.append(f"{_shown(path)}: animated image ({frames} frames); using its first frame")
                im.load()
                im = ImageOps.exif_transpose(im)
                rgb = _to_rgb(im)
    except InputError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise InputError(f"{_shown(path)}: image is too large (decompression bomb guard)") from None
    except UnidentifiedImageError:
        raise InputError(f"{_shown(path)}: not an image file or a format Pillow cannot read") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise InputError(f"{_shown(path)}: corrupt or truncated image ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
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


# C0 and C1 controls, DEL, and the bidirectional overrides / isolates / marks that reorder what a terminal shows
_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def displayable(text: str) -> str:
    """`text` safe to show: valid UTF-8 (bytes of a non-UTF-8 file name, i.e. surrogate escapes,
    as \\xNN) with every control character escaped (ESC as \\x1b, newline as \\x0a, U+202E as
    \\u202e), so a name cannot move the cursor, colour a terminal, break a line or reorder text."""
    try:
        shown = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a lone surrogate that is no escaped byte: \\udNNN
        shown = "".join(displayable(c) if not "\ud800" <= c <= "\udfff" or "\udc80" <= c <= "\udcff"
                        else f"\\u{ord(c):04x}" for c in text)
    return _CONTROLS.sub(lambda m: f"\\x{ord(m[0]):02x}" if ord(m[0]) < 0x100 else f"\\u{ord(m[0]):04x}", shown)


def check_label(label: str, which: str) -> str:
    """A label given on the command line (`which` names its flag) must hold some non-space
    text; returns it with runs of spaces collapsed (undecodable bytes as U+FFFD)."""
    if label is None or not label.strip():
        raise InputError(f"{which} is empty: give a short object name such as 'panda figurine'")
    if len(label) > 200:
        raise InputError(f"{which} is longer than 200 characters")
    return " ".join(_CONTROLS.sub(" ", label.encode("utf-8", "surrogateescape").decode("utf-8", "replace")).split())


def label_from_path(path: str | os.PathLike) -> str:
    """File name without extension, underscores, dashes and control characters as spaces
    ('rubber_duck.png' -> 'rubber duck'); InputError when nothing is left (the same message wherever a label comes from a file name)."""
    stem = Path(path).stem.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    label = " ".join(_CONTROLS.sub(" ", stem).replace("_", " ").replace("-", " ").split())
    if not label:
        raise InputError(f"{displayable(str(path))}: the file name gives no label (nothing but '_', '-' and spaces); "
                         f"rename the file after the object it shows")
    return label


def clip_cut_notices(template: str, labels: Sequence[str], prompt_tokens: Callable[[str], int],
                     score_texts: Sequence[str], score_tokens: Callable[[str], int], limit: int = 77) -> list[str]:
    """One-line notices for the texts CLIP cuts at `limit` tokens (BOS and EOS included).

    template: the FLUX prompt with two '{}' for the labels ("A photo of {} creatively fused
    with {}."), counted with `prompt_tokens`; a long label 1 pushes label 2 out of it. More than
    two labels: the K-object prompt (prompts.guidance_prompt) is counted instead.
    score_texts: the score's CLIP text of each label, counted with `score_tokens`.
    """
    notices = []
    n = prompt_tokens(_prompt(template, labels))
    if n > limit:
        notices.append(f"the FLUX prompt is {n} tokens and CLIP reads {limit}: {_what_is_cut(template, labels, prompt_tokens, limit)} "
                       f"(shorten the labels)")
    for i, text in enumerate(score_texts, 1):
        n = score_tokens(text)
        if n > limit:
            notices.append(f"label {i} is {n} tokens in the score's CLIP text and CLIP reads {limit}: its end is not scored")
    return notices


def _prompt(template: str, labels: Sequence[str]) -> str:
    """The FLUX prompt of the labels: the pair template, or the K-object prompt (prompts.guidance_prompt)."""
    from vmdiff_jax.method.prompts import guidance_prompt

    return template.format(*labels) if len(labels) == 2 else guidance_prompt(*labels)


def _what_is_cut(template: str, labels: Sequence[str], prompt_tokens: Callable[[str], int], limit: int) -> str:
    """Which words of a too-long prompt CLIP drops."""
    if len(labels) != 2:  # the K-object prompt lists the labels sorted
        return "the labels it lists last are cut"
    l1, l2 = labels
    if prompt_tokens(template.split("{}")[0] + l1) > limit:  # the prompt up to the end of label 1
        return "label 1 is cut and label 2 is left out"
    if prompt_tokens(template.format(l1, l2 + "\0").split("\0")[0]) > limit:  # ... of label 2
        return "label 2 is cut or left out"
    return "only its closing words are cut"


def label_notices(pipe, labels: Sequence[str]) -> list[str]:
    """Notices for labels CLIP cuts, for `pipe` (a VMDiff): in the FLUX prompt (CLIP-L) and in the
    score's text (bigG), as `clip_cut_notices` words them."""
    from vmdiff_jax.method.prompts import PROMPT, score_texts

    def counter(tok):
        return lambda text: tok.num_tokens(text) + 2  # BOS and EOS

    texts = score_texts(list(labels), pipe.score_text)
    return clip_cut_notices(PROMPT, labels, counter(pipe.models.clip_l_tokenizer), texts,
                            counter(pipe.models.clip_bigg_tokenizer), limit=pipe.models.clip_l_tokenizer.max_length)


def png_bytes(image: np.ndarray | Image.Image) -> bytes:
    """PNG encoding of a uint8 (H, W, 3) array or PIL image (deterministic bytes)."""
    import io

    im = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image, dtype=np.uint8))
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def ensure_writable_dir(path: str | os.PathLike) -> Path:
    """Create the output folder if needed and prove it is writable (InputError otherwise).
    (batch's top folder; fuse and demo write through outputs.write_result_set.)"""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InputError(f"{_shown(path)}: --out exists and is not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".write-test.", dir=path)
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise InputError(f"{_shown(path)}: cannot write to the output folder ({e.strerror or e})") from None
    return path

"""A batch's images and their pairs: which files are images, the ordered (or unordered) pairs,
each pair's seed, and each pair's folder name.

Pair folder names are bounded and collision-free whatever the file names are (any length,
control bytes, non-UTF-8 bytes, '/'-free but otherwise anything): `iii_jjj_<stem 1>__<stem 2>_<hash>`
with each stem reduced to letters, digits, '-', '+' and '_' and cut at STEM_CHARS characters,
and hash = the first HASH_CHARS hex digits of sha256 over both full file names. A name is at
most ~120 bytes, so the claim (`<name>.claim.takeover-<token>`) and temporary names built on it
stay under the file systems' 255-byte limit. The full names live in the tables and pages.
"""

from __future__ import annotations

import hashlib
import itertools
import os
from pathlib import Path

from vmdiff_jax.app.inputs import InputError, displayable, image_suffixes

STEM_CHARS = 32  # characters of each stem in a pair folder's name
STEM_BYTES = 48  # ... and at most this many UTF-8 bytes
HASH_CHARS = 10  # hex digits of the names' hash


def list_images(folder: str | os.PathLike, notices: list[str] | None = None) -> list[Path]:
    """The folder's image files (every suffix Pillow reads, `inputs.image_suffixes`), sorted by
    name (at least two). Other files and hidden ones ('.*', e.g. macOS '._x.png') are skipped,
    said in one line of `notices`."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{displayable(str(folder))}: no such folder of images")
    suffixes = set(image_suffixes())
    try:
        entries = sorted(folder.iterdir())
        files = [p for p in entries if p.is_file()]
    except OSError as e:
        raise InputError(f"{displayable(str(folder))}: cannot list the folder ({e.strerror or e})") from None
    images = [p for p in files if p.suffix.lower() in suffixes and not p.name.startswith(".")]
    # skipped: other files, and entries named as images that are no regular file (a folder, a FIFO, a device)
    skipped = [p.name for p in entries if (p in files and p not in images)
               or (p not in files and p.suffix.lower() in suffixes)]
    if len(images) < 2:
        raise InputError(f"{displayable(str(folder))}: needs at least two images (.png, .jpg, .webp, .gif, .tif, ... "
                         f"any format Pillow reads), found {len(images)}")
    if skipped and notices is not None:
        shown = ", ".join(repr(displayable(n)) for n in skipped[:3]) + (", ..." if len(skipped) > 3 else "")
        notices.append(f"{displayable(str(folder))}: {len(skipped)} file(s) skipped (not images by their suffix, "
                       f"hidden, or not regular files): {shown}")
    return images


def pairs_of(n: int, unordered: bool = False) -> list[tuple[int, int]]:
    """Index pairs: all ordered (i != j), or i < j."""
    if unordered:
        return list(itertools.combinations(range(n), 2))
    return list(itertools.permutations(range(n), 2))


def pair_seed(seed: int, i: int, j: int) -> int:
    """The pair's own seed, from (seed, i, j) only (not from which process or call ran it)."""
    return (seed * 1_000_003 + i * 1009 + j) % (2**31 - 1)


def _stem(name: str) -> str:
    """A file stem reduced to a short, safe piece of a folder name."""
    text = os.fsencode(Path(name).stem).decode("utf-8", "replace")
    out, last = [], ""
    for c in text:
        c = c if (c.isalnum() and c.isprintable()) or c in "-+" else "_"
        if c == "_" and last == "_":
            continue
        out.append(c)
        last = c
    stem = "".join(out).strip("_")[:STEM_CHARS]
    while len(stem.encode("utf-8")) > STEM_BYTES:
        stem = stem[:-1]
    return stem or "_"


def pair_name(images: list[Path], i: int, j: int) -> str:
    """The bounded, collision-free folder name of pair (i, j) (module doc)."""
    a, b = images[i].name, images[j].name
    digest = hashlib.sha256(os.fsencode(a) + b"\0" + os.fsencode(b)).hexdigest()[:HASH_CHARS]
    return f"{i:03d}_{j:03d}_{_stem(a)}__{_stem(b)}_{digest}"


def pair_dir(out: Path, images: list[Path], i: int, j: int) -> Path:
    """out/pairs/<pair_name>."""
    return Path(out) / "pairs" / pair_name(images, i, j)

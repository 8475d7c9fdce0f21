"""The demo world: flat-colored shapes on a plain light background, drawn procedurally.

An object is (shape, color); its label is "<color> <shape>" ("red circle"). `draw` renders
one at any size with antialiased edges (4 x 4 supersampling), `sample` draws a seeded batch
with size and position jitter and a background between near-white and light gray. Everything
is numpy: the world is data, not a model.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

SHAPES = ("circle", "square", "triangle", "star", "ring")
COLORS = {
    "red": (220, 40, 40),
    "orange": (245, 140, 20),
    "yellow": (235, 205, 30),
    "green": (40, 170, 60),
    "cyan": (30, 190, 210),
    "blue": (40, 70, 210),
    "purple": (140, 50, 190),
    "pink": (240, 110, 180),
}
SIZE = 64  # the demo's working size
SUPERSAMPLE = 4


@dataclasses.dataclass(frozen=True)
class WorldObject:
    """One object of the world; radius and center as fractions of the image side."""

    shape: str
    color: str
    radius: float = 0.30
    center: tuple[float, float] = (0.5, 0.5)
    background: int = 245  # gray level of the plain background

    @property
    def label(self) -> str:
        return f"{self.color} {self.shape}"

    @property
    def rgb(self) -> np.ndarray:
        return np.asarray(COLORS[self.color], np.float64)


EXAMPLE_PAIR = (WorldObject("circle", "red"), WorldObject("square", "blue"))


def all_objects() -> list[WorldObject]:
    """The 40 (shape, color) objects, centred at the default radius."""
    return [WorldObject(s, c) for s in SHAPES for c in COLORS]


def parse_label(label: str) -> WorldObject:
    """"red circle" -> WorldObject("circle", "red"); ValueError for anything else."""
    parts = label.split()
    if len(parts) != 2 or parts[0] not in COLORS or parts[1] not in SHAPES:
        raise ValueError(f"not a demo-world label: {label!r} (want '<color> <shape>', colors {sorted(COLORS)}, "
                         f"shapes {list(SHAPES)})")
    return WorldObject(parts[1], parts[0])


def _mask(shape: str, x: np.ndarray, y: np.ndarray, r: float) -> np.ndarray:
    """Inside-ness of points (x, y) (centred coordinates, y down) for a shape of radius r."""
    if shape == "circle":
        return x * x + y * y <= r * r
    if shape == "square":
        s = r * 0.85
        return (np.abs(x) <= s) & (np.abs(y) <= s)
    if shape == "ring":
        d2 = x * x + y * y
        return (d2 <= r * r) & (d2 >= (0.55 * r) ** 2)
    if shape == "triangle":  # upward, centroid at the centre
        yy = y - r * 0.15
        return (yy <= r * 0.6) & (np.sqrt(3.0) * np.abs(x) <= yy + r * 1.1)
    if shape == "star":  # five points, inner radius 0.45 r
        ang = np.arctan2(x, -y)
        sector = 2 * np.pi / 5
        a = np.mod(ang + sector / 2, sector) - sector / 2  # 0 at each point; one points up
        rho = np.hypot(x, y)
        # boundary of a star: straight edges between outer and inner vertices
        inner, outer = 0.5 * r, 1.1 * r
        half = sector / 2
        # point on the edge in polar form: line through (outer, 0) and (inner, half)
        p1 = np.array([outer, 0.0])
        p2 = np.array([inner * math.cos(half), inner * math.sin(half)])
        nx, ny = p2[1] - p1[1], p1[0] - p2[0]
        c = nx * p1[0] + ny * p1[1]
        px, py = rho * np.cos(np.abs(a)), rho * np.sin(np.abs(a))
        return nx * px + ny * py <= c
    raise ValueError(f"unknown shape {shape!r}; shapes are {list(SHAPES)}")


def draw(obj: WorldObject, size: int = SIZE) -> np.ndarray:
    """The object as a uint8 image (size, size, 3): antialiased shape over its background."""
    n = size * SUPERSAMPLE
    coords = (np.arange(n) + 0.5) / n
    y, x = np.meshgrid(coords - obj.center[1], coords - obj.center[0], indexing="ij")
    cover = _mask(obj.shape, x, y, obj.radius).astype(np.float64)
    cover = cover.reshape(size, SUPERSAMPLE, size, SUPERSAMPLE).mean(axis=(1, 3))[..., None]
    img = cover * obj.rgb + (1.0 - cover) * float(obj.background)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def jittered(rng: np.random.Generator, shape: str, color: str) -> WorldObject:
    """The object with the world's jitter: radius 0.24-0.34, centre within 0.08 of the middle,
    background 232-250."""
    return WorldObject(shape, color, radius=float(rng.uniform(0.24, 0.34)),
                       center=tuple(float(v) for v in 0.5 + rng.uniform(-0.08, 0.08, 2)),
                       background=int(rng.integers(232, 251)))


def sample(seed: int, n: int, size: int = SIZE) -> tuple[np.ndarray, list[WorldObject]]:
    """n random jittered objects: (images uint8 (n, size, size, 3), objects). Seeded."""
    rng = np.random.default_rng(seed)
    objs = [jittered(rng, SHAPES[rng.integers(len(SHAPES))], list(COLORS)[rng.integers(len(COLORS))]) for _ in range(n)]
    return np.stack([draw(o, size) for o in objs]), objs


def foreground(image: np.ndarray, tol: float = 40.0) -> np.ndarray:
    """Boolean mask (H, W) of pixels that differ from the image's border color by more than tol
    (Euclidean RGB), the border color being the median of the outermost pixels."""
    im = np.asarray(image, np.float64)
    border = np.concatenate([im[0], im[-1], im[1:-1, 0], im[1:-1, -1]], axis=0)
    bg = np.median(border, axis=0)
    return np.linalg.norm(im - bg, axis=-1) > tol


def regions(mask: np.ndarray) -> list[int]:
    """Sizes of the 4-connected regions of a boolean mask, largest first."""
    seen = np.zeros_like(mask, bool)
    h, w = mask.shape
    sizes = []
    for i in range(h):
        for j in range(w):
            if mask[i, j] and not seen[i, j]:
                stack, size = [(i, j)], 0
                seen[i, j] = True
                while stack:
                    a, b = stack.pop()
                    size += 1
                    for da, db in ((1, 0), (-1, 0), (0, 1), (0, -1)):
                        u, v = a + da, b + db
                        if 0 <= u < h and 0 <= v < w and mask[u, v] and not seen[u, v]:
                            seen[u, v] = True
                            stack.append((u, v))
                sizes.append(size)
    return sorted(sizes, reverse=True)


def components(mask: np.ndarray, min_pixels: int = 12, min_share: float = 0.15) -> int:
    """Number of objects in a foreground mask: 4-connected regions of at least min_pixels pixels
    and at least min_share of the largest region (specks and corner shading do not count)."""
    sizes = regions(mask)
    if not sizes:
        return 0
    return sum(s >= max(min_pixels, min_share * sizes[0]) for s in sizes)


def object_color(image: np.ndarray) -> np.ndarray | None:
    """Mean RGB (3,) float of the foreground pixels, or None when there are none."""
    m = foreground(image)
    if m.sum() < 12:
        return None
    return np.asarray(image, np.float64)[m].mean(axis=0)


def nearest_color(rgb) -> str:
    """The world's color name nearest to an RGB triple."""
    rgb = np.asarray(rgb, np.float64)
    return min(COLORS, key=lambda c: float(np.linalg.norm(rgb - np.asarray(COLORS[c], np.float64))))

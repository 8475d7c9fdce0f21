"""Draws the two example object photos kept in vmdiff_jax/assets/examples (run once).

Hand-drawn stand-ins for object photos (an apple and a rubber duck on soft studio
backgrounds with shading and sensor noise), so that `vmdiff demo` needs no downloads.
"""

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

OUT = Path(__file__).resolve().parent.parent / "vmdiff_jax" / "assets" / "examples"


def backdrop(size, top, bottom, seed):
    y = np.linspace(0, 1, size)[:, None, None]
    img = (1 - y) * np.array(top) + y * np.array(bottom)
    img = np.broadcast_to(img, (size, size, 3)).copy()
    img += np.random.default_rng(seed).normal(0, 2.0, img.shape)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def shade(img, box, light, dark):
    """Radial shading inside an ellipse: a lit highlight falling off to the rim."""
    x0, y0, x1, y1 = box
    h, w = y1 - y0, x1 - x0
    yy, xx = np.mgrid[0:h, 0:w]
    cx, cy = 0.35 * w, 0.3 * h
    r = np.sqrt(((xx - cx) / w) ** 2 + ((yy - cy) / h) ** 2)
    t = np.clip(r / 0.9, 0, 1)[..., None]
    col = (1 - t) * np.array(light) + t * np.array(dark)
    mask = Image.new("L", (w, h), 0)
    ImageDraw.Draw(mask).ellipse([0, 0, w - 1, h - 1], fill=255)
    img.paste(Image.fromarray(col.astype(np.uint8)), (x0, y0), mask.filter(ImageFilter.GaussianBlur(1.5)))


def apple(size=384):
    img = backdrop(size, (236, 232, 225), (200, 194, 186), 0)
    d = ImageDraw.Draw(img)
    d.ellipse([110, 318, 290, 345], fill=(170, 163, 155))  # shadow
    shade(img, (92, 110, 212, 330), (250, 120, 110), (120, 10, 20))
    shade(img, (172, 110, 292, 330), (240, 90, 80), (110, 8, 18))
    d.line([(192, 122), (200, 70)], fill=(90, 60, 30), width=8)
    d.ellipse([200, 62, 262, 96], fill=(70, 140, 50), outline=(40, 90, 30), width=3)
    return img.filter(ImageFilter.GaussianBlur(0.6))


def duck(size=384):
    img = backdrop(size, (210, 228, 240), (170, 196, 214), 1)
    d = ImageDraw.Draw(img)
    d.ellipse([80, 322, 320, 350], fill=(140, 160, 175))  # shadow
    shade(img, (70, 190, 320, 335), (255, 240, 120), (200, 150, 0))  # body
    shade(img, (150, 80, 270, 205), (255, 245, 140), (210, 160, 10))  # head
    d.polygon([(262, 140), (318, 150), (262, 166)], fill=(245, 130, 30), outline=(190, 90, 10))
    d.ellipse([222, 118, 238, 134], fill=(20, 20, 20))
    d.ellipse([227, 121, 232, 126], fill=(240, 240, 240))
    d.chord([110, 220, 230, 300], 0, 180, fill=(235, 190, 40))  # wing
    return img.filter(ImageFilter.GaussianBlur(0.6))


if __name__ == "__main__":
    OUT.mkdir(parents=True, exist_ok=True)
    apple().save(OUT / "apple.png")
    duck().save(OUT / "rubber_duck.png")
    print("wrote", sorted(p.name for p in OUT.glob("*.png")))

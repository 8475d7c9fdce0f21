"""Resizing against Pillow itself, preprocessing against transformers' PIL image processor."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from vmdiff_jax.nn import image_ops as io

PIL_METHOD = {
    "bicubic": Image.BICUBIC,
    "bilinear": Image.BILINEAR,
    "box": Image.BOX,
    "hamming": Image.HAMMING,
    "lanczos": Image.LANCZOS,
    "nearest": Image.NEAREST,
}
# (output (h, w), box) cases for a 37x53 image: down, up, identity, float crops, integer crops
CASES = [
    ((17, 29), None),
    ((80, 41), None),
    ((37, 53), None),
    ((37, 53), (3.25, 2.5, 48.25, 35.9)),
    ((24, 24), (10, 5, 40, 30)),
    ((64, 64), (0.3, 0.7, 20.1, 11.3)),
    ((9, 5), None),  # downscale > 4x: more than 8 taps
]


def natural(h: int, w: int, seed: int) -> np.ndarray:
    """A natural-looking uint8 RGB image (h, w, 3): smooth color gradients, soft-edged discs, mild noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    fy, fx = rng.uniform(0.5, 2, 2)
    img = np.stack([0.5 + 0.4 * np.sin(2 * np.pi * (fx * x + fy * y) + k) for k in range(3)], -1)
    for _ in range(6):
        cy, cx = rng.uniform(0.2, 0.8, 2) * np.array([h, w]) / max(h, w)
        r = rng.uniform(0.05, 0.25)
        a = np.clip((r - np.hypot(y - cy, x - cx)) * max(h, w) / 1.5, 0, 1)[..., None]  # ~1.5 px soft edge
        img = img * (1 - a) + a * rng.uniform(0.05, 0.95, 3)
    img = img + rng.normal(0, 0.02, img.shape)
    return (np.clip(img, 0, 1) * 255).round().astype(np.uint8)


def pil_resize(a: np.ndarray, size, method, box=None) -> np.ndarray:
    mode = "F" if a.dtype == np.float32 else None
    return np.asarray(Image.fromarray(a, mode).resize((size[1], size[0]), PIL_METHOD[method], box=box))


@pytest.mark.parametrize("method", list(PIL_METHOD))
def test_resize_float_matches_pil_f_mode(method):
    """PIL "F" mode keeps float32 between passes and never rounds: ours within 1e-5."""
    f = np.random.default_rng(0).random((37, 53)).astype(np.float32)
    for size, box in CASES:
        ref = pil_resize(f, size, method, box)
        ours = np.asarray(io.resize(jnp.asarray(f)[None, ..., None], size, method, box))[0, ..., 0]
        assert ours.shape == ref.shape
        np.testing.assert_allclose(ours, ref, atol=1e-5, err_msg=f"{method} {size} {box}")


@pytest.mark.parametrize("method", list(PIL_METHOD))
def test_resize_uint8_matches_pil_exactly(method):
    """Pillow's 8-bit fixed point (int coefficients, rounding + clipping after each pass): bit-exact."""
    u = np.random.default_rng(1).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    for size, box in CASES:
        ref = pil_resize(u, size, method, box)
        ours = np.asarray(io.resize(jnp.asarray(u)[None], size, method, box))[0]
        assert ours.dtype == np.uint8
        np.testing.assert_array_equal(ours, ref, err_msg=f"{method} {size} {box}")


def test_nearest_to_512_as_the_authors():
    """Image.resize((512, 512), NEAREST) on inputs smaller and larger than 512: exact."""
    for h, w in [(300, 460), (1024, 768), (512, 512)]:
        u = natural(h, w, h + w)
        ref = pil_resize(u, (512, 512), "nearest")
        ours = np.asarray(io.resize(jnp.asarray(u)[None], (512, 512), "nearest"))[0]
        np.testing.assert_array_equal(ours, ref)


def test_siglip_matches_transformers_pil_processor():
    """FLUX Redux's SiglipImageProcessor (PIL backend, 384 bicubic, mean/std 0.5).

    uint8 inputs: exact up to float32 rounding (measured 1.2e-7). Float inputs in [0, 1] with
    the float resize (clipped per pass, no rounding): measured max 0.0084 after normalization
    (~1.1 gray levels), mean 0.0024; asserted max <= 4/255, mean <= 0.004.
    """
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

    proc = SiglipImageProcessorPil(
        size={"height": 384, "width": 384}, resample=3, image_mean=[0.5] * 3, image_std=[0.5] * 3
    )
    for h, w in [(300, 460), (512, 512)]:
        img = np.stack([natural(h, w, 7), natural(h, w, 8)])
        ref = proc(images=list(img), return_tensors="np")["pixel_values"].transpose(0, 2, 3, 1)
        ours = np.asarray(io.siglip_preprocess(jnp.asarray(img)))
        assert ours.shape == (2, 384, 384, 3) and ours.dtype == np.float32
        np.testing.assert_allclose(ours, ref, atol=1e-6, rtol=0)
        # the same pixels given as floats in [0, 1] with emulate_uint8 -> still exact
        ours01 = np.asarray(io.siglip_preprocess(jnp.asarray(img, jnp.float32) / 255, emulate_uint8=True))
        np.testing.assert_allclose(ours01, ref, atol=1e-6, rtol=0)
        flt = np.asarray(io.siglip_preprocess(jnp.asarray(img, jnp.float32) / 255))
        d = np.abs(flt - ref)
        assert d.max() <= 2 / 255 * 2 and d.mean() <= 0.004, (d.max(), d.mean())


@pytest.mark.parametrize(
    "fn,size,mean,std",
    [
        (lambda x, box=None, **kw: io.preprocess(x, (224, 224), io.CLIP_MEAN, io.CLIP_STD, box, **kw), 224, io.CLIP_MEAN, io.CLIP_STD),
        (io.dino_preprocess, 224, io.IMAGENET_MEAN, io.IMAGENET_STD),
    ],
)
def test_clip_dino_preprocess_match_pil(fn, size, mean, std):
    """Direct bicubic resize to 224x224 of the (optionally boxed) image, /255, normalize: as PIL + numpy."""
    img = natural(300, 460, 3)
    for box in [None, (40.5, 20.0, 400.25, 290.0)]:
        ref = pil_resize(img, (size, size), "bicubic", box).astype(np.float32) / 255
        ref = (ref - np.float32(mean)) / np.float32(std)
        ours = np.asarray(fn(jnp.asarray(img)[None], box))[0]
        np.testing.assert_allclose(ours, ref, atol=2e-6, rtol=0)


def test_per_image_boxes_and_jit():
    """Boxes (B, 4) as host data: per-image matrices, equal to PIL per image; jit without retracing per box."""
    imgs = np.stack([natural(120, 160, s) for s in range(3)])
    boxes = np.array([[0, 0, 160, 120], [10.5, 20.25, 90.0, 110.0], [50, 5, 155, 60]], np.float32)
    ref = np.stack([pil_resize(imgs[i], (48, 48), "bicubic", tuple(boxes[i].tolist())) for i in range(3)])
    batched = np.asarray(io.resize(jnp.asarray(imgs), (48, 48), "bicubic", boxes))
    np.testing.assert_array_equal(batched, ref)

    traces = []

    @jax.jit
    def crop_resize(x, wy, wx):
        traces.append(1)
        return io.apply_resize(x, wy, wx)

    for shift in (0.0, 3.0):
        moved = boxes + shift * np.array([1, 1, 0, 0], np.float32)
        wy, wx = io.box_matrices(moved, (120, 160), (48, 48))
        out = np.asarray(crop_resize(jnp.asarray(imgs), wy, wx))
        want = np.stack([pil_resize(imgs[i], (48, 48), "bicubic", tuple(moved[i].tolist())) for i in range(3)])
        np.testing.assert_array_equal(out, want)
    assert len(traces) == 1

    # per-image nearest boxes go through one-hot matrices: still exact
    ref_n = np.stack([pil_resize(imgs[i], (33, 21), "nearest", tuple(boxes[i].tolist())) for i in range(3)])
    np.testing.assert_array_equal(np.asarray(io.resize(jnp.asarray(imgs), (33, 21), "nearest", boxes)), ref_n)


def test_preprocess_is_jittable():
    img = jnp.asarray(natural(100, 140, 5))[None]
    eager = io.siglip_preprocess(img, (10, 10, 90, 80))
    jitted = jax.jit(lambda x: io.siglip_preprocess(x, (10, 10, 90, 80)))(img)
    np.testing.assert_allclose(np.asarray(jitted), np.asarray(eager), atol=1e-6)
    f = jnp.asarray(img, jnp.float32) / 255
    np.testing.assert_allclose(np.asarray(jax.jit(io.dino_preprocess)(f)), np.asarray(io.dino_preprocess(f)), atol=1e-6)


def test_to_uint8_matches_diffusers_numpy_to_pil():
    from diffusers.image_processor import VaeImageProcessor

    x = np.random.default_rng(2).random((2, 8, 9, 3)).astype(np.float32)
    x[0, 0, :, 0] = (np.arange(9) + 0.5) / 255  # exact .5 ties (round half to even, as numpy)
    x[0, 1, :3, 0] = [0.0, 1.0, 0.5]
    ref = np.stack([np.asarray(p) for p in VaeImageProcessor.numpy_to_pil(x)])
    np.testing.assert_array_equal(np.asarray(io.to_uint8(jnp.asarray(x))), ref)


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="unknown resize method"):
        io.resize_matrices((10, 10), (5, 5), "lanczos4")
    with pytest.raises(ValueError, match="box"):
        io.resize_matrices((10, 10), (5, 5), "bicubic", (0, 0, 5))
    with pytest.raises(ValueError, match="do not fit"):
        io.apply_resize(jnp.zeros((1, 10, 12, 3)), *io.resize_matrices((12, 10), (5, 5)))

"""Training the demo world's models with optax on `flax.nnx` training state.

Four loops, each a jitted `nnx.Optimizer` step over batches drawn fresh from the world
(objects.sample, seeded):
- `train_vae`: the autoencoder, L1 + MSE reconstruction of [-1, 1] images plus a small KL;
  then its latent scale and shift are set from the encoded world (as FLUX's VAE has them).
- `train_dinov2`: DINOv2 on augmentations, label-aware InfoNCE: two renderings of one object
  (other size, place, background) are positives, every other object a negative.
- `train_clip_bigg`: both CLIP bigG towers, the symmetric contrastive loss on (crop, the
  score's text "A  red circle .").
- `train_flux`: FLUX as a rectified flow on the VAE's scaled, packed latents, conditioned as
  Redux conditions it (the Redux tokens of ANOTHER rendering of the same object: variation, not
  copy) with y the CLIP-L pooled vector of the guidance prompt of the object's label; SigLIP,
  the Redux projector and CLIP-L train with it, end to end.
Each returns (model(s), losses per step). Everything is seeded: the same seed and steps give
the same weights on the same machine.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from vmdiff_jax.method.prompts import guidance_prompt, score_texts
from vmdiff_jax.method.sampling import image_ids, pack
from vmdiff_jax.nn import image_ops
from vmdiff_jax.nn.flux import Flux
from vmdiff_jax.nn.redux import ReduxEncoder, ReduxProjector
from vmdiff_jax.nn.tokenizer import CLIPTokenizer
from vmdiff_jax.nn.vae import AutoEncoder
from vmdiff_jax.nn.vit import CLIP, TextTransformer, VisionTransformer, dino_features
from vmdiff_jax.world import objects
from vmdiff_jax.world.configs import WorldConfigs

Log = Callable[[str], None]


@dataclasses.dataclass(frozen=True)
class Steps:
    """Optimizer steps of each loop (the shipped weights' recipe) and batch sizes."""

    vae: int = 600
    dinov2: int = 300
    clip_bigg: int = 400
    flux: int = 2000
    batch: int = 32


def _quiet(msg: str) -> None:
    pass


def _schedule(lr: float, steps: int) -> optax.Schedule:
    return optax.warmup_cosine_decay_schedule(0.0, lr, max(1, steps // 20), max(2, steps), lr * 0.05)


def _optimizer(model, lr: float, steps: int) -> nnx.Optimizer:
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(_schedule(lr, steps), weight_decay=1e-4))
    return nnx.Optimizer(model, tx, wrt=nnx.Param)


def _loop(name: str, steps: int, step_fn, batch_fn, log: Log) -> list[float]:
    losses, t0 = [], time.time()
    for i in range(steps):
        loss = float(step_fn(*batch_fn(i)))
        if not np.isfinite(loss):
            raise FloatingPointError(f"{name}: loss {loss} at step {i}")
        losses.append(loss)
        if i % max(1, steps // 10) == 0 or i == steps - 1:
            log(f"{name} step {i + 1}/{steps}: loss {np.mean(losses[-20:]):.4f} ({time.time() - t0:.0f} s)")
    return losses


def _to_signed(u8) -> jnp.ndarray:
    return jnp.asarray(u8, jnp.float32) / 127.5 - 1.0


# ----------------------------------------------------------------------------- data


def views(rng: np.random.Generator, n: int, size: int, zoom: bool = False):
    """n objects drawn twice with independent jitter: (view A, view B) uint8 (n, size, size, 3) and
    class ids (n,) (shape * 8 + color). zoom: radii up to 0.48, as the score's tight crops see them."""
    names = list(objects.COLORS)
    a, b, cls = [], [], []
    for _ in range(n):
        s, c = int(rng.integers(len(objects.SHAPES))), int(rng.integers(len(names)))
        for out in (a, b):
            o = objects.jittered(rng, objects.SHAPES[s], names[c])
            if zoom and rng.random() < 0.5:
                o = dataclasses.replace(o, radius=float(rng.uniform(0.34, 0.48)), center=(0.5, 0.5))
            out.append(objects.draw(o, size))
        cls.append(s * len(names) + c)
    return np.stack(a), np.stack(b), np.asarray(cls, np.int32)


def class_label(c: int) -> str:
    names = list(objects.COLORS)
    return f"{names[c % len(names)]} {objects.SHAPES[c // len(names)]}"


def _info_nce(za, zb, cls, temperature: float):
    """Label-aware InfoNCE between unit embeddings za, zb (n, E): every pair of one class a positive."""
    logits = za @ zb.T / temperature
    same = (cls[:, None] == cls[None, :]).astype(jnp.float32)
    target = same / same.sum(-1, keepdims=True)
    return 0.5 * (optax.softmax_cross_entropy(logits, target).mean()
                  + optax.softmax_cross_entropy(logits.T, target.T).mean())


# ----------------------------------------------------------------------------- VAE


def train_vae(cfg: WorldConfigs, steps: int, batch: int = 32, seed: int = 0, log: Log = _quiet):
    """The autoencoder of the world and its reconstruction losses; its cfg gets the world's latent
    scale (1 / std) and shift (mean) over 512 encoded images."""
    vae = AutoEncoder(cfg.vae, rngs=nnx.Rngs(seed))
    opt = _optimizer(vae, 2e-3, steps)
    rng = np.random.default_rng(seed)

    @nnx.jit
    def step(vae, opt, x, key):
        def loss_fn(vae):
            moments = vae.encoder(x)
            mean, logvar = jnp.split(moments, 2, axis=-1)
            logvar = jnp.clip(logvar, -30.0, 20.0)
            z = mean + jnp.exp(0.5 * logvar) * jax.random.normal(key, mean.shape)
            rec = vae.decoder(z)
            kl = 0.5 * jnp.mean(mean ** 2 + jnp.exp(logvar) - 1.0 - logvar)
            return jnp.mean(jnp.abs(rec - x)) + jnp.mean((rec - x) ** 2) + 1e-4 * kl

        loss, grads = nnx.value_and_grad(loss_fn)(vae)
        opt.update(vae, grads)
        return loss

    key = jax.random.key(seed)
    losses = _loop("vae", steps, lambda x, k: step(vae, opt, x, k),
                   lambda i: (_to_signed(objects.sample(int(rng.integers(2 ** 31)), batch)[0]), jax.random.fold_in(key, i)),
                   log)
    z = jnp.concatenate([nnx.jit(lambda m, x: m.encode(x))(vae, _to_signed(objects.sample(10_000 + k, 64)[0]))
                         for k in range(8)])
    mean, std = float(jnp.mean(z)), float(jnp.std(z))
    vae.cfg = dataclasses.replace(cfg.vae, scale_factor=round(1.0 / std, 6), shift_factor=round(mean, 6))
    log(f"vae latents: mean {mean:.4f}, std {std:.4f}")
    return vae, losses


# ----------------------------------------------------------------------------- scorers


def train_dinov2(cfg: WorldConfigs, steps: int, batch: int = 32, seed: int = 0, log: Log = _quiet):
    """DINOv2 trained on augmentations (label-aware InfoNCE at temperature 0.1 on its features)."""
    model = VisionTransformer(cfg.dinov2, rngs=nnx.Rngs(seed + 1))
    opt = _optimizer(model, 1e-3, steps)
    rng = np.random.default_rng(seed + 1)

    @nnx.jit
    def step(model, opt, a, b, cls):
        def loss_fn(model):
            f = dino_features(model, image_ops.dino_preprocess(jnp.concatenate([a, b])))
            f = f / jnp.linalg.norm(f, axis=-1, keepdims=True)
            return _info_nce(f[: a.shape[0]], f[a.shape[0]:], cls, 0.1)

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        opt.update(model, grads)
        return loss

    losses = _loop("dinov2", steps, lambda a, b, c: step(model, opt, a, b, c),
                   lambda i: views(rng, batch, objects.SIZE, zoom=True), log)
    return model, losses


def train_clip_bigg(cfg: WorldConfigs, tokenizer: CLIPTokenizer, steps: int, batch: int = 32, seed: int = 0,
                    log: Log = _quiet):
    """Both CLIP bigG towers, contrastive on (crop, "A  <label> .") at temperature 0.07."""
    model = CLIP(cfg.clip_bigg_vision, cfg.clip_bigg_text, rngs=nnx.Rngs(seed + 2))
    opt = _optimizer(model, 1e-3, steps)
    rng = np.random.default_rng(seed + 2)
    n_cls = len(objects.SHAPES) * len(objects.COLORS)
    text_ids = jnp.asarray(tokenizer(score_texts([class_label(c) for c in range(n_cls)]), pad_id=0))

    @nnx.jit
    def step(model, opt, images, cls):
        def loss_fn(model):
            x = image_ops.preprocess(images, (224, 224), image_ops.CLIP_MEAN, image_ops.CLIP_STD, emulate_uint8=False)
            zi = model.encode_image(x, normalize=True)
            zt = model.encode_text(text_ids[cls], normalize=True)
            return _info_nce(zi, zt, cls, 0.07)

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        opt.update(model, grads)
        return loss

    def data(i):
        a, _, cls = views(rng, batch, objects.SIZE, zoom=True)
        return a, cls

    losses = _loop("clip_bigg", steps, lambda a, c: step(model, opt, a, c), data, log)
    return model, losses


# ----------------------------------------------------------------------------- FLUX + conditioning


class Generator(nnx.Module):
    """What FLUX training updates together: FLUX, the Redux encoder (SigLIP + projector), CLIP-L."""

    def __init__(self, cfg: WorldConfigs, seed: int):
        rngs = nnx.Rngs(seed + 3)
        self.flux = Flux(cfg.flux, rngs=rngs)
        self.redux = ReduxEncoder(VisionTransformer(cfg.siglip, rngs=rngs),
                                  ReduxProjector(cfg.siglip.width, cfg.flux.context_in_dim, rngs=rngs))
        self.clip_l = TextTransformer(cfg.clip_l, rngs=rngs)


def flux_loss(gen: Generator, vae: AutoEncoder, target_u8, cond_u8, prompt_ids, key):
    """Rectified-flow loss of one batch: x_t = (1 - t) x0 + t eps, FLUX regresses eps - x0 with t
    from a logit-normal(0, 1), context = Redux tokens of cond_u8, y = CLIP-L pooled prompt."""
    b = target_u8.shape[0]
    z = jax.lax.stop_gradient(vae.encode(_to_signed(target_u8)))
    x0 = pack((z - vae.cfg.shift_factor) * vae.cfg.scale_factor)
    k1, k2 = jax.random.split(key)
    t = jax.nn.sigmoid(jax.random.normal(k1, (b,)))
    eps = jax.random.normal(k2, x0.shape)
    xt = (1.0 - t[:, None, None]) * x0 + t[:, None, None] * eps
    ctx = gen.redux.encode_images(cond_u8)
    y = gen.clip_l(prompt_ids)[1]
    h = z.shape[1]
    img_ids = jnp.broadcast_to(jnp.asarray(image_ids(h, h)), (b, x0.shape[1], 3))
    txt_ids = jnp.zeros((b, ctx.shape[1], 3), jnp.float32)
    v = gen.flux(xt, img_ids, ctx, txt_ids, t, y)
    return jnp.mean((v - (eps - x0)) ** 2)


def train_flux(cfg: WorldConfigs, vae: AutoEncoder, tokenizer: CLIPTokenizer, steps: int, batch: int = 32,
               seed: int = 0, log: Log = _quiet):
    """FLUX + Redux encoder + CLIP-L (a `Generator`) trained as an image-variation rectified flow."""
    gen = Generator(cfg, seed)
    opt = _optimizer(gen, 1e-3, steps)
    rng = np.random.default_rng(seed + 3)
    n_cls = len(objects.SHAPES) * len(objects.COLORS)
    prompts = jnp.asarray(tokenizer([guidance_prompt(class_label(c), class_label(c)) for c in range(n_cls)]))

    @nnx.jit
    def step(gen, opt, vae, target, cond, ids, key):
        loss, grads = nnx.value_and_grad(flux_loss)(gen, vae, target, cond, ids, key)
        opt.update(gen, grads)
        return loss

    key = jax.random.key(seed + 3)

    def data(i):
        a, b, cls = views(rng, batch, objects.SIZE)
        return a, b, cls, jax.random.fold_in(key, i)

    losses = _loop("flux", steps, lambda a, b, c, k: step(gen, opt, vae, a, b, prompts[c], k), data, log)
    return gen, losses

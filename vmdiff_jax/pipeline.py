"""VMDiff end to end: condition, BNoise, MDeNoise, score, EAA search.

`VMDiff(models, ...)` holds the seven networks split into (graphdef, state) once, and
four jitted pure functions: `blend` (BNoise for a batch of beta pairs), `mix` (MDeNoise +
decode for a batch of alphas), `features` (DINOv2 + CLIP bigG on cropped candidates) and
the conditioning encoders. Each compiles once per shape: candidates are evaluated in chunks
of a fixed size (padded), so search rounds never recompile. With several devices the
candidates of a chunk are sharded over the mesh's 'data' axis.
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vmdiff_jax import hsp, image_ops, score as score_lib, search, sharding
from vmdiff_jax.clip_tokenizer import CLIPTokenizer
from vmdiff_jax.locator import DinoForegroundLocator, WholeImage, boxes_or_whole
from vmdiff_jax.vit import dino_features, dinov2

PROMPT = "A photo of {} creatively fused with {}."
CLIP_TEXT = "A  {} ."  # the score's text, as REFERENCE.md gives it (two spaces)


def enable_compilation_cache(path: str | os.PathLike | None = None) -> None:
    """Switch on JAX's persistent compilation cache (default ~/.cache/vmdiff_jax/xla)."""
    path = Path(path or os.environ.get("VMDIFF_JAX_CACHE", Path.home() / ".cache" / "vmdiff_jax" / "xla"))
    try:
        path.mkdir(parents=True, exist_ok=True)
        jax.config.update("jax_compilation_cache_dir", str(path))
        if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:
            jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    except OSError:
        pass  # a read-only home: run without the cache


@dataclasses.dataclass
class Models:
    """The networks of VMDiff (Flax NNX modules) and the two tokenizers."""

    flux: Any
    vae: Any
    clip_text: Any
    tokenizer: CLIPTokenizer
    redux: Any  # ReduxEncoder: SigLIP + projector
    dino: Any
    bigg: Any  # CLIP: encode_image / encode_text
    bigg_tokenizer: CLIPTokenizer


@dataclasses.dataclass
class FusionResult:
    """The best fused image found and how it was found.

    image uint8 (S, S, 3); beta (b1, b2); subscores {S, d1, d2, n1, n2, c1, c2}; calls:
    image-model-calls (a batch of n counts n); rounds: sequential model batches; trajectory:
    every candidate's parameters and sub-scores; thumbs: a small image per candidate.
    """

    image: np.ndarray
    alpha: float
    beta: tuple[float, float]
    score: float
    subscores: dict
    calls: int
    rounds: int
    accepted: bool
    trajectory: list
    timings: dict
    labels: tuple[str, str]
    seed: int | None  # None when fused from an explicit PRNG key
    schedule: str
    settings: dict
    thumbs: list = dataclasses.field(default_factory=list, repr=False)

    def report(self, extra: dict | None = None) -> dict:
        from vmdiff_jax.report import REPORT_SCHEMA_VERSION, versions

        sub = {k: float(v) for k, v in self.subscores.items()}
        return {
            "schema": REPORT_SCHEMA_VERSION,
            "labels": list(self.labels),
            "prompt": PROMPT.format(*self.labels),
            "seed": self.seed,
            "schedule": self.schedule,
            "parameters": {"alpha": float(self.alpha), "beta1": float(self.beta[0]), "beta2": float(self.beta[1])},
            "score": float(self.score),
            "subscores": sub,
            "b_sim": float(score_lib.b_sim(sub["d1"], sub["d2"], sub["n1"], sub["n2"])),
            "accepted": bool(self.accepted),
            "calls": int(self.calls),
            "rounds": int(self.rounds),
            "timings": {k: float(v) for k, v in self.timings.items()},
            "settings": self.settings,
            "trajectory": [{k: (float(v) if isinstance(v, (float, np.floating)) else v) for k, v in t.items()} for t in self.trajectory],
            "versions": versions(),
            **(extra or {}),
        }

    def figure(self):
        from vmdiff_jax.report import search_figure

        return search_figure(self.trajectory, self.thumbs)

    def save(self, out: str | os.PathLike, extra: dict | None = None) -> None:
        """fused.png, search.png and report.json (last, so its presence marks a complete result)."""
        from vmdiff_jax.report import write_outputs

        write_outputs(Path(out), self.image, self.report(extra), self.figure())


def _split(module):
    return nnx.split(module)


class VMDiff:
    """The VMDiff pipeline over loaded models (see `from_pretrained`, `demo`)."""

    def __init__(self, models: Models, hsp_cfg: hsp.HSPConfig = hsp.HSPConfig(), eaa_cfg: search.EAAConfig | None = None,
                 locator: str | Any = "dino", mesh: jax.sharding.Mesh | None = None, label: str = "pretrained",
                 score_text: str = "paper"):
        self.models = models
        self.cfg = hsp_cfg
        den = hsp_cfg.den_stop
        self.eaa_cfg = eaa_cfg or search.EAAConfig()
        self.eaa_cfg = dataclasses.replace(self.eaa_cfg, bnoise_calls=2 * den, mdenoise_calls=hsp_cfg.num_steps)
        self.label = label
        self._locator_spec = locator
        if score_text not in ("paper", "authors"):
            raise ValueError(f"score_text must be 'paper' or 'authors', got {score_text!r}")
        self.score_text = score_text
        if mesh is None and len(jax.local_devices()) > 1:
            mesh = sharding.make_mesh(devices=jax.local_devices())
        self.mesh = mesh
        flux_def, flux_state = _split(models.flux)
        self.param_dtype = str(jax.tree.leaves(flux_state)[0].dtype)
        vae_def, vae_state = _split(models.vae)
        dino_def, dino_state = _split(models.dino)
        bigg_def, bigg_state = _split(models.bigg)
        redux_def, redux_state = _split(models.redux)
        text_def, text_state = _split(models.clip_text)
        if mesh is not None:  # replicated over 'data'; FSDP over 'fsdp' when the mesh has it (sharding.param_spec)
            flux_state, vae_state, dino_state, bigg_state = (
                sharding.place_state(st, mesh) for st in (flux_state, vae_state, dino_state, bigg_state))
        self._states = dict(flux=flux_state, vae=vae_state, dino=dino_state, bigg=bigg_state, redux=redux_state, text=text_state)
        cfg = hsp_cfg

        @jax.jit
        def blend(flux_state, eps, c1, c2, betas, y):
            return hsp.blend_candidates(nnx.merge(flux_def, flux_state), cfg, eps, c1, c2, betas, y)

        @jax.jit
        def mix(flux_state, vae_state, eps_b, c1, c2, alphas, y):
            imgs = hsp.mix_candidates(nnx.merge(flux_def, flux_state), nnx.merge(vae_def, vae_state), cfg, eps_b, c1, c2, alphas, y)
            return image_ops.to_uint8(imgs)

        @jax.jit
        def features(dino_state, bigg_state, images_u8, wy, wx):
            # DINOv2 and CLIP both see the crop resized to 224 x 224 (bicubic, Pillow's 8-bit path); only the normalization differs
            crop = image_ops.apply_resize(images_u8, wy, wx).astype(jnp.float32) / 255.0
            d_in = image_ops.normalize(crop, image_ops.IMAGENET_MEAN, image_ops.IMAGENET_STD)
            c_in = image_ops.normalize(crop, image_ops.CLIP_MEAN, image_ops.CLIP_STD)
            bigg = nnx.merge(bigg_def, bigg_state)
            return dino_features(nnx.merge(dino_def, dino_state), d_in), bigg.encode_image(c_in, normalize=True)

        @jax.jit
        def dino_patches(dino_state, images_u8):
            x = image_ops.dino_preprocess(images_u8)
            return dinov2(nnx.merge(dino_def, dino_state), x)[:, 1:]

        @jax.jit
        def condition(redux_state, images_u8):
            return nnx.merge(redux_def, redux_state).encode_images(images_u8)

        @jax.jit
        def pooled(text_state, ids):
            return nnx.merge(text_def, text_state)(ids)[1]

        @jax.jit
        def text_embed(bigg_state, ids):
            return nnx.merge(bigg_def, bigg_state).encode_text(ids, normalize=True)

        self._jit = dict(blend=blend, mix=mix, features=features, dino_patches=dino_patches, condition=condition,
                         pooled=pooled, text_embed=text_embed)
        if locator == "dino":
            self.locator = DinoForegroundLocator(lambda ims: dino_patches(self._states["dino"], jnp.asarray(ims)))
        elif locator == "whole":
            self.locator = WholeImage()
        elif locator == "grounding":
            from vmdiff_jax.grounding import GroundingDinoLocator

            self.locator = GroundingDinoLocator(os.environ.get("VMDIFF_GROUNDING_DINO", "weights/grounding_dino"))
        else:
            self.locator = locator

    # ------------------------------------------------------------------ construction

    def on_device(self, device: jax.Device) -> "VMDiff":
        """The same pipeline with its own copy of the parameters on one device (for running
        several pairs at once, one per device; the models must fit one device)."""
        return VMDiff(self.models, self.cfg, self.eaa_cfg, locator=self._locator_spec,
                      mesh=sharding.make_mesh(data=1, fsdp=1, devices=[device]), label=self.label,
                      score_text=self.score_text)

    @classmethod
    def from_pretrained(cls, weights: dict[str, Path], dtype: str = "auto", num_steps: int = 20, size: int = 512,
                        slerp_method: str = "slerp", locator: str = "dino", eaa_cfg: search.EAAConfig | None = None,
                        fsdp: int | str = "auto", score_text: str = "paper", attention: str | None = None) -> "VMDiff":
        """Load every model from the paths `weights.find_weights` returns. dtype 'auto': bf16 on
        accelerators, float32 on CPU (norm statistics, rope and timestep embeddings stay float32);
        'fp8': FLUX's block kernels float8 (quantized at load unless the file is fp8), the rest bf16.

        fsdp: size of the mesh's 'fsdp' axis over the local devices; 'auto' = 1 (replicated
        parameters, data parallelism over candidates) unless the FLUX transformer does not fit
        one device's memory, then the smallest power of two that fits it. The FLUX weights
        are placed shard by shard while streaming, never whole on one device.
        attention: FLUX's jax.nn.dot_product_attention implementation (None = XLA; 'cudnn' for
        cuDNN flash attention on NVIDIA GPUs with bf16).
        """
        from vmdiff_jax import checkpoints as enc
        from vmdiff_jax.checkpoints import load_flux, load_vae

        if dtype == "auto":
            dt = jnp.float32 if jax.default_backend() == "cpu" else jnp.bfloat16
        elif dtype == "fp8":  # FLUX's block kernels float8 + float32 scales, everything else bf16
            dt = jnp.bfloat16
        else:
            dt = jnp.dtype(dtype)
        flux_dt = "fp8" if dtype == "fp8" else dt
        mesh = None
        n_dev = len(jax.local_devices())
        if fsdp == "auto":
            fsdp = sharding.auto_fsdp(weights["flux"], flux_dt, n_dev)
        if n_dev > 1 or fsdp > 1:
            mesh = sharding.make_mesh(data=n_dev // int(fsdp), fsdp=int(fsdp), devices=jax.local_devices())
        models = Models(
            flux=load_flux(weights["flux"], dtype=flux_dt, sharding=sharding.param_sharding_fn(mesh) if mesh is not None else None,
                           attention_impl=attention),
            vae=load_vae(weights["vae"], dtype=dt),
            clip_text=enc.load_clip_text(weights["text_encoder"], dtype=dt),
            tokenizer=CLIPTokenizer.from_folder(weights["tokenizer"]),
            redux=enc.load_redux(weights["redux"], weights["siglip"], dtype=dt),
            dino=enc.load_dinov2(weights["dinov2"], dtype=dt),
            bigg=enc.load_clip_bigg(weights["clip_bigg"], dtype=dt),
            bigg_tokenizer=CLIPTokenizer.from_folder(_tokenizer_dir(weights["clip_bigg"])),
        )
        return cls(models, hsp.HSPConfig(num_steps=num_steps, size=size, slerp_method=slerp_method), eaa_cfg,
                   locator=locator, mesh=mesh, score_text=score_text)

    @classmethod
    def demo(cls, seed: int = 0, num_steps: int = 20, size: int = 128, slerp_method: str = "slerp",
             eaa_cfg: search.EAAConfig | None = None, locator: str = "dino", score_text: str = "paper") -> "VMDiff":
        """Tiny random-weight models with the real architecture and wiring (RANDOM WEIGHTS: the
        images are noise-like; this proves the machinery, not the method's quality)."""
        from vmdiff_jax.demo import demo_models

        return cls(demo_models(seed), hsp.HSPConfig(num_steps=num_steps, size=size, slerp_method=slerp_method),
                   eaa_cfg, locator=locator, label="demo (tiny random weights)", score_text=score_text)

    # ------------------------------------------------------------------ pieces

    def condition(self, images_u8: np.ndarray) -> jax.Array:
        """Redux tokens (B, 729, D) of uint8 images (B, S, S, 3)."""
        return self._jit["condition"](self._states["redux"], jnp.asarray(images_u8))

    def pooled_prompt(self, label1: str, label2: str) -> jax.Array:
        """CLIP-L pooled vector (Dy,) of the guidance prompt."""
        ids = self.models.tokenizer([PROMPT.format(label1, label2)])
        return self._jit["pooled"](self._states["text"], jnp.asarray(ids))[0]

    def text_embeddings(self, labels: Sequence[str]) -> jax.Array:
        """Normalized CLIP bigG text embeddings (n, E) of "A  {label} ." (open_clip pads with 0).

        score_text="authors" reproduces the authors' code, which tokenizes the repr of a
        one-element list ("['A  cat .']") instead of the sentence."""
        texts = [CLIP_TEXT.format(l) for l in labels]
        if self.score_text == "authors":
            texts = [str([t]) for t in texts]
        ids = self.models.bigg_tokenizer(texts, pad_id=0)
        return self._jit["text_embed"](self._states["bigg"], jnp.asarray(ids))

    def features(self, images_u8: np.ndarray) -> tuple[jax.Array, jax.Array]:
        """DINOv2 features (n, 768) and normalized CLIP bigG image embeddings (n, E) of the
        located object's crop of each uint8 image (n, S, S, 3)."""
        images_u8 = np.asarray(images_u8)
        boxes = boxes_or_whole(self.locator, images_u8)
        hw = images_u8.shape[1:3]
        wy, wx = image_ops.box_matrices(boxes, hw, (224, 224))
        return self._jit["features"](self._states["dino"], self._states["bigg"], jnp.asarray(images_u8), wy, wx)

    def compile_counts(self) -> dict[str, int]:
        """How many executables each jitted function holds (one per input shape)."""
        return {k: f._cache_size() for k, f in self._jit.items()}

    # ------------------------------------------------------------------ fusion

    def fuse(self, img1: np.ndarray, img2: np.ndarray, label1: str, label2: str, key: jax.Array | int | None = None, *,
             seed: int | None = None, schedule: str = "paper", batch: int = 1, progress: bool = False) -> FusionResult:
        """Fuse two uint8 (S, S, 3) images: EAA search over (alpha, beta, eps) of BNoise + MDeNoise.

        key: the PRNG key of the noise (eps of outer round k = normal(fold_in(key, k))); an int
        (or `seed=`) is taken as jax.random.key(seed). Same key, same device: bit-identical image.
        """
        if key is None:
            key = 0 if seed is None else seed
        if isinstance(key, (int, np.integer)):
            seed, key = int(key), jax.random.key(int(key))
        else:
            seed = None
        t0 = time.perf_counter()
        size = self.cfg.size
        for im in (img1, img2):
            if im.shape != (size, size, 3):
                raise ValueError(f"images must be ({size}, {size}, 3) uint8, got {im.shape}")
        pair = np.stack([img1, img2]).astype(np.uint8)
        c = self.condition(pair)
        y = self.pooled_prompt(label1, label2)
        ref_dino, _ = self.features(pair)
        text = self.text_embeddings([label1, label2])
        jax.block_until_ready((c, y, ref_dino, text))
        t_cond = time.perf_counter() - t0
        # candidates per compiled call: the paper schedule's batch; the authors' loop generates 2 per step
        per_call = max(batch, 2) if schedule == "authors" else batch
        problem = _Problem(self, c[0], c[1], y, ref_dino, text, key, per_call, progress)
        cfg = dataclasses.replace(self.eaa_cfg, batch=batch)
        res = search.eaa(problem, cfg, schedule=schedule)
        problem.close()
        total = time.perf_counter() - t0
        return FusionResult(
            image=np.asarray(res.payload, np.uint8), alpha=float(res.alpha), beta=(float(res.beta[0]), float(res.beta[1])),
            score=float(res.score), subscores=dict(res.subscores), calls=int(res.calls), rounds=int(res.rounds),
            accepted=bool(res.accepted), trajectory=list(res.trajectory),
            timings={"total_s": total, "conditioning_s": t_cond, "search_s": res.wall_time,
                     "model_s": problem.model_time},
            labels=(label1, label2), seed=seed, schedule=schedule,
            settings={"models": self.label, "dtype": self.param_dtype, "steps": self.cfg.num_steps, "size": size, "den_stop": self.cfg.den_stop,
                      "guidance": [self.cfg.den_guidance, self.cfg.inv_guidance, self.cfg.gen_guidance],
                      "slerp": self.cfg.slerp_method, "score_text": self.score_text, "batch": batch, "devices": len(jax.local_devices()),
                      "eaa": {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(cfg).items()}},
            thumbs=problem.thumbs,
        )

    def fuse_sequence(self, images: Sequence[np.ndarray], labels: Sequence[str], *, seed: int = 0, **kw) -> list[FusionResult]:
        """The paper's extension to more inputs: fuse 1 and 2, then the result with 3, and so on."""
        if len(images) < 2 or len(images) != len(labels):
            raise ValueError("need at least two images and one label per image")
        results = []
        cur, cur_label = images[0], labels[0]
        for i, (img, lab) in enumerate(zip(images[1:], labels[1:])):
            r = self.fuse(cur, img, cur_label, lab, seed=seed + i, **kw)
            results.append(r)
            cur, cur_label = r.image, f"{cur_label}-{lab} hybrid"
        return results


def _tokenizer_dir(path: Path) -> Path:
    """Folder holding vocab.json + merges.txt for a checkpoint folder or file."""
    path = Path(path)
    base = path if path.is_dir() else path.parent
    for cand in (base, base / "tokenizer"):
        if (cand / "vocab.json").exists() and (cand / "merges.txt").exists():
            return cand
    from vmdiff_jax.checkpoints.weights import MissingWeights

    raise MissingWeights(f"{base}: no tokenizer files (vocab.json + merges.txt) beside the CLIP bigG checkpoint")


class _Problem:
    """search.FusionProblem over the pipeline: chunks candidates to the fixed batch size."""

    def __init__(self, pipe: VMDiff, c1, c2, y, ref_dino, text, key, batch: int, progress: bool):
        self.pipe, self.c1, self.c2, self.y = pipe, c1, c2, y
        self.ref_dino, self.text, self.key = ref_dino, text, key
        data = pipe.mesh.shape[sharding.DATA] if pipe.mesh is not None else 1
        self.chunk = -(-batch // data) * data
        self.thumbs: list[np.ndarray] = []
        self.model_time = 0.0
        self.bar = None
        if progress:
            from tqdm import tqdm

            self.bar = tqdm(desc="VMDiff search", unit="call", dynamic_ncols=True)

    def close(self):
        if self.bar is not None:
            self.bar.close()

    def _tick(self, calls: int, what: str):
        if self.bar is not None:
            self.bar.set_postfix_str(what)
            self.bar.update(calls)

    def _put(self, x):
        if self.pipe.mesh is None:
            return jnp.asarray(x)
        return jax.device_put(np.asarray(x), sharding.candidates_sharding(self.pipe.mesh, np.ndim(x)))

    def noise(self, round_k: int):
        n = self.pipe.cfg.seq_len
        return jax.random.normal(jax.random.fold_in(self.key, round_k), (n, 64), jnp.float32)

    def blend(self, eps, betas):
        betas = np.asarray(betas, np.float32).reshape(-1, 2)
        outs = []
        t = time.perf_counter()
        for i in range(0, len(betas), self.chunk):
            part, n = sharding.pad_to_multiple(betas[i:i + self.chunk], self.chunk)
            out = self.pipe._jit["blend"](self.pipe._states["flux"], eps, self.c1, self.c2, self._put(part), self.y)
            outs.append(np.asarray(out)[:n])
            self._tick(n * self.pipe.eaa_cfg.bnoise_calls, f"BNoise beta={part[0].round(2).tolist()}")
        self.model_time += time.perf_counter() - t
        return np.concatenate(outs)

    def mix(self, eps_b, alphas):
        alphas = np.asarray(alphas, np.float32).reshape(-1)
        eps_b = np.asarray(eps_b, np.float32)
        if eps_b.ndim == 2:
            eps_b = eps_b[None]
        if eps_b.shape[0] == 1:  # one eps_b shared by every alpha
            eps_b = np.broadcast_to(eps_b, (len(alphas),) + eps_b.shape[1:])
        images = []
        t = time.perf_counter()
        for i in range(0, len(alphas), self.chunk):
            a, n = sharding.pad_to_multiple(alphas[i:i + self.chunk], self.chunk)
            e, _ = sharding.pad_to_multiple(eps_b[i:i + self.chunk], self.chunk)
            out = self.pipe._jit["mix"](self.pipe._states["flux"], self.pipe._states["vae"], self._put(e), self.c1, self.c2,
                                        self._put(a), self.y)
            images.append(np.asarray(out)[:n])
            self._tick(n * self.pipe.eaa_cfg.mdenoise_calls, f"MDeNoise alpha={float(a[0]):.4f}")
        images = np.concatenate(images)
        feats = []
        for i in range(0, len(images), self.chunk):
            part, n = sharding.pad_to_multiple(images[i:i + self.chunk], self.chunk)
            d, ce = self.pipe.features(part)
            feats.append((np.asarray(d)[:n], np.asarray(ce)[:n]))
        self.model_time += time.perf_counter() - t
        d = np.concatenate([f[0] for f in feats])
        ce = np.concatenate([f[1] for f in feats])
        sub = score_lib.subscores_from_features(d, np.asarray(self.ref_dino), ce, np.asarray(self.text))
        for im in images:
            self.thumbs.append(np.asarray(_thumb(im)))
        return search.Evaluation.from_subscores(sub, payload=list(images))


def _thumb(image: np.ndarray, side: int = 96) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(image).resize((side, side), Image.Resampling.BILINEAR))

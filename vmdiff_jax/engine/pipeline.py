"""VMDiff end to end: the models and the configs, and the batched calls the search asks for.

`VMDiff(models, ...)` holds the networks (split once into (graphdef, state), placed on the
mesh) and the configs. Its methods run the pure stages of `stages.py` on candidate rows that
may come from several pairs: `bnoise` (BNoise), `mdenoise` (MDeNoise + decode), `features`
(locate the object, DINOv2 + CLIP bigG on the crop), and the conditioning (`condition`,
`pooled_prompt`, `text_embeddings`). `backend.PipelineBackend` drives them for
`scheduler.run`; `fuse` is that same path for one pair.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from vmdiff_jax.method import hsp, search
from vmdiff_jax.nn import image_ops
from vmdiff_jax.engine import scheduler, sharding, stages
from vmdiff_jax.engine.pairs import PairInput, PipelineBackend
from vmdiff_jax.engine.demo import demo_models
from vmdiff_jax.engine.fusion_result import FusionResult
from vmdiff_jax.method.locators import DinoForegroundLocator, WholeImage, boxes_or_whole
from vmdiff_jax.engine.networks import Models, SplitModels, scorers_in_float32
from vmdiff_jax.method.prompts import SCORE_TEXT_MODES, guidance_prompt, score_texts

__all__ = ["VMDiff", "FusionResult", "Models", "enable_compilation_cache"]


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


class VMDiff:
    """The VMDiff pipeline over loaded models (see `from_pretrained`, `demo`).

    The scorers (DINOv2, CLIP bigG) are switched to float32 compute (models.scorers_in_float32).
    """

    def __init__(self, models: Models, hsp_cfg: hsp.HSPConfig = hsp.HSPConfig(), eaa_cfg: search.EAAConfig | None = None,
                 locator: str | Any = "dino", mesh: jax.sharding.Mesh | None = None, label: str = "pretrained",
                 score_text: str = "paper"):
        if score_text not in SCORE_TEXT_MODES:
            raise ValueError(f"score_text must be 'paper' or 'authors', got {score_text!r}")
        self.models = models
        self.cfg = hsp_cfg
        self.eaa_cfg = dataclasses.replace(eaa_cfg or search.EAAConfig(), bnoise_calls=2 * hsp_cfg.den_stop,
                                           mdenoise_calls=hsp_cfg.num_steps)
        self.label = label
        self.score_text = score_text
        if mesh is None and len(jax.local_devices()) > 1:
            mesh = sharding.make_mesh(devices=jax.local_devices())
        self.mesh = mesh
        # geometry from the models' own configs: packed channels = FLUX's in_channels = 4 x the VAE's latents
        self.channels = models.flux.cfg.in_channels
        if self.channels != 4 * models.vae.cfg.z_channels:
            raise ValueError(f"FLUX takes {self.channels} packed channels, the VAE gives 4 x {models.vae.cfg.z_channels}")
        self.seq_len = hsp.seq_len(hsp_cfg.size, models.vae.cfg.downsample_factor)
        scorers_in_float32(models)
        # replicated over 'data'; FSDP over 'fsdp' when the mesh has it (sharding.param_spec)
        place = (lambda st: sharding.place_state(st, mesh)) if mesh is not None else (lambda st: st)
        self.split = SplitModels.of(models, place)
        self.param_dtype = str(jax.tree.leaves(self.split.flux.state)[0].dtype)  # the compute dtype
        # how FLUX's weights are stored: "float8_e4m3fn" when its block linears are fp8
        self.flux_weights = "float8_e4m3fn" if any(x.dtype == jnp.float8_e4m3fn for x in jax.tree.leaves(
            self.split.flux.state)) else self.param_dtype
        if locator == "dino":
            self.locator = DinoForegroundLocator(lambda ims: stages.dino_patches(*self.split.dinov2, self.place_rows(ims)))
        elif locator == "whole":
            self.locator = WholeImage()
        elif locator == "grounding":
            from vmdiff_jax.method.grounding import GroundingDinoLocator

            self.locator = GroundingDinoLocator(os.environ.get("VMDIFF_GROUNDING_DINO", "weights/grounding_dino"))
        else:
            self.locator = locator

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_pretrained(cls, weights: dict[str, Path], dtype: str = "auto", num_steps: int = 20, size: int = 512,
                        slerp_method: str = "slerp", locator: str = "dino", eaa_cfg: search.EAAConfig | None = None,
                        fsdp: int | str = "auto", score_text: str = "paper", attention: str | None = None) -> "VMDiff":
        """Load every model from the paths `weights.find_weights` returns. dtype 'auto': bf16 on
        accelerators, float32 on CPU (norm statistics, rope and timestep embeddings stay float32;
        the scorers compute in float32 whatever their weights' dtype); 'fp8': FLUX's block kernels
        float8 (quantized at load unless the file is fp8), the rest bf16.

        fsdp: size of the mesh's 'fsdp' axis over the local devices; 'auto' = 1 (replicated
        parameters, data parallelism over candidates) unless the FLUX transformer does not fit
        one device's memory, then the smallest power of two that fits it. The FLUX weights
        are placed shard by shard while streaming, never whole on one device.
        attention: FLUX's jax.nn.dot_product_attention implementation (None = XLA; 'cudnn' for
        cuDNN flash attention on NVIDIA GPUs with bf16).
        """
        from vmdiff_jax.checkpoints import (load_clip_bigg, load_clip_l, load_dinov2, load_flux, load_redux,
                                            load_tokenizer, load_vae)

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
            clip_l=load_clip_l(weights["clip_l"], dtype=dt),
            clip_l_tokenizer=load_tokenizer(weights["clip_l_tokenizer"]),
            redux=load_redux(weights["redux"], weights["siglip"], dtype=dt),
            dinov2=load_dinov2(weights["dinov2"], dtype=dt),
            clip_bigg=load_clip_bigg(weights["clip_bigg"], dtype=dt),
            clip_bigg_tokenizer=load_tokenizer(weights["clip_bigg_tokenizer"]),
        )
        return cls(models, hsp.HSPConfig(num_steps=num_steps, size=size, slerp_method=slerp_method), eaa_cfg,
                   locator=locator, mesh=mesh, score_text=score_text)

    @classmethod
    def demo(cls, seed: int = 0, num_steps: int = 20, size: int = 128, slerp_method: str = "slerp",
             eaa_cfg: search.EAAConfig | None = None, locator: str = "dino", score_text: str = "paper",
             mesh: jax.sharding.Mesh | None = None) -> "VMDiff":
        """Tiny random-weight models with the real architecture and wiring (RANDOM WEIGHTS: the
        images are noise-like; this proves the machinery, not the method's quality)."""
        return cls(demo_models(seed), hsp.HSPConfig(num_steps=num_steps, size=size, slerp_method=slerp_method),
                   eaa_cfg, locator=locator, mesh=mesh, label="demo (tiny random weights)", score_text=score_text)

    # ------------------------------------------------------------------ placement

    @property
    def data(self) -> int:
        """Size of the mesh's 'data' axis (1 without a mesh): candidate batches are multiples of it."""
        return self.mesh.shape[sharding.DATA] if self.mesh is not None else 1

    def place_rows(self, x) -> jax.Array:
        """A batch of rows (n, ...) as a device array, split over the mesh's 'data' axis (n a multiple of `data`)."""
        if self.mesh is None:
            return jnp.asarray(x)
        return jax.device_put(np.asarray(x), sharding.candidates_sharding(self.mesh, np.ndim(x)))

    # ------------------------------------------------------------------ conditioning

    def condition(self, images_u8: np.ndarray) -> jax.Array:
        """Redux tokens (B, L, D) of uint8 images (B, S, S, 3)."""
        return stages.condition(*self.split.redux, jnp.asarray(images_u8))

    def pooled_prompt(self, label1: str, label2: str) -> jax.Array:
        """CLIP-L pooled vector (Dy,) of the guidance prompt."""
        ids = self.models.clip_l_tokenizer([guidance_prompt(label1, label2)])
        return stages.pooled_text(*self.split.clip_l, jnp.asarray(ids))[0]

    def text_embeddings(self, labels: Sequence[str]) -> jax.Array:
        """Unit CLIP bigG text embeddings (n, E) of the score's texts (prompts.score_texts; open_clip pads with 0)."""
        ids = self.models.clip_bigg_tokenizer(score_texts(labels, self.score_text), pad_id=0)
        return stages.text_embed(*self.split.clip_bigg, jnp.asarray(ids))

    def noise(self, key: jax.Array, round_k: int) -> jax.Array:
        """eps of outer round k: standard normal (N, C) float32 from fold_in(key, k)."""
        return jax.random.normal(jax.random.fold_in(key, round_k), (self.seq_len, self.channels), jnp.float32)

    # ------------------------------------------------------------------ candidate batches

    def bnoise(self, eps, c1, c2, betas, y) -> jax.Array:
        """BNoise of n candidate rows (n a multiple of `data`): eps (n, N, C), c1, c2 (n, L, D),
        betas (n, 2), y (n, Dy) -> eps_b (n, N, C) float32, split over 'data'."""
        rows = [self.place_rows(x) for x in (eps, c1, c2, betas, y)]
        return stages.bnoise(*self.split.flux, *rows, cfg=self.cfg)

    def mdenoise(self, eps_b, c1, c2, alphas, y) -> jax.Array:
        """MDeNoise + decode of n candidate rows (n a multiple of `data`): eps_b (n, N, C),
        c1, c2 (n, L, D), alphas (n,), y (n, Dy) -> uint8 images (n, S, S, 3)."""
        rows = [self.place_rows(x) for x in (eps_b, c1, c2, alphas, y)]
        return stages.mdenoise(*self.split.flux, *self.split.vae, *rows, cfg=self.cfg)

    def features(self, images_u8: np.ndarray) -> tuple[jax.Array, jax.Array]:
        """DINOv2 features (n, Dd) and unit CLIP bigG image embeddings (n, E) of the located
        object's crop of each uint8 image (n, S, S, 3) (run padded to a multiple of `data`)."""
        images_u8, n = sharding.pad_to_multiple(np.asarray(images_u8), self.data)
        boxes = boxes_or_whole(self.locator, images_u8)
        wy, wx = image_ops.box_matrices(boxes, images_u8.shape[1:3], (224, 224))
        d, e = stages.features(*self.split.dinov2, *self.split.clip_bigg, self.place_rows(images_u8),
                               self.place_rows(wy), self.place_rows(wx))
        return d[:n], e[:n]

    @staticmethod
    def compile_counts() -> dict[str, int]:
        """Compilations (traces) of each stage in this process so far (stages.traces)."""
        return stages.traces()

    def settings(self, batch: int, eaa_cfg: search.EAAConfig) -> dict:
        """The settings block of a report."""
        return {"models": self.label, "dtype": self.param_dtype, "flux_weights": self.flux_weights, "steps": self.cfg.num_steps, "size": self.cfg.size,
                "den_stop": self.cfg.den_stop,
                "guidance": [self.cfg.den_guidance, self.cfg.inv_guidance, self.cfg.gen_guidance],
                "slerp": self.cfg.slerp_method, "score_text": self.score_text, "batch": batch,
                "devices": len(jax.local_devices()),
                "eaa": {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(eaa_cfg).items()}}

    # ------------------------------------------------------------------ fusion

    def fuse(self, img1: np.ndarray, img2: np.ndarray, label1: str, label2: str, key: jax.Array | int | None = None, *,
             seed: int | None = None, schedule: str = "paper", batch: int = 1, progress: bool = False) -> FusionResult:
        """Fuse two uint8 (S, S, 3) images: EAA search over (alpha, beta, eps) of BNoise + MDeNoise.

        key: the PRNG key of the noise (eps of outer round k = normal(fold_in(key, k))); an int
        (or `seed=`) is taken as jax.random.key(seed). Same key, same device: bit-identical image.
        Runs `scheduler.run` over one pair with `backend.PipelineBackend`, the path of `vmdiff batch`.
        """
        if key is None:
            key = 0 if seed is None else seed
        if isinstance(key, (int, np.integer)):
            seed, key = int(key), jax.random.key(int(key))
        else:
            seed = None
        size = self.cfg.size
        for im in (img1, img2):
            if im.shape != (size, size, 3):
                raise ValueError(f"images must be ({size}, {size}, 3) uint8, got {im.shape}")
        pair = PairInput(np.asarray(img1, np.uint8), np.asarray(img2, np.uint8), label1, label2, key, seed)
        results: dict = {}
        backend = PipelineBackend(self, lambda _: pair, results.__setitem__, schedule=schedule, batch=batch,
                                  progress=progress)
        try:
            # every call padded to a multiple of the request size (batch; the authors' pairs: 2) and of
            # the 'data' axis, so one pair's calls have the same shapes on every mesh
            per_call = max(batch, 2) if schedule == "authors" else batch
            scheduler.run([0], backend, dataclasses.replace(self.eaa_cfg, batch=batch), schedule=schedule,
                          pairs_per_call=1, multiple=-(-per_call // self.data) * self.data)
        finally:
            backend.close()
        return results[0]

    def fuse_sequence(self, images: Sequence[np.ndarray], labels: Sequence[str], *, seed: int = 0, **kw) -> list[FusionResult]:
        """The paper's extension to more inputs, done greedily: fuse images[0] and images[1] with
        seed, then fuse that result's image (labelled "{label1}-{label2} hybrid") with images[2]
        with seed + 1, and so on; each step is one full `fuse` (its own EAA search; `kw` goes to
        every step). Returns the len(images) - 1 step results; the last one's image is the
        fusion of all inputs."""
        if len(images) < 2 or len(images) != len(labels):
            raise ValueError("need at least two images and one label per image")
        results = []
        cur, cur_label = images[0], labels[0]
        for i, (img, lab) in enumerate(zip(images[1:], labels[1:])):
            r = self.fuse(cur, img, cur_label, lab, seed=seed + i, **kw)
            results.append(r)
            cur, cur_label = r.image, f"{cur_label}-{lab} hybrid"
        return results


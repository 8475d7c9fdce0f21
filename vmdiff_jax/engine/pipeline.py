"""VMDiff end to end: `VMDiff` is a `runner.StageRunner` (the networks placed on the mesh and
the batched stage calls) plus the search's config, the constructors (`from_pretrained`,
`demo`) and the entry points: `run_pairs` searches many pairs through `scheduler.run` with a
`pairs.PipelineBackend` (what `vmdiff batch` runs), `fuse` is that path for one pair,
`fuse_many` for K >= 2 objects at once (order-invariant: simplex.py), and `fuse_sequence` the
paper's sequential extension to more inputs (pairwise, order-dependent).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Callable, Hashable, Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from vmdiff_jax.engine import fsdp_auto, scheduler, sharding
from vmdiff_jax.engine.demo import demo_models, world_weights
from vmdiff_jax.engine.fusion_result import FusionResult
from vmdiff_jax.engine.networks import Models
from vmdiff_jax.engine.pairs import FusionInput, PipelineBackend
from vmdiff_jax.engine.runner import StageRunner
from vmdiff_jax.method import hsp, search
from vmdiff_jax.nn import checks

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


def load_models(weights: dict[str, Path], dtype, flux_dtype, mesh: jax.sharding.Mesh | None = None,
                attention: str | None = None) -> Models:
    """`Models` from the checkpoint paths `weights.find_weights` gives: FLUX in flux_dtype (a dtype
    or 'fp8'; streamed shard by shard onto `mesh` when given), the rest in dtype."""
    from vmdiff_jax.checkpoints import (load_clip_bigg, load_clip_l, load_dinov2, load_flux, load_redux,
                                        load_tokenizer, load_vae)

    return Models(
        flux=load_flux(weights["flux"], dtype=flux_dtype,
                       sharding=sharding.param_sharding_fn(mesh) if mesh is not None else None, attention_impl=attention),
        vae=load_vae(weights["vae"], dtype=dtype),
        clip_l=load_clip_l(weights["clip_l"], dtype=dtype),
        clip_l_tokenizer=load_tokenizer(weights["clip_l_tokenizer"]),
        redux=load_redux(weights["redux"], weights["siglip"], dtype=dtype),
        dinov2=load_dinov2(weights["dinov2"], dtype=dtype),
        clip_bigg=load_clip_bigg(weights["clip_bigg"], dtype=dtype),
        clip_bigg_tokenizer=load_tokenizer(weights["clip_bigg_tokenizer"]),
    )


class VMDiff(StageRunner):
    """The VMDiff pipeline over loaded models (see `from_pretrained`, `demo`): a StageRunner
    (runner.py: the networks, the mesh, the batched stages) with the EAA search's config."""

    def __init__(self, models: Models, hsp_cfg: hsp.HSPConfig = hsp.HSPConfig(), eaa_cfg: search.EAAConfig | None = None,
                 locator: str | Any = "dino", mesh: jax.sharding.Mesh | None = None, label: str = "pretrained",
                 score_text: str = "paper"):
        super().__init__(models, hsp_cfg, locator=locator, mesh=mesh, score_text=score_text)
        self.eaa_cfg = eaa_cfg or search.EAAConfig()
        self.label = label

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
            fsdp = fsdp_auto.auto_fsdp(weights["flux"], flux_dt, n_dev, weights=weights, other_dtype=dt,
                                       attention=attention, cfg=hsp.HSPConfig(num_steps=num_steps, size=size))
        if n_dev > 1 or fsdp > 1:
            mesh = sharding.make_mesh(data=n_dev // int(fsdp), fsdp=int(fsdp), devices=jax.local_devices())
        models = load_models(weights, dt, flux_dt, mesh, attention)
        return cls(models, hsp.HSPConfig(num_steps=num_steps, size=size, slerp_method=slerp_method), eaa_cfg,
                   locator=locator, mesh=mesh, score_text=score_text)

    @classmethod
    def demo(cls, seed: int = 0, num_steps: int = 20, size: int | None = None, slerp_method: str = "slerp",
             eaa_cfg: search.EAAConfig | None = None, locator: str = "dino", score_text: str = "paper",
             mesh: jax.sharding.Mesh | None = None, *, random: bool = False, threshold: float | None = None) -> "VMDiff":
        """The built-in tiny models with the real architectures and wiring.

        Default: the demo world's trained models (vmdiff_jax/assets/world, loaded through the
        ordinary loaders; size 64, the size they were trained at), with the acceptance threshold
        calibrated for that world (world.json) unless `threshold` is given. random=True: random
        weights from `seed` (size 128; noise-like images: the machinery, not the method's quality).
        """
        cfg = hsp.HSPConfig(num_steps=num_steps, size=size or (128 if random else 64), slerp_method=slerp_method)
        if random:
            eaa = eaa_cfg if threshold is None else dataclasses.replace(eaa_cfg or search.EAAConfig(), threshold=threshold)
            return cls(demo_models(seed), cfg, eaa, locator=locator, mesh=mesh, label="demo (tiny random weights)",
                       score_text=score_text)
        from vmdiff_jax.world.shipped import WORLD_DIR, read_info

        world_threshold = read_info(WORLD_DIR).get("threshold") if threshold is None else threshold
        eaa = dataclasses.replace(eaa_cfg or search.EAAConfig(), threshold=float(world_threshold))
        models = load_models(world_weights(), jnp.float32, jnp.float32)
        return cls(models, cfg, eaa, locator=locator, mesh=mesh, label="demo world (trained tiny models)",
                   score_text=score_text)

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
        """Fuse two RGB (S, S, 3) images: EAA search over (alpha, beta, eps) of BNoise + MDeNoise.

        Images: uint8 (other integer dtypes holding 0..255 too; floats in [0, 1] are converted to
        uint8 as round(255 x): nn/checks.image). key: the PRNG key of the noise (eps of outer
        round k = normal(fold_in(key, k))); an int seed in 0..2^32-1 (or `seed=`) is taken as
        jax.random.key(seed). Same key, same device: bit-identical image. Every argument is
        checked first (TypeError / ValueError naming it). Runs `run_pairs` over one pair, the
        path of `vmdiff batch`.
        """
        img1, img2, label1, label2, key, seed = self._check_pair(img1, img2, label1, label2, key, seed)
        self._check_search(schedule, batch)
        # every call padded to a multiple of the request size (batch; the authors' pairs: 2) and of
        # the 'data' axis, so one pair's calls have the same shapes on every mesh
        per_call = max(batch, 2) if schedule == "authors" else batch
        return self._fuse_one(FusionInput.pair(img1, img2, label1, label2, key, seed), schedule, batch, per_call, progress)

    def _fuse_one(self, inp: FusionInput, schedule: str, batch: int, per_call: int, progress: bool) -> FusionResult:
        results: dict = {}
        self.run_pairs([0], lambda _: inp, results.__setitem__, schedule=schedule, batch=batch, pairs_per_call=1,
                       multiple=-(-per_call // self.data) * self.data, progress=progress, objects=inp.objects)
        return results[0]

    def fuse_many(self, images: Sequence[np.ndarray], labels: Sequence[str], key: jax.Array | int | None = None, *,
                  seed: int | None = None, schedule: str = "paper", batch: int = 1, progress: bool = False) -> FusionResult:
        """Fuse K >= 2 RGB (S, S, 3) images into one object, order-invariantly (simplex.py):
        BNoise with the SCat of the K Redux token sets (K x 729 context tokens at full size),
        MDeNoise with their spherical mean under weights w on the simplex, the K-object score
        (every input's fidelity less the spread), searched over w, the weakest object's beta and
        eps. The result's `weights` (K,) and `beta` (K,) follow the inputs' order; permuting the
        inputs permutes them and leaves the image equal up to float summation order (the guidance
        prompt lists the labels sorted: prompts.guidance_prompt). K = 2 is `fuse` (its images,
        labels, key, schedule and batch). Images and key as in `fuse`; K > 2 runs the 'paper' schedule.
        """
        images, labels = self._check_group(images, labels)
        if len(images) == 2:
            return self.fuse(images[0], images[1], labels[0], labels[1], key, seed=seed, schedule=schedule,
                             batch=batch, progress=progress)
        key, seed = self._check_key(key, seed)
        self._check_search(schedule, batch)
        if schedule != "paper":
            raise ValueError(f"schedule {schedule!r} follows the authors' two-object code; {len(images)} objects run "
                             f"schedule 'paper'")
        return self._fuse_one(FusionInput(np.stack(images), tuple(labels), key, seed), schedule, batch, 1, progress)

    def _check_group(self, images, labels) -> tuple[list[np.ndarray], list[str]]:
        """K >= 2 checked uint8 images and as many labels."""
        if isinstance(images, (str, bytes)) or not isinstance(images, (Sequence, np.ndarray)):
            raise TypeError(f"images must be a list of images, got {type(images).__name__}")
        if isinstance(labels, (str, bytes)) or not isinstance(labels, Sequence):
            raise TypeError(f"labels must be a list of str, got {type(labels).__name__}")
        if len(images) < 2 or len(images) != len(labels):
            raise ValueError(f"need at least two images and one label per image, got {len(images)} images and "
                             f"{len(labels)} labels")
        images = [checks.image(f"images[{k}]", im, self.cfg.size) for k, im in enumerate(images)]
        for k, lab in enumerate(labels):
            checks.label(f"labels[{k}]", lab)
        return images, list(labels)

    def run_pairs(self, pairs: Iterable[Hashable], inputs: Callable[[Hashable], FusionInput],
                  on_finish: Callable[[Hashable, FusionResult], None], *, schedule: str = "paper", batch: int = 1,
                  pairs_per_call: int = 1, multiple: int | None = None, progress: bool = False,
                  objects: int = 2) -> scheduler.RunStats:
        """Search every pair, up to `pairs_per_call` at once sharing each model call (scheduler.run
        over a PipelineBackend): inputs(pair) -> FusionInput (raise scheduler.PairFailed to skip a
        pair), on_finish(pair, FusionResult) for each finished one. batch: candidates per search
        step; multiple: call sizes are multiples of it (default: the mesh's 'data' axis); objects:
        the most objects an input has (sizes the calls)."""
        cfg = dataclasses.replace(self.eaa_cfg, batch=batch)
        backend = PipelineBackend(self, inputs, on_finish, schedule=schedule, settings=self.settings(batch, cfg),
                                  progress=progress)
        try:
            return scheduler.run(pairs, backend, cfg, schedule=schedule, pairs_per_call=pairs_per_call,
                                 multiple=self.data if multiple is None else multiple, costs=self.cfg, objects=objects)
        finally:
            backend.close()

    def _check_pair(self, img1, img2, label1, label2, key, seed):
        """(img1, img2 as uint8, label1, label2, PRNG key, int seed or None), checked (fuse's doc)."""
        img1, img2 = checks.image("img1", img1, self.cfg.size), checks.image("img2", img2, self.cfg.size)
        checks.label("label1", label1)
        checks.label("label2", label2)
        return (img1, img2, label1, label2) + self._check_key(key, seed)

    @staticmethod
    def _check_key(key, seed) -> tuple[jax.Array, int | None]:
        """(PRNG key, int seed or None) from fuse's key / seed arguments."""
        if key is not None and seed is not None:
            raise ValueError("give key or seed, not both")
        if key is None:
            key = 0 if seed is None else checks.seed("seed", seed)
        if isinstance(key, (bool, np.bool_)) or isinstance(key, (int, np.integer)):
            seed = checks.seed("key", key)  # an int key is a seed
            return jax.random.key(seed), seed
        return checks.prng_key("key", key), None

    @staticmethod
    def _check_search(schedule, batch) -> None:
        checks.choice("schedule", schedule, search.SCHEDULES)
        checks.integer("batch", batch, 1)

    def fuse_sequence(self, images: Sequence[np.ndarray], labels: Sequence[str], *, seed: int = 0, **kw) -> list[FusionResult]:
        """The paper's extension to more inputs, done greedily: fuse images[0] and images[1] with
        seed, then fuse that result's image (labelled "{label1}-{label2} hybrid") with images[2]
        with seed + 1, and so on; each step is one full `fuse` (its own EAA search; `kw` goes to
        every step). Returns the len(images) - 1 step results; the last one's image is the
        fusion of all inputs. The result depends on the order (the first inputs pass through
        more fusions) and nothing balances the inputs against each other: `fuse_many` fuses
        them at once, order-invariantly (BENCHMARKS.md compares the two)."""
        if isinstance(images, np.ndarray):
            raise TypeError(f"images must be a list of images, got {type(images).__name__}")
        images, labels = self._check_group(images, labels)
        checks.seed("seed", seed, span=len(images) - 2)  # steps use seed, seed + 1, ...
        if "key" in kw or "seed" in kw:
            raise TypeError("fuse_sequence takes seed= only (step k uses seed + k)")
        self._check_search(kw.get("schedule", "paper"), kw.get("batch", 1))
        results = []
        cur, cur_label = images[0], labels[0]
        for i, (img, lab) in enumerate(zip(images[1:], labels[1:])):
            r = self.fuse(cur, img, cur_label, lab, seed=seed + i, **kw)
            results.append(r)
            cur, cur_label = r.image, f"{cur_label}-{lab} hybrid"
        return results


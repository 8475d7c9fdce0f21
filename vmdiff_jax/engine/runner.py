"""`StageRunner`: the networks split once and placed on the mesh, and the jitted stages run on
candidate rows.

Its methods are the batched calls a search asks for, each one compiled stage of `stages.py`
on rows that may come from several pairs: `condition` (Redux tokens), `pooled_prompt` (FLUX's
y), `text_embeddings` (the score's CLIP bigG texts), `noise`, `bnoise` (BNoise), `mdenoise`
(MDeNoise + decode) and `features` (locate the object, DINOv2 + CLIP bigG on the crop).
`pairs.PipelineBackend` drives it for `scheduler.run`; `pipeline.VMDiff` is a StageRunner
plus the search's configs and the fusion entry points.
"""

from __future__ import annotations

import os
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from vmdiff_jax.engine import sharding, stages, targets
from vmdiff_jax.engine.networks import Models, SplitModels, scorers_in_float32
from vmdiff_jax.method import hsp
from vmdiff_jax.method.locators import DinoForegroundLocator, Locator, WholeImage, boxes_or_whole
from vmdiff_jax.method.score import ManySubscores, many_subscores_from_features, pair_subscores
from vmdiff_jax.method.prompts import SCORE_TEXT_MODES, guidance_prompt, score_texts
from vmdiff_jax.nn import image_ops

LOCATORS = ("dino", "whole", "grounding")


class StageRunner:
    """The networks of `models` as (graphdef, state) placed on `mesh`, and the stages over them.

    hsp_cfg: what BNoise / MDeNoise run (steps, size, guidance, slerp); locator: 'dino'
    (DINOv2 foreground box), 'whole', 'grounding' (the optional torch locator) or any object
    with `__call__(image) -> box | None` / `batch(images)`; score_text: 'paper' | 'authors'.
    The scorers (DINOv2, CLIP bigG) are switched to float32 compute (networks.scorers_in_float32).
    """

    def __init__(self, models: Models, hsp_cfg: hsp.HSPConfig = hsp.HSPConfig(), *, locator: str | Locator = "dino",
                 mesh: jax.sharding.Mesh | None = None, score_text: str = "paper"):
        if score_text not in SCORE_TEXT_MODES:
            raise ValueError(f"score_text must be one of {SCORE_TEXT_MODES}, got {score_text!r}")
        self.models = models
        self.cfg = hsp_cfg
        self.score_text = score_text
        if mesh is None and len(jax.local_devices()) > 1:
            mesh = sharding.make_mesh(devices=jax.local_devices())
        self.mesh = mesh
        # geometry from the models' own configs: packed channels = FLUX's in_channels = 4 x the VAE's latents
        self.channels = models.flux.cfg.in_channels
        if self.channels != 4 * models.vae.cfg.z_channels:
            raise ValueError(f"FLUX takes {self.channels} packed channels, the VAE gives 4 x {models.vae.cfg.z_channels}")
        self.seq_len = hsp.seq_len(hsp_cfg.size, models.vae.cfg.downsample_factor)
        # the score's crop side: CLIP bigG's input size (its position table is not interpolated); DINOv2 sees the same crop
        self.crop_size = models.clip_bigg.visual.cfg.image_size
        scorers_in_float32(models)
        # replicated over 'data'; FSDP over 'fsdp' when the mesh has it (sharding.param_spec)
        place = (lambda st: sharding.place_state(st, mesh)) if mesh is not None else (lambda st: st)
        self.split = SplitModels.of(models, place)
        self.param_dtype = str(jax.tree.leaves(self.split.flux.state)[0].dtype)  # the compute dtype
        # how FLUX's weights are stored: "float8_e4m3fn" when its block linears are fp8
        self.flux_weights = "float8_e4m3fn" if any(x.dtype == jnp.float8_e4m3fn for x in jax.tree.leaves(
            self.split.flux.state)) else self.param_dtype
        self.locator = self._locator(locator)

    def _locator(self, locator):
        if locator == "dino":
            return DinoForegroundLocator(lambda ims: stages.dino_patches(*self.split.dinov2, self.place_rows(ims)))
        if locator == "whole":
            return WholeImage()
        if locator == "grounding":
            from vmdiff_jax.engine.grounding import GroundingDinoLocator

            return GroundingDinoLocator(os.environ.get("VMDIFF_GROUNDING_DINO", "weights/grounding_dino"))
        if isinstance(locator, str):
            raise ValueError(f"locator must be one of {LOCATORS} or a locator object, got {locator!r}")
        return locator

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

    def pooled_prompt(self, *labels: str) -> jax.Array:
        """CLIP-L pooled vector (Dy,) of the guidance prompt of these labels (prompts.guidance_prompt)."""
        ids = self.models.clip_l_tokenizer([guidance_prompt(*labels)])
        return stages.pooled_text(*self.split.clip_l, jnp.asarray(ids))[0]

    def text_embeddings(self, labels: Sequence[str]) -> jax.Array:
        """Unit CLIP bigG text embeddings (n, E) of the score's texts (prompts.score_texts; open_clip pads with 0)."""
        ids = self.models.clip_bigg_tokenizer(score_texts(labels, self.score_text), pad_id=0)
        return stages.text_embed(*self.split.clip_bigg, jnp.asarray(ids))

    def noise(self, key: jax.Array, round_k: int) -> jax.Array:
        """eps of outer round k: standard normal (N, C) float32 from fold_in(key, k)."""
        return jax.random.normal(jax.random.fold_in(key, round_k), (self.seq_len, self.channels), jnp.float32)

    # ------------------------------------------------------------------ candidate batches

    def bnoise(self, eps, cs, betas, y) -> jax.Array:
        """BNoise of n candidate rows (n a multiple of `data`): eps (n, N, C), cs (n, K, L, D) (the
        K objects' Redux tokens), betas (n, K), y (n, Dy) -> eps_b (n, N, C) float32, split over 'data'."""
        rows = [self.place_rows(x) for x in (eps, cs, betas, y)]
        with targets.mesh_context(self.mesh):
            return stages.bnoise(*self.split.flux, *rows, cfg=self.cfg)

    def mdenoise(self, eps_b, cs, weights, y) -> jax.Array:
        """MDeNoise + decode of n candidate rows (n a multiple of `data`): eps_b (n, N, C),
        cs (n, K, L, D), weights (n, K) (pairs: (1 - alpha, alpha)), y (n, Dy) -> float32 images
        (n, S, S, 3) in [0, 1]."""
        rows = [self.place_rows(x) for x in (eps_b, cs, weights, y)]
        with targets.mesh_context(self.mesh):
            return stages.mdenoise(*self.split.flux, *self.split.vae, *rows, cfg=self.cfg)

    def features(self, images) -> tuple[jax.Array, jax.Array]:
        """DINOv2 features (n, Dd) and unit CLIP bigG image embeddings (n, E) of the located
        object's crop of each image (n, S, S, 3), uint8 or float in [0, 1] (uint8 is scored as
        x / 255): cut at the box's int() coordinates and resized to crop_size x crop_size in float
        (image_ops.crop_matrices: antialiased bicubic, as the authors' torchvision transform); run
        padded to a multiple of `data`."""
        images = np.asarray(images)
        if images.dtype == np.uint8:
            images = images.astype(np.float32) / 255.0
        elif not np.issubdtype(images.dtype, np.floating) or images.size and not (0.0 <= images.min() and images.max() <= 1.0):
            raise ValueError(f"features: images must be uint8 or float in [0, 1], got {images.dtype} "
                             f"in [{images.min()}, {images.max()}]")
        images, n = sharding.pad_to_multiple(images.astype(np.float32), self.data)
        # the DINOv2 locator sees the float image too; other locators (Grounding DINO, yours) get uint8
        seen = images if isinstance(self.locator, DinoForegroundLocator) else np.asarray(image_ops.to_uint8(images))
        boxes = boxes_or_whole(self.locator, seen)
        wy, wx = image_ops.crop_matrices(boxes, images.shape[1:3], (self.crop_size, self.crop_size))
        d, e = stages.features(*self.split.dinov2, *self.split.clip_bigg, self.place_rows(images),
                               self.place_rows(wy), self.place_rows(wx))
        return d[:n], e[:n]

    def plain_fusion(self, images_u8: np.ndarray, label1: str, label2: str, key: jax.Array, round_k: int = 1):
        """One pair's candidate without search (the ablation's baseline2 row): BNoise at betas (1, 1)
        then MDeNoise at alpha 0.5 from eps of round k. images_u8 (2, S, S, 3) ->
        (decoded float image (S, S, 3) in [0, 1], its score.Subscores of one row)."""
        cs = np.asarray(self.condition(images_u8))[None]  # (1, 2, L, D)
        y = np.asarray(self.pooled_prompt(label1, label2))[None]
        eps = np.asarray(self.noise(key, round_k))[None]
        eps_b = self.bnoise(eps, cs, np.ones((1, 2), np.float32), y)
        fused = np.asarray(self.mdenoise(eps_b, cs, np.full((1, 2), 0.5, np.float32), y))
        return fused[0], pair_subscores(self.score_against(fused, images_u8, [label1, label2]))

    def score_against(self, fused, inputs_u8: np.ndarray, labels: Sequence[str]) -> ManySubscores:
        """The K-object sub-scores (score.many_subscores: the paper's S for K = 2) of n fused images
        (n, S, S, 3), uint8 or float in [0, 1], against K inputs (K, S, S, 3) uint8 and their labels:
        e.g. to score `fuse_sequence`'s last image against all of its inputs."""
        fused = np.asarray(fused)
        fused = fused.astype(np.float32) / 255.0 if fused.dtype == np.uint8 else fused.astype(np.float32)
        k = len(labels)
        d, e = self.features(np.concatenate([fused, np.asarray(inputs_u8).astype(np.float32) / 255.0]))
        d, e = np.asarray(d), np.asarray(e)
        n = len(fused)
        text = np.asarray(self.text_embeddings(list(labels)))
        return many_subscores_from_features(d[:n], np.repeat(d[None, n:n + k], n, 0), e[:n], np.repeat(text[None], n, 0))

    @staticmethod
    def compile_counts() -> dict[str, int]:
        """Compilations (traces) of each stage in this process so far (stages.traces)."""
        return stages.traces()

"""`PipelineBackend`: the `scheduler.Backend` of VMDiff, candidates of many pairs in one call.

Each pair (or group of K >= 2 objects) brings its images, labels and PRNG key (`FusionInput`).
`start` computes its conditioning once (the K Redux token sets, the pooled prompt y, the
reference DINOv2 features of the inputs and the CLIP bigG texts of the labels). A `bnoise` /
`mdenoise` call stacks one row per candidate (that candidate's pair's eps or eps_b, token sets,
y and betas or mixing weights; the scheduler packs rows of one K), pads to the scheduler's
`slots` by repeating the last row, and runs ONE compiled stage of the `runner.StageRunner` on
the rows split over the mesh's 'data' axis; each real row is then scored against its own
pair's references (`score.many_subscores_from_features`: the paper's S for K = 2). `finish`
turns the search result into a `FusionResult` for `on_finish`.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable, Hashable, Sequence

import jax
import numpy as np

from vmdiff_jax.engine.fusion_result import FusionResult
from vmdiff_jax.engine.runner import StageRunner
from vmdiff_jax.engine.scheduler import BNoiseItem, MDeNoiseItem
from vmdiff_jax.nn import image_ops
from vmdiff_jax.method import score as score_lib
from vmdiff_jax.method import search


@dataclasses.dataclass(frozen=True)
class FusionInput:
    """K >= 2 objects to fuse: uint8 images (K, S, S, 3), K labels, the noise's PRNG key (seed:
    the int it came from, None for an explicit key)."""

    images: np.ndarray
    labels: tuple[str, ...]
    key: jax.Array
    seed: int | None

    @classmethod
    def pair(cls, img1: np.ndarray, img2: np.ndarray, label1: str, label2: str, key: jax.Array,
             seed: int | None) -> "FusionInput":
        """Two objects."""
        return cls(np.stack([img1, img2]), (label1, label2), key, seed)

    @property
    def objects(self) -> int:
        return len(self.labels)


@dataclasses.dataclass
class _Pair:
    """A started pair: its input, conditioning, references, noise by round, thumbnails and clocks."""

    input: FusionInput
    c: np.ndarray  # (K, L, D) Redux tokens of the K images
    y: np.ndarray  # (Dy,)
    ref_dino: np.ndarray  # (K, Dd)
    text: np.ndarray  # (K, E)
    t0: float
    conditioning_s: float
    noise: dict = dataclasses.field(default_factory=dict)
    thumbs: list = dataclasses.field(default_factory=list)
    model_s: float = 0.0


def _pad(rows: list, slots: int) -> np.ndarray:
    """Stack rows and repeat the last one up to `slots` rows."""
    if not 0 < len(rows) <= slots:
        raise ValueError(f"{len(rows)} candidates for {slots} slots")
    return np.stack(list(rows) + [rows[-1]] * (slots - len(rows)))


def _thumb(image: np.ndarray, side: int = 96) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(image).resize((side, side), Image.Resampling.BILINEAR))


class PipelineBackend:
    """scheduler.Backend over a `StageRunner` (see the module doc).

    inputs(pair) -> FusionInput (raise scheduler.PairFailed for a pair that cannot run);
    on_finish(pair, FusionResult) receives every finished pair; schedule and settings (the
    report's settings block) describe the run.
    """

    def __init__(self, runner: StageRunner, inputs: Callable[[Hashable], FusionInput],
                 on_finish: Callable[[Hashable, FusionResult], None], *, schedule: str, settings: dict,
                 progress: bool = False):
        self.runner = runner
        self.inputs = inputs
        self.on_finish = on_finish
        self.schedule = schedule
        self.settings = settings
        self.pairs: dict[Hashable, _Pair] = {}
        self.bar = None
        if progress:
            from tqdm import tqdm

            self.bar = tqdm(desc="VMDiff search", unit="call", dynamic_ncols=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    # ------------------------------------------------------------------ Backend

    def start(self, pair: Hashable) -> int:
        t0 = time.perf_counter()
        inp = self.inputs(pair)
        run = self.runner
        images = np.asarray(inp.images).astype(np.uint8)
        c = run.condition(images)
        y = run.pooled_prompt(*inp.labels)
        ref_dino, _ = run.features(images)
        text = run.text_embeddings(list(inp.labels))
        c, y, ref_dino, text = (np.asarray(x) for x in (c, y, ref_dino, text))
        self.pairs[pair] = _Pair(inp, c, y, ref_dino, text, t0, time.perf_counter() - t0)
        return inp.objects

    def noise(self, pair: Hashable, round_k: int) -> np.ndarray:
        """The pair's eps of outer round k (N, C) float32 (kept for the round's later requests)."""
        st = self.pairs[pair]
        if round_k not in st.noise:
            st.noise = {round_k: np.asarray(self.runner.noise(st.input.key, round_k))}  # rounds only go up
        return st.noise[round_k]

    def _conditioning_rows(self, pairs: list, slots: int):
        """The rows' token sets (slots, K, L, D) and pooled prompts (slots, Dy)."""
        st = [self.pairs[p] for p in pairs]
        return _pad([s.c for s in st], slots), _pad([s.y for s in st], slots)

    def _account(self, pairs: list, seconds: float, calls_each: int, what: str) -> None:
        for p in pairs:  # a shared call's time, split by rows
            self.pairs[p].model_s += seconds / len(pairs)
        if self.bar is not None:
            self.bar.set_postfix_str(what)
            self.bar.update(len(pairs) * calls_each)

    def bnoise(self, items: Sequence[BNoiseItem], slots: int) -> list:
        t = time.perf_counter()
        pairs = [it.pair for it in items]
        eps = _pad([self.noise(it.pair, it.round) for it in items], slots)
        betas = _pad([np.asarray(it.beta, np.float32).reshape(-1) for it in items], slots)
        cs, y = self._conditioning_rows(pairs, slots)
        eps_b = np.asarray(self.runner.bnoise(eps, cs, betas, y))
        self._account(pairs, time.perf_counter() - t, self.runner.cfg.bnoise_calls,
                      f"BNoise x{len(items)}/{slots} beta={np.asarray(items[0].beta).round(2).tolist()}")
        return list(eps_b[:len(items)])

    def mdenoise(self, items: Sequence[MDeNoiseItem], slots: int) -> search.Evaluation:
        t = time.perf_counter()
        n = len(items)
        pairs = [it.pair for it in items]
        eps_b = _pad([np.asarray(it.eps_b, np.float32) for it in items], slots)
        weights = _pad([np.asarray(it.weights, np.float32) for it in items], slots)
        cs, y = self._conditioning_rows(pairs, slots)
        decoded = np.asarray(self.runner.mdenoise(eps_b, cs, weights, y))  # float [0, 1]: what is scored
        fused_dino, fused_clip = (np.asarray(x)[:n] for x in self.runner.features(decoded))
        images = np.asarray(image_ops.to_uint8(decoded[:n]))  # what is saved
        self._account(pairs, time.perf_counter() - t, self.runner.cfg.mdenoise_calls,
                      f"MDeNoise x{n}/{slots} " + (f"alpha={items[0].alpha:.4f}" if len(items[0].weights) == 2 else
                                                   f"w={np.asarray(items[0].weights).round(3).tolist()}"))
        ref_dino = np.stack([self.pairs[p].ref_dino for p in pairs])  # (n, K, Dd): each row against its own pair
        text = np.stack([self.pairs[p].text for p in pairs])  # (n, K, E)
        sub = score_lib.many_subscores_from_features(fused_dino, ref_dino, fused_clip, text)
        for p, im in zip(pairs, images):
            self.pairs[p].thumbs.append(_thumb(im))
        return search.Evaluation.from_subscores(sub, payload=list(images))

    def finish(self, pair: Hashable, result: search.EAAResult) -> None:
        st = self.pairs.pop(pair)
        inp = st.input
        fused = FusionResult(
            image=np.asarray(result.payload, np.uint8), alpha=None if result.alpha is None else float(result.alpha),
            beta=tuple(float(b) for b in result.beta), score=float(result.score),
            subscores=dict(result.subscores), calls=int(result.calls), rounds=int(result.rounds),
            accepted=bool(result.accepted), trajectory=list(result.trajectory),
            timings={"total_s": time.perf_counter() - st.t0, "conditioning_s": st.conditioning_s,
                     "search_s": float(result.wall_time), "model_s": st.model_s},
            labels=tuple(inp.labels), seed=inp.seed, schedule=self.schedule,
            settings=self.settings, thumbs=st.thumbs, weights=tuple(float(w) for w in result.weights),
        )
        self.on_finish(pair, fused)

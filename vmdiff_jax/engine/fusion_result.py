"""`FusionResult`: the fused image of one pair, how the search found it, and its report."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np

from vmdiff_jax.method import score as score_lib
from vmdiff_jax.method.prompts import guidance_prompt


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
        from vmdiff_jax.app.report import REPORT_SCHEMA_VERSION, versions

        sub = {k: float(v) for k, v in self.subscores.items()}
        return {
            "schema": REPORT_SCHEMA_VERSION,
            "labels": list(self.labels),
            "prompt": guidance_prompt(*self.labels),
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
        from vmdiff_jax.app.report import search_figure

        return search_figure(self.trajectory, self.thumbs)

    def save(self, out: str | os.PathLike, extra: dict | None = None) -> None:
        """fused.png, search.png and report.json (last, so its presence marks a complete result)."""
        from vmdiff_jax.app.report import write_outputs

        write_outputs(Path(out), self.image, self.report(extra), self.figure())

"""`FusionResult`: the fused image of one pair (or K objects), how the search found it, and its report dict
(app/report.py writes it as fused.png, search.png and report.json)."""

from __future__ import annotations

import dataclasses
import platform

import numpy as np

from vmdiff_jax.method import score as score_lib
from vmdiff_jax.method import simplex
from vmdiff_jax.method.prompts import guidance_prompt

REPORT_SCHEMA_VERSION = 1


def versions() -> dict[str, str]:
    """Versions of the software that produced a result."""
    import flax
    import jax

    from vmdiff_jax import __version__

    return {
        "vmdiff_jax": __version__,
        "jax": jax.__version__,
        "flax": flax.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "backend": jax.default_backend(),
        "devices": ", ".join(sorted({d.device_kind for d in jax.devices()})),
    }


@dataclasses.dataclass
class FusionResult:
    """The best fused image found and how it was found.

    image uint8 (S, S, 3); K objects (K = 2 for a pair): weights (K,) the mixing weights on the
    simplex (pairs: (1 - alpha, alpha)); alpha: object 2's weight for a pair, None for K > 2;
    beta (K,); subscores {S, d1..dK, n1..nK, c1..cK}; calls: image-model-calls (a batch of n
    counts n); rounds: sequential model batches; trajectory: every candidate's parameters and
    sub-scores; thumbs: a small image per candidate; settings: the run's settings block
    (models, stages, the search's config under "eaa").
    """

    image: np.ndarray
    alpha: float | None
    beta: tuple[float, ...]
    score: float
    subscores: dict
    calls: int
    rounds: int
    accepted: bool
    trajectory: list
    timings: dict
    labels: tuple[str, ...]
    seed: int | None  # None when fused from an explicit PRNG key
    schedule: str
    settings: dict
    thumbs: list = dataclasses.field(default_factory=list, repr=False)
    weights: tuple[float, ...] = ()

    def __post_init__(self):
        if not self.weights and self.alpha is not None:
            self.weights = (1.0 - float(self.alpha), float(self.alpha))

    @property
    def objects(self) -> int:
        return len(self.labels)

    @property
    def threshold(self) -> float:
        """The acceptance threshold the search ran with: settings["eaa"]["threshold"], times K / 2
        for K > 2 objects (simplex.threshold)."""
        return simplex.threshold(float(self.settings["eaa"]["threshold"]), self.objects)

    def report(self, extra: dict | None = None) -> dict:
        """report.json's content (extra: more top-level fields, e.g. the command line)."""
        sub = {k: float(v) for k, v in self.subscores.items()}
        k = self.objects
        d, n = ([sub[f"{x}{i}"] for i in range(1, k + 1)] for x in "dn")
        parameters = {"weights": [float(w) for w in self.weights], "betas": [float(b) for b in self.beta]}
        if self.alpha is not None:
            parameters.update(alpha=float(self.alpha), beta1=float(self.beta[0]), beta2=float(self.beta[1]))
        return {
            "schema": REPORT_SCHEMA_VERSION,
            "labels": list(self.labels),
            "prompt": guidance_prompt(*self.labels),
            "seed": self.seed,
            "schedule": self.schedule,
            "objects": k,
            "parameters": parameters,
            "score": float(self.score),
            "subscores": sub,
            "b_sim": float(score_lib.many_b_sim(np.array(d), np.array(n))),
            "accepted": bool(self.accepted),
            "threshold": self.threshold,  # accepted = score > threshold (the demo world's is calibrated: world.json)
            "calls": int(self.calls),
            "rounds": int(self.rounds),
            "timings": {k: float(v) for k, v in self.timings.items()},
            "settings": self.settings,
            "trajectory": [{k: (float(v) if isinstance(v, (float, np.floating)) else v) for k, v in t.items()} for t in self.trajectory],
            "versions": versions(),
            **(extra or {}),
        }

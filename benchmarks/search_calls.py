"""Image-model-calls per pair of the EAA search: the paper's schedule vs the authors' code.

Runs both schedules (same tolerances: alpha 0.002 on [0.4, 0.6], beta 0.5 on the grid
0.5..3.5) on analytic problems whose score needs the alpha stage only, the beta stage, or
eps resampling, and prints calls, sequential rounds, final S and acceptance per problem.
No model is run: S is a smooth unimodal function of (alpha, beta, eps round).

    python benchmarks/search_calls.py
"""

from __future__ import annotations

import dataclasses

import numpy as np

from vmdiff_jax.method import score
from vmdiff_jax.method.search import EAAConfig, Evaluation, eaa


@dataclasses.dataclass
class AnalyticProblem:
    """S = peak[k] - A (alpha - a_star[k])^2 + gain (1 - ((b_w - b_star) / (1 - b_star))^2), b_w = beta of `weak`.

    d_i, n_i = S / 4 with the stronger object's values raised by `gap`, so that
    similarity_score(d, n) == S and `weak` is the weaker object under both rules.
    """

    name: str
    peaks: tuple
    a_star: tuple
    gain: float = 0.0
    b_star: float = 2.1
    weak: int = 1
    A: float = 40.0
    gap: float = 0.05

    def target(self, alpha, b1, b2, k):
        b = (b1, b2)[self.weak]
        g = self.gain * (1.0 - ((b - self.b_star) / (1.0 - self.b_star)) ** 2)
        return self.peaks[k - 1] - self.A * (alpha - self.a_star[k - 1]) ** 2 + g

    def noise(self, round_k):
        return round_k

    def blend(self, eps, betas):
        return np.array([[eps, b1, b2] for b1, b2 in np.asarray(betas)])

    def mix(self, eps_b, alphas):
        alphas = np.asarray(alphas)
        if len(eps_b) == 1:
            eps_b = np.repeat(eps_b, len(alphas), axis=0)
        s = np.array([self.target(a, b1, b2, int(k)) for a, (k, b1, b2) in zip(alphas, eps_b)])
        d = np.tile(s[:, None] / 4, (1, 2))
        n = d.copy()
        d[:, 1 - self.weak] += self.gap
        n[:, 1 - self.weak] += self.gap
        c = n * 0.30 + 0.15
        return Evaluation.from_subscores(score.subscores(d[:, 0], d[:, 1], c[:, 0], c[:, 1]), [None] * len(alphas))


PROBLEMS = [
    AnalyticProblem("alpha suffices, a*=0.50", (2.5, 2.5, 2.5), (0.50, 0.50, 0.50)),
    AnalyticProblem("alpha suffices, a*=0.43", (2.6, 2.6, 2.6), (0.43, 0.43, 0.43)),
    AnalyticProblem("beta needed, b*=2.1", (2.3, 2.3, 2.3), (0.47, 0.47, 0.47), gain=0.2, b_star=2.1),
    AnalyticProblem("beta needed, b*=3.1 (obj 1)", (2.3, 2.3, 2.3), (0.55, 0.55, 0.55), gain=0.2, b_star=3.1, weak=0),
    AnalyticProblem("resampling needed (round 2)", (2.1, 2.5, 2.5), (0.45, 0.52, 0.52), gain=0.1),
    AnalyticProblem("resampling needed (round 3)", (2.0, 2.1, 2.45), (0.45, 0.52, 0.58), gain=0.1),
    AnalyticProblem("never accepted", (2.0, 2.1, 2.2), (0.45, 0.52, 0.58), gain=0.1),
]


def main() -> None:
    cfg = EAAConfig()
    runs = [("paper", cfg, "paper"), ("authors", cfg, "authors"), ("paper n=4", dataclasses.replace(cfg, batch=4), "paper")]
    head = f"{'problem':32s}" + "".join(f" | {label:>9s} calls rnds     S acc" for label, _, _ in runs) + " | authors/paper"
    print(head)
    print("-" * len(head))
    totals = {label: 0 for label, _, _ in runs}
    for p in PROBLEMS:
        row = f"{p.name:32s}"
        calls = {}
        for label, c, schedule in runs:
            r = eaa(p, c, schedule)
            calls[label] = r.calls
            totals[label] += r.calls
            row += f" | {'':>9s} {r.calls:5d} {r.rounds:4d} {r.score:5.3f} {'y' if r.accepted else 'n':>3s}"
        print(row + f" | {calls['authors'] / calls['paper']:13.2f}")
    print("-" * len(head))
    print(f"{'total':32s}" + "".join(f" | {'':>9s} {totals[label]:5d}" + " " * 14 for label, _, _ in runs)
          + f" | {totals['authors'] / totals['paper']:13.2f}")


if __name__ == "__main__":
    main()

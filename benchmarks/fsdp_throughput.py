"""A throughput model for IIOF-sized batch runs on FSDP groups (no accelerator needed).

FLOPs per FLUX evaluation come from XLA's cost analysis of the lowered full-size call
(abstract shapes: nothing is allocated), at the two context lengths VMDiff uses (729 Redux
tokens in MDeNoise, 1458 in BNoise's SCat). The sequence of padded calls comes from
`scheduler.run` over 1560 analytic pairs (benchmarks/pairs_per_call.py). Each call is 20
(MDeNoise) or 22 (BNoise) sequential FLUX evaluations; per evaluation a chip spends

    compute = ceil(slots / data) * F(T) / (fsdp * peak * mfu)
    weights = W * (fsdp - 1) / fsdp / (link * link_eff)   (FSDP all-gather, fsdp > 1)
            = W / (hbm * hbm_eff)                          (replicated: weights read from HBM)

and the evaluation takes max(compute, weights) (the gather overlapped with compute, as XLA
schedules it). W = FLUX bf16 parameter bytes (23.8 GB). VAE decode, scorers and host work
are left out (under 3% of the FLOPs). Assumptions (chip figures from vendor sheets):
mfu 0.5 of peak bf16, 0.8 of link and HBM bandwidth.

    python benchmarks/fsdp_throughput.py
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx

from pairs_per_call import AnalyticBackend
from vmdiff_jax.engine import scheduler
from vmdiff_jax.nn.flux import Flux, FluxConfig
from vmdiff_jax.method.search import EAAConfig

MFU, LINK_EFF, HBM_EFF = 0.5, 0.8, 0.8


@dataclasses.dataclass(frozen=True)
class Group:
    name: str
    chips: int
    fsdp: int  # chips sharing one copy of the weights; data = chips // fsdp
    peak: float  # bf16 FLOP/s per chip
    link: float  # bytes/s per chip for the all-gather (ICI / NVLink, one direction)
    hbm: float  # bytes/s per chip


GROUPS = [
    Group("TPU v5e-4 (16 GB: fsdp 4)", 4, 4, 197e12, 200e9, 819e9),
    Group("TPU v5e-8 (data 2 x fsdp 4)", 8, 4, 197e12, 200e9, 819e9),
    Group("TPU v6e-8 (32 GB: data 4 x fsdp 2)", 8, 2, 918e12, 448e9, 1640e9),
    Group("H100 x8 (80 GB: data 8, replicated)", 8, 1, 989e12, 450e9, 3350e9),
    Group("H100 x8 (fsdp 8)", 8, 8, 989e12, 450e9, 3350e9),
]


def analysed_flops() -> tuple[dict[str, float], float]:
    """F per FLUX evaluation {'mdenoise': 1024 + 729 tokens, 'bnoise': 1024 + 1458} from
    XLA's cost analysis of the full-size lowered call; bf16 weight bytes."""
    cfg = FluxConfig.flux1_dev()
    # attention 'xla': a kernel's loop (chunked) or custom call hides its FLOPs from the analysis;
    # blocks unrolled: the analysis counts a scan's body once, not once per layer
    graphdef, state = nnx.split(nnx.eval_shape(lambda: Flux(cfg, rngs=nnx.Rngs(0), attention_impl="xla", scan_blocks=False)))
    n_params = sum(math.prod(x.shape) for x in jax.tree.leaves(state))

    def call(state, img, img_ids, txt, txt_ids, t, y, g):
        return nnx.merge(graphdef, state)(img, img_ids, txt, txt_ids, t, y, g)

    S = jax.ShapeDtypeStruct
    out = {}
    for kind, ctx in (("mdenoise", 729), ("bnoise", 1458)):
        lowered = jax.jit(call).lower(state, S((1, 1024, 64), jnp.bfloat16), S((1, 1024, 3), jnp.float32),
                                      S((1, ctx, cfg.context_in_dim), jnp.bfloat16), S((1, ctx, 3), jnp.float32),
                                      S((1,), jnp.float32), S((1, cfg.vec_in_dim), jnp.bfloat16), S((1,), jnp.float32))
        out[kind] = float(lowered.cost_analysis()["flops"])
    return out, 2.0 * n_params


class LoggingBackend(AnalyticBackend):
    def __init__(self):
        super().__init__()
        self.log: list[tuple[str, int]] = []

    def bnoise(self, items, slots):
        self.log.append(("bnoise", slots))
        return super().bnoise(items, slots)

    def mdenoise(self, items, slots):
        self.log.append(("mdenoise", slots))
        return super().mdenoise(items, slots)


def eval_time(g: Group, slots: int, flops: float, weight_bytes: float) -> tuple[float, bool]:
    """Seconds of one FLUX evaluation of `slots` candidates on group g; True if compute-bound."""
    data = g.chips // g.fsdp
    compute = math.ceil(slots / data) * flops / (g.fsdp * g.peak * MFU)
    if g.fsdp > 1:
        weights = weight_bytes * (g.fsdp - 1) / g.fsdp / (g.link * LINK_EFF)
    else:
        weights = weight_bytes / (g.hbm * HBM_EFF)
    return max(compute, weights), compute >= weights


def main() -> None:
    flops, weight_bytes = analysed_flops()
    print(f"XLA cost analysis per FLUX evaluation: MDeNoise {flops['mdenoise'] / 1e12:.2f} TFLOP, "
          f"BNoise {flops['bnoise'] / 1e12:.2f} TFLOP; bf16 weights {weight_bytes / 1e9:.1f} GB")
    steps = {"mdenoise": 20, "bnoise": 22}
    cfg, pairs = EAAConfig(), 40 * 39
    logs = {}
    for P in (1, 8, 32, 128):
        be = LoggingBackend()
        scheduler.run(range(pairs), be, cfg, "paper", pairs_per_call=P)
        logs[P] = be.log
    print(f"\n{pairs} pairs, paper schedule; mfu {MFU}, link/HBM efficiency {LINK_EFF}/{HBM_EFF}")
    print(f"{'group':38s} {'c* (cands/call)':>16s} " + " ".join(f"{'P=' + str(P) + ' pairs/h':>14s}" for P in logs)
          + "  compute-bound share of evaluations")
    for g in GROUPS:
        data = g.chips // g.fsdp
        w = weight_bytes * (g.fsdp - 1) / g.fsdp / (g.link * LINK_EFF) if g.fsdp > 1 else weight_bytes / (g.hbm * HBM_EFF)
        c_star = data * w * g.fsdp * g.peak * MFU / flops["mdenoise"]  # candidates per call where compute = weights
        rates, shares = [], []
        for P, log in logs.items():
            total, bound, n = 0.0, 0, 0
            for kind, slots in log:
                t, cb = eval_time(g, slots, flops[kind], weight_bytes)
                total += steps[kind] * t
                bound += steps[kind] * cb
                n += steps[kind]
            rates.append(pairs / (total / 3600))
            shares.append(bound / n)
        print(f"{g.name:38s} {c_star:16.1f} " + " ".join(f"{r:14.0f}" for r in rates)
              + "  " + " ".join(f"{s:.2f}" for s in shares))


if __name__ == "__main__":
    main()

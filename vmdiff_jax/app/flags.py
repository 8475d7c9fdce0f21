"""The `vmdiff` command's flags: one parser per command, the run / search / model flag groups
they share, and the limits the values are checked against. Standard library only (no JAX at
startup: `--help` and usage errors come at once)."""

from __future__ import annotations

import argparse

EXIT_BAD_INPUT = 2
SEED_MAX = 2**32 - 1  # jax.random.key keeps 32 bits without x64: larger seeds would repeat smaller ones
STEPS_MIN, STEPS_MAX = 2, 200
SIZE_MIN, SIZE_MAX = 32, 1024  # 1024: FLUX's native resolution; the attention grows with size**4
BATCH_MAX = 64
OBJECTS_MAX = 8  # images one fuse takes (K x 729 context tokens in BNoise: 5832 at 8)
DTYPES = ("auto", "bfloat16", "float32", "fp8")
DEMO_WEIGHT_SEED = 0  # the random demo models' weights (not the noise: that is --seed)
DEMO_MODELS = ("world", "random")
ABLATIONS = ("baseline1", "baseline2", "alpha", "full")  # = method.search.ABLATIONS (tests/test_package.py)
ROUNDS_MAX = 20
PLAN_TOPOLOGIES = ("v5e-1", "v5e-4", "v5e-8", "v6e-1", "v6e-4", "v6e-8", "v4-8", "v5p-8")  # = engine.targets.TARGETS
PLAN_STAGES = ("condition", "pooled_text", "text_embed", "dino_patches", "features", "bnoise", "mdenoise")
DEMO_SIZES = {"world": 64, "random": 128}  # the demo models' working sizes (the world's models are trained at 64)


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2 (argparse prints usage + message by default)
        self.exit(EXIT_BAD_INPUT, f"vmdiff: error: {message}\n")


def _auto_or_positive(flag: str):
    def parse(v: str):
        if v == "auto":
            return v
        try:
            n = int(v)
        except ValueError:
            n = 0
        if n < 1:
            raise argparse.ArgumentTypeError(f"{flag} must be 'auto' or a positive integer, got {v!r}")
        return n

    return parse


def _seed(v: str) -> int:
    try:
        n = int(v)
    except ValueError:
        n = -1
    if not 0 <= n <= SEED_MAX:
        raise argparse.ArgumentTypeError(f"--seed must be an integer from 0 to {SEED_MAX} (JAX's 32-bit PRNG seed), got {v!r}")
    return n


def _run_flags() -> argparse.ArgumentParser:
    """The flags of every command that fuses: fuse, demo, batch."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--out", required=True, help="output folder (replaced whole by the new results)")
    p.add_argument("--seed", type=_seed, default=0, help="PRNG seed of the noise (same seed + device: bit-identical fused.png)")
    p.add_argument("--schedule", choices=("paper", "authors"), default="paper", help="EAA search schedule")
    p.add_argument("--steps", type=int, default=20, help=f"denoising steps, {STEPS_MIN}..{STEPS_MAX} (BNoise stops at step 11 of 20, scaled)")
    p.add_argument("--size", type=int, default=None,
                   help=f"working resolution, a multiple of 16 in {SIZE_MIN}..{SIZE_MAX} (default: 512; the demo world's "
                        f"models {DEMO_SIZES['world']}, the random ones {DEMO_SIZES['random']})")
    p.add_argument("--batch", type=int, default=1, help="candidates per search round (1 = golden section with reuse)")
    p.add_argument("--slerp", choices=("slerp", "lerp", "authors"), default="slerp", help="embedding interpolation")
    p.add_argument("--score-text", choices=("paper", "authors"), default="paper",
                   help="CLIP text of the score: the sentence (paper) or the authors' list repr")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    g = p.add_argument_group("search (EAAConfig; defaults: the paper's)")
    g.add_argument("--tiny-search", action="store_true", help="EAAConfig.tiny(): one round, coarse tolerances (smoke runs, tests)")
    g.add_argument("--ablation", choices=ABLATIONS, default="full",
                   help="the paper's Table 2 row: baseline1 (random noise + MDeNoise at alpha 0.5), baseline2 (+ BNoise), "
                        "alpha (+ alpha search), full (+ beta search)")
    g.add_argument("--threshold", type=float, default=None,
                   help="accept S above this (default 2.4; the demo world's calibrated value with its models)")
    g.add_argument("--rounds", type=int, default=None, help="outer rounds K (new noise each; default 3)")
    g.add_argument("--alpha-range", type=float, nargs=2, metavar=("LO", "HI"), default=None,
                   help="the alpha interval of the search (default 0.4 0.6)")
    g.add_argument("--alpha-tol", type=float, default=None, help="golden-section tolerance on alpha (default 0.002)")
    g.add_argument("--beta-grid", type=float, nargs=3, metavar=("LO", "HI", "STEP"), default=None,
                   help="the uniform beta grid (default 0.5 3.5 0.2)")
    p.add_argument("--demo-models", nargs="?", const="world", default=None, choices=DEMO_MODELS,
                   help="built-in tiny models instead of checkpoints: 'world' (the default when given bare: trained on "
                        "the demo world, vmdiff_jax/assets/world) or 'random' (random weights, for testing the machinery)")
    return p


def _model_flags() -> argparse.ArgumentParser:
    """The flags choosing and placing the real models: fuse, batch."""
    from vmdiff_jax.nn.math import ATTENTION_IMPLS

    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--weights", default=None, help="folder of checkpoints (default: ./weights, then the HF cache)")
    p.add_argument("--flux", metavar="FILE", default=None,
                   help="a FLUX transformer checkpoint (.safetensors) to use instead of the one found in --weights")
    p.add_argument("--locator", choices=("dino", "whole", "grounding"), default="dino", help="object locator for the score's crops")
    p.add_argument("--dtype", choices=DTYPES, default="auto",
                   help="parameter dtype (auto: bf16 on accelerators, f32 on CPU; fp8: FLUX weights in float8)")
    p.add_argument("--fsdp", type=_auto_or_positive("--fsdp"), default="auto",
                   help="FSDP ways for the parameters over local devices (auto: only when FLUX does not fit one device)")
    p.add_argument("--attention", choices=ATTENTION_IMPLS, default="auto",
                   help="FLUX attention kernel (auto: per backend; cudnn: flash attention on NVIDIA GPUs, bf16; splash: TPU)")
    return p


def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="vmdiff", description="VMDiff object fusion on FLUX.1 Krea [dev] + Redux, in JAX.")
    sub = ap.add_subparsers(dest="cmd", required=True, parser_class=_Parser)
    run, models = _run_flags(), _model_flags()

    f = sub.add_parser("fuse", parents=[run, models], help="fuse two (or more: order-invariant) object photos into one object")
    f.add_argument("images", nargs="+", metavar="IMG", help="two or more images (three or more: VMDiff.fuse_many)")
    f.add_argument("--labels", nargs="+", metavar="LABEL", help="what each IMG shows, in order (default: the file names)")
    f.add_argument("--label1", help="what the first IMG shows (default: its file name)")
    f.add_argument("--label2", help="what the second IMG shows (default: its file name)")

    sub.add_parser("demo", parents=[run], help="fuse the demo world's example pair (red circle + blue square) with its "
                   "trained tiny models (--demo-models random: random weights on the example photos)")

    b = sub.add_parser("batch", parents=[run, models], help="every ordered pair of a folder's images (IIOF protocol), resumable")
    b.add_argument("images_dir")
    b.add_argument("--unordered", action="store_true", help="unordered pairs only")
    b.add_argument("--pairs-per-call", type=_auto_or_positive("--pairs-per-call"), default="auto",
                   help="pairs whose candidates share one model call (auto: as many as fit)")

    pl = sub.add_parser("plan", help="compile a run's stages for a TPU slice (no TPU needed: libtpu's compiler) "
                        "and report per-chip memory, FLOPs, collectives, compile times and predicted throughput")
    pl.add_argument("--topology", required=True, choices=PLAN_TOPOLOGIES, help="the TPU slice")
    pl.add_argument("--stages", nargs="+", choices=PLAN_STAGES, default=list(PLAN_STAGES), help="a subset of the stages")
    pl.add_argument("--dtype", choices=("bf16", "fp8"), default="bf16", help="FLUX weights (the rest bf16)")
    pl.add_argument("--size", type=int, default=512, help="working resolution")
    pl.add_argument("--steps", type=int, default=20, help="denoising steps")
    pl.add_argument("--fsdp", type=_auto_or_positive("--fsdp"), default="auto", help="FSDP ways (auto: FLUX under 60%% of HBM)")
    pl.add_argument("--pairs-per-call", type=_auto_or_positive("--pairs-per-call"), default="auto",
                    help="pairs a call (auto: compile 1, extrapolate the compiled temporaries to what fits)")
    pl.add_argument("--attention", choices=("auto", "xla", "chunked", "splash"), default="auto",
                    help="FLUX attention for the target (auto: the target's kernel, splash on TPU)")
    pl.add_argument("--json", action="store_true", help="print one JSON object instead of the lines")

    c = sub.add_parser("convert", help="checkpoint tools")
    c.add_argument("--check", metavar="PATH", required=True, help="check a checkpoint's keys, shapes and dtypes from its header alone")
    c.add_argument("--kind", default=None, help="checkpoint kind (default: detected from the keys)")
    return ap

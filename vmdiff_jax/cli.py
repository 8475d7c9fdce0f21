"""The `vmdiff` command: fuse, demo, batch, convert --check.

Bad input ends with one line on stderr (`vmdiff: error: ...`) and exit code 2; outputs
are written under temporary names and renamed, so nothing is left half-written.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

EXIT_BAD_INPUT = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2 (argparse prints usage + message by default)
        self.exit(EXIT_BAD_INPUT, f"vmdiff: error: {message}\n")


def _common_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="output folder (created if needed)")
    p.add_argument("--seed", type=int, default=0, help="PRNG seed (same seed + device: bit-identical fused.png)")
    p.add_argument("--schedule", choices=("paper", "authors"), default="paper", help="EAA search schedule")
    p.add_argument("--steps", type=int, default=20, help="denoising steps (BNoise stops at step 11 of 20, scaled)")
    p.add_argument("--size", type=int, default=512, help="working resolution (multiple of 16)")
    p.add_argument("--batch", type=int, default=1, help="candidates per search round (1 = golden section with reuse)")
    p.add_argument("--slerp", choices=("slerp", "lerp", "authors"), default="slerp", help="embedding interpolation")
    p.add_argument("--score-text", choices=("paper", "authors"), default="paper",
                   help="CLIP text of the score: the sentence (paper) or the authors' list repr")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _fsdp_arg(v: str):
    if v == "auto":
        return v
    try:
        n = int(v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--fsdp must be 'auto' or a positive integer, got {v!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"--fsdp must be 'auto' or a positive integer, got {v!r}")
    return n


def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="vmdiff", description="VMDiff object fusion on FLUX.1 Krea [dev] + Redux, in JAX.")
    sub = ap.add_subparsers(dest="cmd", required=True, parser_class=_Parser)

    f = sub.add_parser("fuse", help="fuse two object photos into one object")
    f.add_argument("img1")
    f.add_argument("img2")
    f.add_argument("--label1", help="what IMG1 shows (default: its file name)")
    f.add_argument("--label2", help="what IMG2 shows (default: its file name)")
    f.add_argument("--weights", default=None, help="folder of checkpoints (default: ./weights, then the HF cache)")
    f.add_argument("--locator", choices=("dino", "whole", "grounding"), default="dino", help="object locator for the score's crops")
    f.add_argument("--dtype", choices=("auto", "bfloat16", "float32"), default="auto", help="parameter dtype (auto: bf16 on accelerators, f32 on CPU)")
    f.add_argument("--fsdp", type=_fsdp_arg, default="auto", help="FSDP ways for the parameters over local devices (auto: only when FLUX does not fit one device)")
    f.add_argument("--attention", choices=("xla", "cudnn"), default="xla", help="FLUX attention kernel (cudnn: flash attention on NVIDIA GPUs, bf16)")
    _common_run_args(f)

    d = sub.add_parser("demo", help="the whole pipeline with tiny random-weight models on the built-in example photos")
    _common_run_args(d)
    d.set_defaults(size=128)

    b = sub.add_parser("batch", help="every ordered pair of a folder's images (IIOF protocol), resumable")
    b.add_argument("images_dir")
    b.add_argument("--unordered", action="store_true", help="unordered pairs only")
    b.add_argument("--weights", default=None)
    b.add_argument("--demo-models", action="store_true", help="tiny random-weight models (for testing the runner)")
    b.add_argument("--tiny-search", action="store_true", help="EAAConfig.tiny(): one round, coarse tolerances (smoke runs, tests)")
    b.add_argument("--locator", choices=("dino", "whole", "grounding"), default="dino")
    b.add_argument("--dtype", choices=("auto", "bfloat16", "float32"), default="auto")
    b.add_argument("--fsdp", type=_fsdp_arg, default="auto")
    b.add_argument("--attention", choices=("xla", "cudnn"), default="xla")
    _common_run_args(b)

    c = sub.add_parser("convert", help="checkpoint tools")
    c.add_argument("--check", metavar="PATH", required=True, help="check a checkpoint's keys, shapes and dtypes from its header alone")
    c.add_argument("--kind", default=None, help="checkpoint kind (default: detected from the keys)")
    return ap


def _errors():
    from vmdiff_jax.images import InputError
    from vmdiff_jax.checkpoints import CheckpointError, MissingWeights

    return (InputError, CheckpointError, MissingWeights)


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # --help (0) or a usage error (2, already printed in one line)
        return int(e.code or 0)
    try:
        if args.cmd == "convert":
            return _convert(args)
        if args.cmd in ("fuse", "demo"):
            return _fuse(args)
        if args.cmd == "batch":
            from vmdiff_jax.batch import run_batch_cli

            return run_batch_cli(args)
    except _errors() as e:
        print(f"vmdiff: error: {str(e).splitlines()[0] if str(e) else type(e).__name__}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("vmdiff: interrupted; nothing half-written was left behind", file=sys.stderr)
        return 130
    return 0


def _convert(args) -> int:
    from vmdiff_jax.checkpoints.registry import check_checkpoint

    kind, problems, n = check_checkpoint(args.check, args.kind)
    if problems:
        print(f"{args.check}: {kind}: {len(problems)} problem(s); first ones:")
        for p in problems[:10]:
            print(f"  {p}")
        return EXIT_BAD_INPUT
    print(f"{args.check}: {kind}: OK ({n} tensors match the model: keys, shapes, dtypes)")
    return 0


def _validate_run_args(args) -> None:
    from vmdiff_jax.images import InputError

    if args.steps < 2:
        raise InputError(f"--steps must be at least 2 (got {args.steps})")
    if args.size < 32 or args.size % 16 or args.size > 2048:
        raise InputError(f"--size must be a multiple of 16 between 32 and 2048 (got {args.size})")
    if args.batch < 1 or args.batch > 64:
        raise InputError(f"--batch must be between 1 and 64 (got {args.batch})")


def _fuse(args) -> int:
    from vmdiff_jax.images import check_label, ensure_writable_dir, label_from_path, load_image

    _validate_run_args(args)
    if args.cmd == "demo":
        from vmdiff_jax.demo import example_images

        (p1, l1), (p2, l2) = example_images()
        img1, img2 = load_image(p1, args.size), load_image(p2, args.size)
    else:
        img1, img2 = load_image(args.img1, args.size), load_image(args.img2, args.size)
        l1 = check_label(args.label1 if args.label1 is not None else label_from_path(args.img1), "--label1")
        l2 = check_label(args.label2 if args.label2 is not None else label_from_path(args.img2), "--label2")
    out = ensure_writable_dir(args.out)

    if args.cmd != "demo":
        from vmdiff_jax.checkpoints.weights import find_weights

        weights = find_weights(args.weights if args.weights is not None else ("weights" if os.path.isdir("weights") else None))

    from vmdiff_jax.pipeline import VMDiff, enable_compilation_cache

    enable_compilation_cache()
    if args.cmd == "demo":
        pipe = VMDiff.demo(seed=0, num_steps=args.steps, size=args.size, slerp_method=args.slerp,
                           score_text=args.score_text)
    else:
        pipe = VMDiff.from_pretrained(weights, dtype=args.dtype, num_steps=args.steps, size=args.size,
                                      slerp_method=args.slerp, locator=args.locator, fsdp=args.fsdp,
                                      score_text=args.score_text, attention=None if args.attention == "xla" else args.attention)
    result = pipe.fuse(img1, img2, l1, l2, seed=args.seed, schedule=args.schedule, batch=args.batch,
                       progress=not args.no_progress)
    result.save(out, extra={"command": "vmdiff " + " ".join(sys.argv[1:]) if argv_is_cli() else args.cmd})
    print(f"fused {l1!r} + {l2!r}: S = {result.score:.3f} (alpha {result.alpha:.4f}, beta {result.beta[0]:.1f}/{result.beta[1]:.1f}), "
          f"{result.calls} image-model-calls, {result.timings['total_s']:.1f} s -> {Path(out) / 'fused.png'}")
    if args.cmd == "demo":
        print("note: tiny RANDOM-WEIGHT models (the demo proves the machinery; real checkpoints give real images: see weights/README.md)")
    return 0


def argv_is_cli() -> bool:
    return Path(sys.argv[0]).name in ("vmdiff", "cli.py")


if __name__ == "__main__":
    sys.exit(main())

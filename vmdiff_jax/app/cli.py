"""The `vmdiff` command: fuse, demo, batch, plan, convert --check (its flags: flags.py).

Bad input ends with one line on stderr (`vmdiff: error: ...`) and exit code 2, before
anything is written. A run's results replace `--out` whole (outputs.write_result_set):
the folder holds the complete old set or the complete new one. Ctrl-C (SIGINT) and
SIGTERM always stop a run: exit 130 / 143, one line, nothing written (interrupts.py).

This module imports only the standard library at the top, so `--help`, usage errors and
the signal handlers come before JAX is imported; the heavy modules are imported where used.
"""

from __future__ import annotations

import errno
import math
import os
import shlex
import signal
import sys
from pathlib import Path

from vmdiff_jax.app import interrupts
from vmdiff_jax.app.flags import (BATCH_MAX, DEMO_SIZES, DEMO_WEIGHT_SEED, EXIT_BAD_INPUT, OBJECTS_MAX, ROUNDS_MAX, SIZE_MAX,
                                  SIZE_MIN, STEPS_MAX, STEPS_MIN, build_parser)


def _errors():
    from vmdiff_jax.app.claims import LeaseError
    from vmdiff_jax.app.distributed import DistributedError
    from vmdiff_jax.app.inputs import InputError
    from vmdiff_jax.checkpoints import CheckpointError, MissingWeights
    from vmdiff_jax.nn.math import AttentionUnavailable
    from vmdiff_jax.app.outputs import OutputError

    return (InputError, OutputError, CheckpointError, MissingWeights, AttentionUnavailable, LeaseError, DistributedError)


def _one_line(e: BaseException) -> str:
    """The message's first line, every control character escaped (inputs.displayable)."""
    from vmdiff_jax.app.inputs import displayable

    return displayable(str(e).splitlines()[0] if str(e).strip() else type(e).__name__)


def main(argv: list[str] | None = None) -> int:
    """The command; argv None: this process is the command (sys.argv), which ends at once after an
    interrupt, and whose handlers stay until it exits (a signal after the last line gives one line too)."""
    own_process = argv is None
    argv = sys.argv[1:] if own_process else list(argv)
    with interrupts.handled():
        state = {"cmd": None}
        try:
            try:
                code = _run(argv, state)
            except _errors() as e:
                print(f"vmdiff: error: {_one_line(e)}", file=sys.stderr)
                code = EXIT_BAD_INPUT
            except OSError as e:
                if e.errno not in (errno.ENOSPC, errno.EDQUOT):
                    raise
                print(f"vmdiff: error: no space left on the device ({_one_line(e)})", file=sys.stderr)
                code = EXIT_BAD_INPUT
            if own_process:  # the last line is out: a signal from now on says so and exits (interrupts.ended)
                sys.stdout.flush()
                sys.stderr.flush()
                interrupts.ended()
            return code
        except KeyboardInterrupt as e:  # interrupts.Interrupted (SIGINT / SIGTERM), or a bare Ctrl-C
            interrupts.settle()  # a second Ctrl-C now cannot cut this message short
            sig = e.signum if isinstance(e, interrupts.Interrupted) else signal.SIGINT
            kept = ("completed pairs are kept whole, no other result was written" if state["cmd"] == "batch"
                    else "no result was written")
            print(f"vmdiff: interrupted by {signal.Signals(sig).name}: {kept}", file=sys.stderr)
            if own_process:  # skip the interpreter's teardown: XLA's threads, cut short mid-work, can crash it
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(128 + sig)
            return 128 + sig


def _run(argv: list[str], state: dict) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # --help (0) or a usage error (2, already printed in one line)
        return int(e.code or 0)
    args.argv = argv
    state["cmd"] = args.cmd
    if args.cmd == "demo" and args.demo_models is None:
        args.demo_models = "world"
    if args.cmd != "convert" and args.size is None:
        args.size = DEMO_SIZES.get(args.demo_models, 512)
    code = _dispatch(args)
    interrupts.check()  # an interrupt swallowed on the way still stops the run
    return code


def _dispatch(args) -> int:
    if args.cmd == "convert":
        return _convert(args)
    if args.cmd == "plan":
        return _plan(args)
    if args.cmd in ("fuse", "demo"):
        return _fuse(args)
    return _batch(args)


def _plan(args) -> int:
    """vmdiff plan: the stages compiled for a TPU slice (app/plan.py)."""
    import importlib.util

    from vmdiff_jax.app.inputs import InputError

    if importlib.util.find_spec("libtpu") is None:
        raise InputError('vmdiff plan needs the TPU compiler (libtpu): pip install -e ".[tpu]" (or pip install "jax[tpu]")')
    if args.size < SIZE_MIN or args.size % 16 or args.size > SIZE_MAX:
        raise InputError(f"--size must be a multiple of 16 between {SIZE_MIN} and {SIZE_MAX} (got {args.size})")
    if not STEPS_MIN <= args.steps <= STEPS_MAX:
        raise InputError(f"--steps must be between {STEPS_MIN} and {STEPS_MAX} (got {args.steps})")
    from vmdiff_jax.app import plan

    try:
        out = plan.plan(args.topology, stages_=tuple(args.stages), dtype=args.dtype, size=args.size, steps=args.steps,
                        fsdp=args.fsdp, pairs_per_call=args.pairs_per_call, attention=args.attention,
                        log=(lambda s: None) if args.json else (lambda s: print(s, flush=True)))
    except ValueError as e:
        raise InputError(str(e)) from None
    print(plan.to_json(out) if args.json else plan.report(out))
    return 0


def _batch(args) -> int:
    """vmdiff batch: every pair of a folder's images, P pairs per call, resumable (batch.py).

    Every check comes before anything is loaded or created: the flags, the environment
    (claim lease, distributed settings), the folder, and the settings of a batch already in
    --out (a rerun with other settings is refused, batch_settings.py)."""
    from vmdiff_jax.app import batch, batch_settings, claims, distributed
    from vmdiff_jax.app.image_pairs import list_images
    from vmdiff_jax.app.inputs import InputError, ensure_writable_dir

    _validate_run_args(args)
    if args.pairs_per_call != "auto" and args.pairs_per_call < 1:
        raise InputError(f"--pairs-per-call must be 'auto' or a positive integer (got {args.pairs_per_call})")
    lease = claims.lease_s()
    joining = distributed.from_env()
    notices: list[str] = []
    images = list_images(args.images_dir, notices)
    pid, count = distributed.initialize(joining)  # before any other JAX work
    if not args.demo_models:
        _check_devices(args)  # --fsdp / --attention / --dtype against this machine, then the checkpoints
    weights = None if args.demo_models else _weights(args)
    settings = batch_settings.settings_of(args, weights, _batch_dtype(args))
    batch_settings.check(Path(args.out), settings)
    for n in notices if pid == 0 else ():
        print(f"vmdiff: notice: {n}", file=sys.stderr)
    pipe = build_pipeline(args)
    out = ensure_writable_dir(args.out)  # created once the models are found and loaded
    batch_settings.record(out, settings)
    ppc = args.pairs_per_call if args.pairs_per_call != "auto" else batch.auto_pairs_per_call(pipe, args.batch)
    counts = batch.run_batch(pipe, images, out, unordered=args.unordered, seed=args.seed, schedule=args.schedule,
                             batch=args.batch, progress=not args.no_progress, process_index=pid, process_count=count,
                             pairs_per_call=ppc, settings=settings, lease_s=lease)
    return EXIT_BAD_INPUT if batch.finish_run(out, images, args.unordered, counts, pid, count, ppc, settings) else 0


def _batch_dtype(args) -> str:
    """The parameter dtype a batch's models get (--dtype auto resolved as VMDiff.from_pretrained does)."""
    if args.demo_models:
        return "float32"  # the demo models are float32 whatever --dtype says
    if args.dtype != "auto":
        return args.dtype
    import jax

    return "float32" if jax.default_backend() == "cpu" else "bfloat16"


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
    """The flags every fusing command takes: --out given and not a file, the numbers in range
    (InputError naming the flag)."""
    from vmdiff_jax.app.inputs import InputError, displayable

    if not args.out.strip():
        raise InputError(f"--out is empty ({args.out!r}): give the folder the results go to")
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise InputError(f"{displayable(args.out)}: --out exists and is not a folder")
    if not STEPS_MIN <= args.steps <= STEPS_MAX:
        raise InputError(f"--steps must be between {STEPS_MIN} and {STEPS_MAX} (got {args.steps})")
    if args.size < SIZE_MIN or args.size % 16 or args.size > SIZE_MAX:
        raise InputError(f"--size must be a multiple of 16 between {SIZE_MIN} and {SIZE_MAX} (got {args.size})")
    if args.batch < 1 or args.batch > BATCH_MAX:
        raise InputError(f"--batch must be between 1 and {BATCH_MAX} (got {args.batch})")


def _check_devices(args) -> None:
    """--fsdp against the local devices, --attention and --dtype against this machine."""
    from vmdiff_jax.app.inputs import InputError

    if args.fsdp != "auto":
        import jax

        n = len(jax.local_devices())
        if args.fsdp > n or n % args.fsdp:
            raise InputError(f"--fsdp {args.fsdp} must divide the number of local devices, {n} here "
                             f"({jax.default_backend()}); use --fsdp auto")
    from vmdiff_jax.nn.math import check_attention_impl

    check_attention_impl(args.attention, {"bfloat16": "bfloat16", "float32": "float32"}.get(args.dtype))


def _weights(args) -> dict[str, Path]:
    """The checkpoints: --weights (default ./weights, then the HF cache); --flux FILE replaces FLUX's."""
    from vmdiff_jax.app.inputs import InputError
    from vmdiff_jax.checkpoints.weights import find_weights as find

    given = {}
    if args.flux is not None:
        if not os.path.isfile(args.flux):
            raise InputError(f"{args.flux}: --flux names no such checkpoint file")
        given["flux"] = Path(args.flux)
    folder = args.weights if args.weights is not None else ("weights" if os.path.isdir("weights") else None)
    return find(folder, given=given)


def search_config(args):
    """The EAAConfig the search flags give (--tiny-search: EAAConfig.tiny() as the base); the
    threshold is left to the models when --threshold is not given (VMDiff.demo's world value)."""
    import dataclasses

    from vmdiff_jax.app.inputs import InputError
    from vmdiff_jax.method.search import EAAConfig, uniform_grid

    cfg = EAAConfig.tiny() if getattr(args, "tiny_search", False) else EAAConfig()
    over: dict = {"ablation": args.ablation}
    if args.threshold is not None:
        if not math.isfinite(args.threshold):
            raise InputError(f"--threshold must be a finite number (got {args.threshold})")
        over["threshold"] = args.threshold
    if args.rounds is not None:
        if not 1 <= args.rounds <= ROUNDS_MAX:
            raise InputError(f"--rounds must be between 1 and {ROUNDS_MAX} (got {args.rounds})")
        over["max_rounds"] = args.rounds
    if args.alpha_range is not None:
        lo, hi = args.alpha_range
        if not (0.0 <= lo < hi <= 1.0):
            raise InputError(f"--alpha-range must be LO HI with 0 <= LO < HI <= 1 (got {lo} {hi})")
        over |= {"alpha_lo": lo, "alpha_hi": hi}
    if args.alpha_tol is not None:
        if not 0.0 < args.alpha_tol < 1.0:
            raise InputError(f"--alpha-tol must be in (0, 1) (got {args.alpha_tol})")
        over["alpha_tol"] = args.alpha_tol
    if args.beta_grid is not None:
        lo, hi, step = args.beta_grid
        if not (0.0 < lo < hi and step > 0 and math.isfinite(hi) and (hi - lo) / step <= 1000):
            raise InputError(f"--beta-grid must be LO HI STEP with 0 < LO < HI, STEP > 0, at most 1000 points "
                             f"(got {lo} {hi} {step})")
        over["beta_grid"] = uniform_grid(lo, hi, step)
    return dataclasses.replace(cfg, **over)


def build_pipeline(args):
    """The VMDiff pipeline the flags describe: tiny random-weight models (demo, --demo-models),
    else the checkpoints found (after checking --dtype, --fsdp and --attention against this machine)."""
    demo = args.demo_models
    if not demo:
        _check_devices(args)
        weights = _weights(args)
    from vmdiff_jax.engine.pipeline import VMDiff, enable_compilation_cache

    eaa_cfg = search_config(args)
    enable_compilation_cache()
    common = dict(num_steps=args.steps, size=args.size, slerp_method=args.slerp, score_text=args.score_text, eaa_cfg=eaa_cfg)
    if demo:
        return VMDiff.demo(seed=DEMO_WEIGHT_SEED, random=demo == "random", locator=getattr(args, "locator", "dino"),
                           mesh=_demo_mesh(args), threshold=args.threshold, **common)
    return VMDiff.from_pretrained(weights, dtype=args.dtype, locator=args.locator, fsdp=args.fsdp,
                                  attention=args.attention, **common)


def _demo_mesh(args):
    """The demo models' mesh over the local devices: --fsdp N ways (auto: 1), data the rest."""
    import jax

    from vmdiff_jax.engine import sharding
    from vmdiff_jax.app.inputs import InputError

    n_dev = len(jax.local_devices())
    fsdp = getattr(args, "fsdp", "auto")
    fsdp = 1 if fsdp == "auto" else fsdp
    if n_dev % fsdp:
        raise InputError(f"--fsdp {fsdp} must divide the number of local devices, {n_dev} here")
    return sharding.make_mesh(data=n_dev // fsdp, fsdp=fsdp, devices=jax.local_devices()) if n_dev > 1 else None


def label_notices(pipe, labels: tuple[str, str]) -> list[str]:
    """Notices for labels CLIP cuts: in the FLUX prompt (CLIP-L) and in the score's text (bigG)."""
    from vmdiff_jax.app.inputs import label_notices as notices

    return notices(pipe, labels)


def _fuse_inputs(args) -> tuple[list, list[str]]:
    """fuse's image paths and labels: --labels, or --label1 / --label2 for the first two, else the
    file names (InputError naming the flag)."""
    from vmdiff_jax.app.inputs import InputError, check_label, label_from_path

    paths = list(args.images)
    if len(paths) < 2:
        raise InputError(f"fuse needs at least two images, got {len(paths)}")
    if len(paths) > OBJECTS_MAX:
        raise InputError(f"fuse takes at most {OBJECTS_MAX} images, got {len(paths)}")
    if len(paths) > 2 and args.schedule != "paper":
        raise InputError(f"--schedule {args.schedule} follows the authors' two-object code; {len(paths)} images run "
                         f"--schedule paper")
    if args.labels is not None:
        if args.label1 is not None or args.label2 is not None:
            raise InputError("give --labels or --label1 / --label2, not both")
        if len(args.labels) != len(paths):
            raise InputError(f"--labels gives {len(args.labels)} labels for {len(paths)} images: give one per image")
        return paths, [check_label(lab, f"--labels (label {k})") for k, lab in enumerate(args.labels, 1)]
    given = {0: (args.label1, "--label1"), 1: (args.label2, "--label2")}
    labels = [check_label(given[k][0], given[k][1]) if k in given and given[k][0] is not None else label_from_path(p)
              for k, p in enumerate(paths)]
    return paths, labels


def _fuse(args) -> int:
    from vmdiff_jax.app.inputs import displayable, load_image
    from vmdiff_jax.app.outputs import check_out_dir
    from vmdiff_jax.app.report import RESULT_FILES, save_result

    _validate_run_args(args)
    out = check_out_dir(args.out, RESULT_FILES)  # nothing is created before the results are written
    if args.cmd == "demo":
        from vmdiff_jax.engine.demo import example_images

        paths, labels = (list(x) for x in zip(*example_images(random=args.demo_models == "random")))
    else:
        paths, labels = _fuse_inputs(args)
    notices: list[str] = []
    images = [load_image(p, args.size, notices) for p in paths]
    pipe = build_pipeline(args)
    notices += label_notices(pipe, labels)
    for n in notices:
        print(f"vmdiff: notice: {n}", file=sys.stderr)
    result = pipe.fuse_many(images, labels, seed=args.seed, schedule=args.schedule, batch=args.batch,
                            progress=not args.no_progress)
    with interrupts.deferred():
        save_result(result, out, extra={"command": shlex.join(["vmdiff", *args.argv]), "notices": notices})
        interrupts.settle()  # committed: a signal from now on comes after the run's end
    if result.objects == 2:
        found = f"alpha {result.alpha:.4f}, beta {result.beta[0]:.1f}/{result.beta[1]:.1f}"
    else:
        found = f"weights {'/'.join(f'{w:.3f}' for w in result.weights)}, beta {'/'.join(f'{b:.1f}' for b in result.beta)}"
    print(f"fused {' + '.join(repr(lab) for lab in labels)}: S = {result.score:.3f} ({found}), "
          f"{result.calls} image-model-calls, {result.timings['total_s']:.1f} s -> {displayable(str(out / 'fused.png'))}")
    if args.demo_models == "random":
        print("note: tiny RANDOM-WEIGHT models (they prove the machinery; real checkpoints give real images: see weights/README.md)")
    elif args.demo_models == "world":
        print("note: the demo world's tiny models (flat shapes on a light background, trained here: vmdiff_jax/world); "
              "real checkpoints give real images: see weights/README.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())

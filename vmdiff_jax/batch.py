"""`vmdiff batch`: the IIOF protocol over a folder of object images, resumable and multi-process.

Every ordered pair (i, j), i != j (or unordered with --unordered) is fused with its own
seed derived from (seed, i, j), so a pair's result does not depend on which process or
device ran it. Pair p goes to process p % process_count; within a process, pairs are spread
over the local devices (one pipeline per device, run concurrently) when one candidate per
round is searched and the parameters fit one device; otherwise all devices share each pair's
candidates (--batch N, or FSDP). Each pair's outputs land in
out/pairs/<i>_<j>_<name1>__<name2>/ with report.json written last and atomically: a pair
whose report.json exists is complete and is skipped on a rerun (after kill -9 too).
The results table (results.csv, results.json) with SS and B_sim is rebuilt from the
reports at the end.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import os
import time
from pathlib import Path

import numpy as np

from vmdiff_jax.images import InputError, atomic_write_bytes, ensure_writable_dir, label_from_path

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
COLUMNS = ("pair", "image1", "image2", "label1", "label2", "S", "d1", "d2", "n1", "n2", "b_sim", "alpha", "beta1",
           "beta2", "calls", "rounds", "time_s")


def list_images(folder: str | os.PathLike) -> list[Path]:
    """The folder's image files, sorted by name (at least two)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: no such folder of images")
    images = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if len(images) < 2:
        raise InputError(f"{folder}: needs at least two images ({', '.join(IMAGE_SUFFIXES)}), found {len(images)}")
    return images


def pairs_of(n: int, unordered: bool = False) -> list[tuple[int, int]]:
    """Index pairs: all ordered (i != j), or i < j."""
    if unordered:
        return list(itertools.combinations(range(n), 2))
    return list(itertools.permutations(range(n), 2))


def pair_dir(out: Path, images: list[Path], i: int, j: int) -> Path:
    return out / "pairs" / f"{i:03d}_{j:03d}_{images[i].stem}__{images[j].stem}"


def pair_seed(seed: int, i: int, j: int) -> int:
    return (seed * 1_000_003 + i * 1009 + j) % (2**31 - 1)


def is_done(d: Path) -> bool:
    return (d / "report.json").is_file()


def run_batch(pipe, images: list[Path], out: Path, *, unordered: bool = False, seed: int = 0, schedule: str = "paper",
              batch: int = 1, progress: bool = True, process_index: int = 0, process_count: int = 1, size: int = 512) -> dict:
    """Fuse this process's share of the pairs that are not done yet; return counts.

    pipe: one VMDiff, or a list of them (one per local device): then the pending pairs are
    spread over them round-robin and run concurrently, one thread per device.
    """
    import threading

    from vmdiff_jax.images import load_image

    pipes = list(pipe) if isinstance(pipe, (list, tuple)) else [pipe]
    todo = [(p, i, j) for p, (i, j) in enumerate(pairs_of(len(images), unordered)) if p % process_count == process_index]
    pending = [(p, i, j) for p, i, j in todo if not is_done(pair_dir(out, images, i, j))]
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(todo), initial=len(todo) - len(pending), desc=f"pairs (process {process_index})", unit="pair")
    lock = threading.Lock()
    cache: dict[int, np.ndarray] = {}

    def image(k):
        with lock:
            if k not in cache:
                cache[k] = load_image(images[k], size)
            return cache[k]

    def work(worker: int):
        for p, i, j in pending[worker::len(pipes)]:
            a, b = image(i), image(j)
            d = pair_dir(out, images, i, j)
            d.mkdir(parents=True, exist_ok=True)
            for stale in d.glob(".*.tmp"):  # left by a run killed while writing this pair
                stale.unlink(missing_ok=True)
            l1, l2 = label_from_path(images[i]), label_from_path(images[j])
            t = time.perf_counter()
            r = pipes[worker].fuse(a, b, l1, l2, seed=pair_seed(seed, i, j), schedule=schedule, batch=batch)
            r.save(d, extra={"pair": p, "image1": images[i].name, "image2": images[j].name,
                             "pair_time_s": time.perf_counter() - t})
            if bar is not None:
                with lock:
                    bar.update(1)

    if len(pipes) == 1:
        work(0)
    else:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(len(pipes)) as ex:
            for f in [ex.submit(work, w) for w in range(len(pipes))]:
                f.result()  # re-raise a worker's error
    if bar is not None:
        bar.close()
    return {"assigned": len(todo), "ran": len(pending), "skipped": len(todo) - len(pending), "workers": len(pipes)}


def per_device_pipelines(pipe, batch: int):
    """One pipeline per local device when that is the better use of them: several devices, one
    candidate per search round, and parameters replicated (no FSDP). Else [pipe]."""
    import jax

    from vmdiff_jax import sharding

    devices = jax.local_devices()
    fsdp = pipe.mesh.shape[sharding.FSDP] if pipe.mesh is not None else 1
    if len(devices) < 2 or batch > 1 or fsdp > 1:
        return [pipe]
    return [pipe.on_device(d) for d in devices]


def collect(out: Path, dirs: list[Path] | None = None) -> list[dict]:
    """One row per completed pair, from the pairs' report.json files, sorted by pair index.

    dirs: the pair folders of this run (default: every folder under out/pairs), so that a
    reused --out holding other pairs (another image set, ordered vs --unordered) is not mixed in.
    """
    rows = []
    reports = sorted((out / "pairs").glob("*/report.json")) if dirs is None else [d / "report.json" for d in dirs]
    for rep in reports:
        if not rep.is_file():
            continue
        r = json.loads(rep.read_text())
        s = r["subscores"]
        rows.append({
            "pair": r.get("pair"), "image1": r.get("image1"), "image2": r.get("image2"),
            "label1": r["labels"][0], "label2": r["labels"][1], "S": r["score"], "d1": s["d1"], "d2": s["d2"],
            "n1": s["n1"], "n2": s["n2"], "b_sim": r["b_sim"], "alpha": r["parameters"]["alpha"],
            "beta1": r["parameters"]["beta1"], "beta2": r["parameters"]["beta2"], "calls": r["calls"],
            "rounds": r["rounds"], "time_s": r.get("pair_time_s", r["timings"]["total_s"]),
        })
    rows.sort(key=lambda x: (x["pair"] is None, x["pair"]))
    return rows


def write_table(out: Path, rows: list[dict]) -> dict:
    """results.csv and results.json (rows + aggregates SS = mean S, B_sim = mean b_sim), atomically."""
    agg = {
        "pairs": len(rows),
        "SS": float(np.mean([r["S"] for r in rows])) if rows else None,
        "B_sim": float(np.mean([r["b_sim"] for r in rows])) if rows else None,
        "calls_per_pair": float(np.mean([r["calls"] for r in rows])) if rows else None,
        "time_per_pair_s": float(np.mean([r["time_s"] for r in rows])) if rows else None,
    }
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS)
    w.writeheader()
    for r in rows:
        w.writerow({k: r[k] for k in COLUMNS})
    atomic_write_bytes(out / "results.csv", buf.getvalue().encode())
    atomic_write_bytes(out / "results.json", (json.dumps({"aggregate": agg, "pairs": rows}, indent=2) + "\n").encode())
    return agg


def _distributed_from_env():
    """jax.distributed.initialize from VMDIFF_COORDINATOR / VMDIFF_NUM_PROCESSES / VMDIFF_PROCESS_ID
    (or JAX's own cluster detection on TPU pods / SLURM when VMDIFF_DISTRIBUTED=auto)."""
    import jax

    if os.environ.get("VMDIFF_COORDINATOR"):
        jax.distributed.initialize(coordinator_address=os.environ["VMDIFF_COORDINATOR"],
                                   num_processes=int(os.environ["VMDIFF_NUM_PROCESSES"]),
                                   process_id=int(os.environ["VMDIFF_PROCESS_ID"]))
    elif os.environ.get("VMDIFF_DISTRIBUTED") == "auto":
        jax.distributed.initialize()
    return jax.process_index(), jax.process_count()


def run_batch_cli(args) -> int:
    from vmdiff_jax.cli import _validate_run_args

    _validate_run_args(args)
    images = list_images(args.images_dir)
    out = ensure_writable_dir(args.out)
    weights = None
    if not args.demo_models:
        from vmdiff_jax.checkpoints.weights import find_weights

        weights = find_weights(args.weights if args.weights is not None else ("weights" if os.path.isdir("weights") else None))
    pid, count = _distributed_from_env()
    from vmdiff_jax.pipeline import VMDiff, enable_compilation_cache

    enable_compilation_cache()
    eaa_cfg = None
    if getattr(args, "tiny_search", False):
        from vmdiff_jax.search import EAAConfig

        eaa_cfg = EAAConfig.tiny()
    if args.demo_models:
        pipe = VMDiff.demo(num_steps=args.steps, size=args.size, slerp_method=args.slerp, locator=args.locator,
                           eaa_cfg=eaa_cfg, score_text=args.score_text)
    else:
        pipe = VMDiff.from_pretrained(weights, dtype=args.dtype, num_steps=args.steps, size=args.size,
                                      slerp_method=args.slerp, locator=args.locator, eaa_cfg=eaa_cfg, fsdp=args.fsdp,
                                      score_text=args.score_text, attention=None if args.attention == "xla" else args.attention)
    pipes = per_device_pipelines(pipe, args.batch)
    counts = run_batch(pipes, images, out, unordered=args.unordered, seed=args.seed, schedule=args.schedule,
                       batch=args.batch, progress=not args.no_progress, process_index=pid, process_count=count,
                       size=args.size)
    if count > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("vmdiff batch done")
    if pid == 0:
        dirs = [pair_dir(out, images, i, j) for i, j in pairs_of(len(images), args.unordered)]
        agg = write_table(out, collect(out, dirs))
        missing = len(dirs) - agg["pairs"]
        if agg["pairs"]:
            print(f"{agg['pairs']} pairs: SS {agg['SS']:.3f}, B_sim {agg['B_sim']:.3f}, "
                  f"{agg['calls_per_pair']:.0f} calls/pair -> {out / 'results.csv'}"
                  + (f" ({missing} of {len(dirs)} pairs not complete yet: rerun to finish)" if missing else ""))
    print(f"process {pid}: ran {counts['ran']}, skipped {counts['skipped']} already complete "
          f"({counts['workers']} pair(s) at a time, one per device)")
    return 0

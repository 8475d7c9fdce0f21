"""`vmdiff batch`: the IIOF protocol over a folder of object images, resumable and multi-process.

Every ordered pair (i, j), i != j (or unordered with --unordered) is fused with its own
seed derived from (seed, i, j), so a pair's result does not depend on which process or
device ran it, nor on how many pairs share its model calls. Pair p goes to process
p % process_count; within a process, `scheduler.run` keeps up to --pairs-per-call pairs
searching at once and packs their candidates into shared calls, split over the local
devices' 'data' axis (parameters replicated, or FSDP over 'fsdp'). Each pair's outputs land
in out/pairs/<i>_<j>_<name1>__<name2>/ with report.json written last and atomically: a pair
whose report.json exists is complete and is skipped on a rerun (after kill -9 too). A pair
is claimed (out/claims/, claims.py) before it is computed, so concurrent runs on one --out
never compute it twice. A pair whose image cannot be read is recorded as failed
(failed.json) and the others go on; exit code 2 if any pair failed. The results table
(results.csv, results.json) with SS and B_sim is rebuilt from the reports at the end.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import os
import sys
from pathlib import Path

import numpy as np

from vmdiff_jax.app.inputs import InputError, atomic_write_bytes, label_from_path

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
COLUMNS = ("pair", "image1", "image2", "label1", "label2", "S", "d1", "d2", "n1", "n2", "b_sim", "alpha", "beta1",
           "beta2", "calls", "rounds", "time_s", "failed_image", "reason")


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
              batch: int = 1, progress: bool = True, process_index: int = 0, process_count: int = 1, size: int = 512,
              pairs_per_call: int = 1) -> dict:
    """Fuse this process's share of the pairs that are not done yet, `pairs_per_call` pairs at a
    time sharing every model call (VMDiff.run_pairs); return counts.

    A pair is claimed (claims.acquire on out/claims/<pair folder>.claim) just before it starts,
    so runs sharing `out` never compute it twice. A pair whose image cannot be read is recorded
    as failed (out/pairs/<pair>/failed.json: image, reason; the image reported once on stderr).
    """
    import jax

    from vmdiff_jax.app import claims
    from vmdiff_jax.app.report import save_result
    from vmdiff_jax.engine.pairs import PairInput
    from vmdiff_jax.engine.scheduler import PairFailed
    from vmdiff_jax.app.inputs import load_image

    pairs = pairs_of(len(images), unordered)
    todo = [p for p in range(len(pairs)) if p % process_count == process_index]
    claim_dir = out / "claims"
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(todo), desc=f"pairs (process {process_index})", unit="pair")
    loaded: dict[int, np.ndarray | InputError] = {}
    bad_image: dict[int, str] = {}  # pair -> the image that failed it
    held: dict[int, Path] = {}
    heartbeat = claims.Heartbeat()
    counts = {"assigned": len(todo), "ran": 0, "skipped": 0, "failed": 0}

    def folder(p: int) -> Path:
        return pair_dir(out, images, *pairs[p])

    def claimed():
        for p in todo:
            d = folder(p)
            claim = claim_dir / f"{d.name}.claim"
            if is_done(d) or not claims.acquire(claim) or is_done(d):  # done, or being done by another run
                counts["skipped"] += 1
                if bar is not None:
                    bar.update(1)
                continue
            held[p] = claim
            heartbeat.add(claim)
            yield p

    def image(k: int) -> np.ndarray:
        if k not in loaded:
            try:
                loaded[k] = load_image(images[k], size)
            except InputError as e:
                loaded[k] = e
                print(f"vmdiff: error: {str(e).splitlines()[0]} (its pairs are recorded as failed)", file=sys.stderr)
        if isinstance(loaded[k], InputError):
            raise loaded[k]
        return loaded[k]

    def inputs(p: int) -> PairInput:
        i, j = pairs[p]
        for k in (i, j):
            try:
                image(k)
            except InputError as e:
                bad_image[p] = images[k].name
                raise PairFailed(str(e)) from None
        return PairInput(image(i), image(j), label_from_path(images[i]), label_from_path(images[j]),
                         jax.random.key(pair_seed(seed, i, j)), pair_seed(seed, i, j))

    def release(p: int) -> None:
        heartbeat.discard(held[p])
        if bar is not None:
            bar.update(1)

    def on_finish(p: int, result) -> None:
        i, j = pairs[p]
        d = folder(p)
        d.mkdir(parents=True, exist_ok=True)
        for stale in d.glob(".*.tmp"):  # left by a run killed while writing this pair
            stale.unlink(missing_ok=True)
        save_result(result, d, extra={"pair": p, "image1": images[i].name, "image2": images[j].name,
                                      "pair_time_s": result.timings["total_s"]})
        (d / "failed.json").unlink(missing_ok=True)
        counts["ran"] += 1
        release(p)

    try:
        stats = pipe.run_pairs(claimed(), inputs, on_finish, schedule=schedule, batch=batch, pairs_per_call=pairs_per_call)
    finally:
        heartbeat.stop()
        if bar is not None:
            bar.close()
    for p, reason in stats.failed:
        i, j = pairs[p]
        d = folder(p)
        d.mkdir(parents=True, exist_ok=True)
        record = {"pair": p, "image1": images[i].name, "image2": images[j].name, "label1": label_from_path(images[i]),
                  "label2": label_from_path(images[j]), "failed_image": bad_image.get(p), "reason": reason}
        atomic_write_bytes(d / "failed.json", (json.dumps(record, indent=2) + "\n").encode())
        claims.release(held[p])  # a later run tries it again
        counts["failed"] += 1
        release(p)
    counts.update(sequential_calls=stats.sequential_calls, real_slots=stats.real_slots, padded_slots=stats.padded_slots,
                  pairs_per_call=pairs_per_call)
    return counts


def auto_pairs_per_call(pipe, batch: int = 1) -> int:
    """Pairs per call from device memory and the mesh: the candidates that fit beside the
    parameters on one device (estimate per candidate: FLUX activations of N + L tokens, 64 live
    hidden-size buffers in the parameter dtype, plus the VAE decoder's full-resolution buffers,
    4 float32 buffers of 128 channels), times the 'data' devices, over the candidates a pair's
    request carries (max(2, batch)); capped at 64. Without a memory figure (CPU): 4 x 'data'."""
    import jax

    from vmdiff_jax.engine import sharding

    per_request = max(2, batch)
    mem = sharding.device_memory_bytes()
    if mem is None:
        return 4 * pipe.data
    flux = pipe.models.flux.cfg
    tokens = pipe.seq_len + pipe.models.redux.siglip.cfg.grid ** 2  # image tokens + Redux context tokens
    itemsize = jax.numpy.dtype(pipe.param_dtype).itemsize
    per_candidate = tokens * flux.hidden_size * itemsize * 64 + pipe.cfg.size ** 2 * 128 * 4 * 4
    fsdp = pipe.mesh.shape[sharding.FSDP] if pipe.mesh is not None else 1
    params = sum(x.size * x.dtype.itemsize for part in pipe.split.parts().values() for x in jax.tree.leaves(part.state))
    free = 0.9 * mem - params / fsdp
    slots = max(1, int(free // per_candidate)) * pipe.data
    return max(1, min(64, slots // per_request))


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
            "threshold": r["settings"]["eaa"]["threshold"],
        })
    rows.sort(key=lambda x: (x["pair"] is None, x["pair"]))
    return rows


def collect_failed(dirs: list[Path]) -> list[dict]:
    """The failed pairs among `dirs` (failed.json and no report.json): pair, images, labels, failed_image, reason."""
    failed = [json.loads((d / "failed.json").read_text()) for d in dirs
              if (d / "failed.json").is_file() and not is_done(d)]
    return sorted(failed, key=lambda x: x["pair"])


def write_table(out: Path, rows: list[dict], failed: list[dict] = (), run: dict | None = None) -> dict:
    """results.csv and results.json (rows, failed pairs, aggregates SS = mean S, B_sim = mean b_sim), atomically.

    run: this run's sequential_calls (jitted model calls issued) and real / padded slots, for
    the aggregate's `sequential_calls` and `mean_occupancy` (real candidates / padded slots).
    Failed pairs are rows of the CSV too, with failed_image and reason and no scores."""
    run = run or {}
    agg = {
        "pairs": len(rows),
        "SS": float(np.mean([r["S"] for r in rows])) if rows else None,
        "B_sim": float(np.mean([r["b_sim"] for r in rows])) if rows else None,
        "calls_per_pair": float(np.mean([r["calls"] for r in rows])) if rows else None,
        "time_per_pair_s": float(np.mean([r["time_s"] for r in rows])) if rows else None,
        "failed": len(failed),
        "sequential_calls": run.get("sequential_calls", 0),
        "mean_occupancy": run["real_slots"] / run["padded_slots"] if run.get("padded_slots") else None,
        "pairs_per_call": run.get("pairs_per_call"),
    }
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS)
    w.writeheader()
    table = [{**r, "failed_image": "", "reason": ""} for r in rows]
    table += [{k: f.get(k, "") for k in COLUMNS} for f in failed]
    for r in sorted(table, key=lambda x: (x["pair"] is None, x["pair"])):
        w.writerow({k: r[k] for k in COLUMNS})
    atomic_write_bytes(out / "results.csv", buf.getvalue().encode())
    failed_json = [{k: f[k] for k in ("pair", "image1", "image2", "failed_image", "reason")} for f in failed]
    atomic_write_bytes(out / "results.json",
                       (json.dumps({"aggregate": agg, "pairs": rows, "failed": failed_json}, indent=2) + "\n").encode())
    return agg


def distributed_from_env():
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


def write_gallery(out: Path, rows: list[dict], failed: list[dict], dirs: list[Path], images: list[Path] = ()) -> Path:
    """out/index.html: the pair grid of this run's completed pairs (fused thumbnails linked to
    their fused.png) and failed pairs, with the input images in the headers."""
    from PIL import Image

    from vmdiff_jax.app.gallery import write_index_html

    def rgb(path: Path) -> np.ndarray:
        with Image.open(path) as im:
            im.thumbnail((256, 256))
            return np.asarray(im.convert("RGB"))

    thumbs, links = {}, {}
    for d in dirs:
        if is_done(d):
            r = json.loads((d / "report.json").read_text(encoding="utf-8"))
            key = (r["image1"], r["image2"])
            thumbs[key] = rgb(d / "fused.png")
            links[key] = (d / "fused.png").relative_to(out).as_posix()
    inputs = {}
    for p in images:
        try:
            inputs[p.name] = rgb(p)
        except Exception:  # an unreadable input is already a failed pair; its header stays empty
            pass
    return write_index_html(out, rows, failed, thumbs, inputs=inputs, links=links)


def finish_run(out: Path, images: list[Path], unordered: bool, counts: dict, pid: int, count: int,
               pairs_per_call: int) -> bool:
    """After this process's pairs: record its counts; process 0 (after every process is done)
    rebuilds results.csv / results.json / index.html from the pair folders and prints the
    summary. True if any pair failed."""
    run_file = out / "runs" / f"process_{pid}.json"
    run_file.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(run_file, json.dumps(counts).encode())
    if count > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("vmdiff batch done")
    failed_any = counts["failed"] > 0
    if pid == 0:
        runs = [json.loads((out / "runs" / f"process_{k}.json").read_text()) for k in range(count)]
        run = {k: sum(r[k] for r in runs) for k in ("sequential_calls", "real_slots", "padded_slots")}
        run["pairs_per_call"] = pairs_per_call
        dirs = [pair_dir(out, images, i, j) for i, j in pairs_of(len(images), unordered)]
        failed = collect_failed(dirs)
        failed_any = failed_any or bool(failed)
        rows = collect(out, dirs)
        agg = write_table(out, rows, failed, run)
        page = write_gallery(out, rows, failed, dirs, images)
        missing = len(dirs) - agg["pairs"] - agg["failed"]
        print(f"{agg['pairs']} pairs" + (f": SS {agg['SS']:.3f}, B_sim {agg['B_sim']:.3f}, "
                                          f"{agg['calls_per_pair']:.0f} calls/pair" if agg["pairs"] else "")
              + (f", {agg['failed']} failed" if agg["failed"] else "") + f" -> {out / 'results.csv'}, {page}"
              + (f" ({missing} of {len(dirs)} pairs not complete yet: rerun to finish)" if missing else ""))
    occupancy = counts["real_slots"] / counts["padded_slots"] if counts["padded_slots"] else 1.0
    print(f"process {pid}: ran {counts['ran']}, skipped {counts['skipped']} already complete or claimed, "
          f"failed {counts['failed']} ({pairs_per_call} pair(s) per call, {counts['sequential_calls']} sequential "
          f"model calls, occupancy {occupancy:.2f})")
    return failed_any

"""`vmdiff batch`: the IIOF protocol over a folder of object images, resumable and multi-process.

Every ordered pair (i, j), i != j (or unordered with --unordered) is fused with its own
seed derived from (seed, i, j) (image_pairs.py), so a pair's result does not depend on which
process or device ran it, nor on how many pairs share its model calls. Pair p goes to
process p % process_count; within a process, `scheduler.run` keeps up to --pairs-per-call
pairs searching at once and packs their candidates into shared calls. Each pair's outputs
land in out/pairs/<bounded name>/ written whole (report.json, fused.png, search.png): a pair
whose report.json carries this batch's settings and its inputs' digests is complete and is
skipped on a rerun (after kill -9 too); the settings themselves are in out/batch.json and a
rerun with other ones is refused (batch_settings.py). A pair is claimed (out/claims/,
claims.py) before it is computed, so concurrent runs never compute it twice. A pair whose
image cannot be read is recorded as failed (failed.json) and the others go on; it is retried
by the next run (failed.json then replaced by the result). The results table
(pairs_table.py) and index.html (gallery.py) are rebuilt from the pair folders at the end.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np

from vmdiff_jax.app import claims
from vmdiff_jax.app.capacity import auto_pairs_per_call  # noqa: F401  (the batch's API)
from vmdiff_jax.app.image_pairs import list_images, pair_dir, pair_seed, pairs_of  # noqa: F401  (the batch's API)
from vmdiff_jax.app.inputs import InputError, atomic_write_bytes, displayable, label_from_path
from vmdiff_jax.app.pairs_table import COLUMNS, collect, collect_failed, write_table  # noqa: F401

HEADER_SIDE = 96  # side of the input thumbnails kept for index.html's headers


def digest(path: Path) -> str | None:
    """sha256 of a file's bytes (None when it cannot be read)."""
    try:
        with open(path, "rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest()
    except OSError:
        return None


def _small(image: np.ndarray, side: int = HEADER_SIDE) -> np.ndarray:
    from PIL import Image

    im = Image.fromarray(np.asarray(image, np.uint8))
    im.thumbnail((side, side))
    return np.asarray(im)


class Pairs:
    """The pairs of one image list and what makes a pair folder count as done: its report's
    batch settings and input digests equal this batch's."""

    def __init__(self, images: list[Path], out: Path, settings: dict, unordered: bool = False):
        self.images, self.out, self.settings = list(images), Path(out), settings
        self.index = pairs_of(len(self.images), unordered)
        self._digests: dict[int, str | None] = {}

    def folder(self, p: int) -> Path:
        return pair_dir(self.out, self.images, *self.index[p])

    def digest(self, k: int) -> str | None:
        if k not in self._digests:
            self._digests[k] = digest(self.images[k])
        return self._digests[k]

    def inputs_record(self, p: int) -> dict:
        i, j = self.index[p]
        return {"image1_sha256": self.digest(i), "image2_sha256": self.digest(j)}

    def done(self, p: int) -> bool:
        rep = self.folder(p) / "report.json"
        if not rep.is_file():
            return False
        try:
            r = json.loads(rep.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return False
        rec = self.inputs_record(p)
        return (isinstance(r, dict) and r.get("batch_settings") == self.settings and r.get("inputs") == rec
                and None not in rec.values())

    def folders(self) -> list[Path]:
        return [self.folder(p) for p in range(len(self.index))]

    def done_folders(self) -> set[Path]:
        return {self.folder(p) for p in range(len(self.index)) if self.done(p)}


class BatchRun:
    """One process's share of a batch (`run_batch`): claims, inputs, notices, results, failures."""

    def __init__(self, pipe, pairs: Pairs, *, seed: int, schedule: str, batch: int, progress: bool,
                 process_index: int, process_count: int, pairs_per_call: int, lease_s: float, log=None):
        self.pipe, self.pairs = pipe, pairs
        self.seed, self.schedule, self.batch, self.pairs_per_call = seed, schedule, batch, pairs_per_call
        self.size = pipe.cfg.size
        self.lease_s = lease_s
        self.log = log if log is not None else sys.stderr
        self.todo = [p for p in range(len(pairs.index)) if p % process_count == process_index]
        self.claim_dir = pairs.out / "claims"
        self.loaded: dict[int, np.ndarray | InputError] = {}
        self.image_notices: dict[int, list[str]] = {}
        self.headers: dict[int, np.ndarray] = {}  # small thumbnails of the images loaded
        self.bad_image: dict[int, str] = {}  # pair -> the image that failed it
        self.notices: dict[int, list[str]] = {}  # pair -> its notices
        self.printed: set[str] = set()
        self.held: dict[int, Path] = {}
        self.counts = {"assigned": len(self.todo), "ran": 0, "skipped": 0, "failed": 0}
        self.bar = None
        if progress:
            from tqdm import tqdm

            self.bar = tqdm(total=len(self.todo), desc=f"pairs (process {process_index})", unit="pair")

    def _say(self, kind: str, text: str) -> None:
        line = f"vmdiff: {kind}: {text}"
        if line not in self.printed:
            self.printed.add(line)
            print(line, file=self.log, flush=True)

    def _tick(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def claimed(self):
        """This process's pairs that are not done, each claimed just before it is yielded."""
        for p in self.todo:
            claim = self.claim_dir / f"{self.pairs.folder(p).name}.claim"
            if self.pairs.done(p) or not claims.acquire(claim, self.lease_s) or self.pairs.done(p):
                self.counts["skipped"] += 1  # done, or being done by another run
                self._tick()
                continue
            self.held[p] = claim
            self.heartbeat.add(claim)
            yield p

    def image(self, k: int) -> np.ndarray:
        """Image k at the working size (loaded once; its error, or notices, said once)."""
        from vmdiff_jax.app.inputs import load_image

        if k not in self.loaded:
            notices: list[str] = []
            try:
                self.loaded[k] = load_image(self.pairs.images[k], self.size, notices)
                self.headers[k] = _small(self.loaded[k])
            except InputError as e:
                self.loaded[k] = e
                self._say("error", f"{str(e).splitlines()[0]} (its pairs are recorded as failed)")
            self.image_notices[k] = notices
            for n in notices:
                self._say("notice", n)
        if isinstance(self.loaded[k], InputError):
            raise self.loaded[k]
        return self.loaded[k]

    def inputs(self, p: int):
        """The FusionInput of pair p; PairFailed (the scheduler's) when an image or a label fails."""
        import jax

        from vmdiff_jax.app.inputs import label_notices
        from vmdiff_jax.engine.pairs import FusionInput
        from vmdiff_jax.engine.scheduler import PairFailed

        i, j = self.pairs.index[p]
        names = [self.pairs.images[k] for k in (i, j)]
        try:
            for k, path in zip((i, j), names):
                self.bad_image[p] = path.name
                self.image(k)
                try:
                    label_from_path(path)
                except InputError as e:
                    self._say("error", f"{str(e).splitlines()[0]} (its pairs are recorded as failed)")
                    raise
        except InputError as e:
            raise PairFailed(str(e).splitlines()[0]) from None
        self.bad_image.pop(p, None)
        labels = (label_from_path(names[0]), label_from_path(names[1]))
        cut = label_notices(self.pipe, labels)
        for n in cut:  # the score's text is per image (said once each), the FLUX prompt per pair
            k = int(n[len("label ")]) - 1 if n.startswith(("label 1 ", "label 2 ")) else None
            self._say("notice", f"{displayable(names[k].name)}: its label{n[len('label 1'):]}" if k is not None else
                      f"pair {p} ({displayable(names[0].name)} + {displayable(names[1].name)}): {n}")
        self.notices[p] = self.image_notices[i] + self.image_notices[j] + cut
        s = pair_seed(self.seed, i, j)
        return FusionInput.pair(self.image(i), self.image(j), labels[0], labels[1], jax.random.key(s), s)

    def on_finish(self, p: int, result) -> None:
        from vmdiff_jax.app.report import save_result

        i, j = self.pairs.index[p]
        d = self.pairs.folder(p)
        d.mkdir(parents=True, exist_ok=True)
        for stale in d.glob(".*.tmp"):  # left by a run killed while writing this pair
            stale.unlink(missing_ok=True)
        (d / "failed.json").unlink(missing_ok=True)  # an image that failed before and is fixed now
        save_result(result, d, extra={"pair": p, "image1": self.pairs.images[i].name, "image2": self.pairs.images[j].name,
                                      "pair_time_s": result.timings["total_s"], "notices": self.notices.pop(p, []),
                                      "inputs": self.pairs.inputs_record(p), "batch_settings": self.pairs.settings})
        self.counts["ran"] += 1
        claim = self.held.pop(p)
        self.heartbeat.discard(claim)
        claims.forget(claim)  # its file stays, marking the pair as taken; this process no longer holds it
        self._tick()

    def on_failed(self, p: int, reason: str) -> None:
        i, j = self.pairs.index[p]
        images = self.pairs.images
        d = self.pairs.folder(p)
        d.mkdir(parents=True, exist_ok=True)
        labels = []
        for k in (i, j):
            try:
                labels.append(label_from_path(images[k]))
            except InputError:
                labels.append(None)
        bad = self.bad_image.get(p)
        record = {"pair": p, "image1": displayable(images[i].name), "image2": displayable(images[j].name),
                  "label1": labels[0], "label2": labels[1], "failed_image": None if bad is None else displayable(bad),
                  "reason": displayable(reason), "inputs": self.pairs.inputs_record(p),
                  "batch_settings": self.pairs.settings}
        atomic_write_bytes(d / "failed.json", (json.dumps(record, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))
        claim = self.held.pop(p)
        self.heartbeat.discard(claim)
        claims.release(claim)  # a later run tries it again
        self.counts["failed"] += 1
        self._tick()

    def run(self) -> dict:
        self.heartbeat = claims.Heartbeat(self.lease_s / 4)
        try:
            stats = self.pipe.run_pairs(self.claimed(), self.inputs, self.on_finish, schedule=self.schedule,
                                        batch=self.batch, pairs_per_call=self.pairs_per_call)
            for p, reason in stats.failed:
                self.on_failed(p, reason)
        finally:
            self.heartbeat.stop()
            for claim in self.held.values():  # cut short (interrupt, error): unfinished pairs are free again
                claims.release(claim)
            if self.bar is not None:
                self.bar.close()
        self.counts.update(sequential_calls=stats.sequential_calls, real_slots=stats.real_slots,
                           padded_slots=stats.padded_slots, pairs_per_call=self.pairs_per_call)
        return self.counts


def default_settings(pipe, seed: int, schedule: str, batch: int) -> dict:
    """Settings for a library caller of run_batch that gives none: the pipeline's report settings
    (without the device count), the seed and schedule."""
    import dataclasses

    s = pipe.settings(batch, dataclasses.replace(pipe.eaa_cfg, batch=batch))
    s.pop("devices", None)
    return json.loads(json.dumps({**s, "seed": seed, "schedule": schedule}))


def run_batch(pipe, images: list[Path], out: Path, *, unordered: bool = False, seed: int = 0, schedule: str = "paper",
              batch: int = 1, progress: bool = True, process_index: int = 0, process_count: int = 1,
              pairs_per_call: int = 1, settings: dict | None = None, lease_s: float | None = None) -> dict:
    """Fuse this process's share of the pairs that are not done yet, `pairs_per_call` pairs at a
    time sharing every model call (VMDiff.run_pairs), at the
    pipeline's own size; return counts (assigned, ran, skipped, failed, calls and slots).

    settings: the batch's (batch_settings.settings_of; default: from the pipeline), recorded in
    every pair's report; lease_s: the claims' lease (default: VMDIFF_CLAIM_LEASE_S).
    """
    settings = default_settings(pipe, seed, schedule, batch) if settings is None else settings
    pairs = Pairs(images, out, settings, unordered)
    run = BatchRun(pipe, pairs, seed=seed, schedule=schedule, batch=batch, progress=progress,
                   process_index=process_index, process_count=process_count, pairs_per_call=pairs_per_call,
                   lease_s=claims.lease_s() if lease_s is None else lease_s)
    counts = run.run()
    counts["settings"] = settings
    counts["headers"] = {displayable(images[k].name): t for k, t in run.headers.items()}
    return counts


def header_thumbnails(images: list[Path], have: dict) -> dict:
    """{displayable name: small image} for index.html's headers: those `have` (loaded by this run),
    the others loaded through inputs.load_image (its size guards first: an image it refuses is
    never decoded), one at a time."""
    from vmdiff_jax.app.inputs import load_image

    heads = dict(have)
    for path in images:
        name = displayable(path.name)
        if name not in heads:
            try:
                heads[name] = _small(load_image(path, 4 * HEADER_SIDE))
            except InputError:
                pass  # an unreadable input is already a failed pair; its header stays empty
    return heads


def finish_run(out: Path, images: list[Path], unordered: bool, counts: dict, pid: int, count: int,
               pairs_per_call: int, settings: dict | None = None) -> bool:
    """After this process's pairs: record its counts; process 0 (after every process is done)
    rebuilds results.csv / results.json / index.html from the pair folders and prints the
    summary (settings: the batch's, default the ones run_batch used). True if any pair failed."""
    from vmdiff_jax.app.gallery import write_batch_page

    run_file = out / "runs" / f"process_{pid}.json"
    run_file.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(run_file, json.dumps({k: v for k, v in counts.items() if k not in ("headers", "settings")}).encode())
    if count > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("vmdiff batch done")
    failed_any = counts["failed"] > 0
    if pid == 0:
        runs = [json.loads((out / "runs" / f"process_{k}.json").read_text()) for k in range(count)]
        run = {k: sum(r[k] for r in runs) for k in ("sequential_calls", "real_slots", "padded_slots")}
        run["pairs_per_call"] = pairs_per_call
        pairs = Pairs(images, out, counts.get("settings") if settings is None else settings, unordered)
        dirs, done = pairs.folders(), pairs.done_folders()
        failed = collect_failed(dirs, done=done.__contains__)
        failed_any = failed_any or bool(failed)
        rows = collect(out, dirs, done=done.__contains__)
        agg = write_table(out, rows, failed, run, pairs.settings)
        heads = header_thumbnails(images, counts.get("headers", {}))
        page = write_batch_page(out, rows, failed, [d for d in dirs if d in done], heads)
        missing = len(dirs) - agg["pairs"] - agg["failed"]
        print(f"{agg['pairs']} pairs" + (f": SS {agg['SS']:.3f}, B_sim {agg['B_sim']:.3f}, "
                                          f"{agg['calls_per_pair']:.0f} calls/pair" if agg["pairs"] else "")
              + (f", {agg['failed']} failed" if agg["failed"] else "")
              + f" -> {displayable(str(out / 'results.csv'))}, {displayable(str(page))}"
              + (f" ({missing} of {len(dirs)} pairs not complete yet: rerun to finish)" if missing else ""))
    occupancy = counts["real_slots"] / counts["padded_slots"] if counts["padded_slots"] else 1.0
    print(f"process {pid}: ran {counts['ran']}, skipped {counts['skipped']} already complete or claimed, "
          f"failed {counts['failed']} ({pairs_per_call} pair(s) per call, {counts['sequential_calls']} sequential "
          f"model calls, occupancy {occupancy:.2f})")
    return failed_any

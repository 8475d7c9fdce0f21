"""A batch's results table: results.csv and results.json, rebuilt from the pair folders.

One row per completed pair (from its report.json) and per failed pair (failed.json: failed_image,
reason), the aggregates SS = mean S and B_sim = mean b_sim, and the settings of the batch. Names
are the full file names, made displayable (`inputs.displayable`: no control characters). A CSV
cell that a spreadsheet would evaluate (text starting with '=', '+', '-', '@', a tab or a
carriage return) is prefixed with a single quote (OWASP's rule for CSV injection).
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from vmdiff_jax.app.inputs import displayable
from vmdiff_jax.app.outputs import atomic_write_bytes

COLUMNS = ("pair", "image1", "image2", "label1", "label2", "S", "d1", "d2", "n1", "n2", "b_sim", "alpha", "beta1",
           "beta2", "calls", "rounds", "time_s", "failed_image", "reason")
TEXT_COLUMNS = ("image1", "image2", "label1", "label2", "failed_image", "reason")
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def has_report(d: Path) -> bool:
    return (d / "report.json").is_file()


def spreadsheet_safe(text: Any) -> str:
    """A text cell a spreadsheet shows as text: displayable, and quoted with a leading ' when
    it would start a formula."""
    text = displayable("" if text is None else str(text))
    return "'" + text if text.startswith(FORMULA_STARTS) else text


def _name(x: Any) -> Any:
    return displayable(x) if isinstance(x, str) else x


def row_of(r: dict) -> dict:
    """A results row from a pair's report.json content."""
    s = r["subscores"]
    return {
        "pair": r.get("pair"), "image1": _name(r.get("image1")), "image2": _name(r.get("image2")),
        "label1": _name(r["labels"][0]), "label2": _name(r["labels"][1]), "S": r["score"], "d1": s["d1"],
        "d2": s["d2"], "n1": s["n1"], "n2": s["n2"], "b_sim": r["b_sim"], "alpha": r["parameters"]["alpha"],
        "beta1": r["parameters"]["beta1"], "beta2": r["parameters"]["beta2"], "calls": r["calls"],
        "rounds": r["rounds"], "time_s": r.get("pair_time_s", r["timings"]["total_s"]),
        "threshold": r["settings"]["eaa"]["threshold"],
    }


def collect(out: Path, dirs: Iterable[Path] | None = None, done: Callable[[Path], bool] = has_report) -> list[dict]:
    """One row per completed pair among `dirs` (default: every folder under out/pairs), sorted by
    pair index; done(d) says which folders count (default: those with a report.json), so that a
    reused --out holding other pairs (another image set, ordered vs --unordered, older settings)
    is not mixed in."""
    dirs = sorted(p for p in (Path(out) / "pairs").glob("*") if p.is_dir()) if dirs is None else list(dirs)
    rows = [row_of(json.loads((d / "report.json").read_text(encoding="utf-8"))) for d in dirs if done(d)]
    rows.sort(key=lambda x: (x["pair"] is None, x["pair"]))
    return rows


def collect_failed(dirs: Iterable[Path], done: Callable[[Path], bool] = has_report) -> list[dict]:
    """The failed pairs among `dirs` (failed.json, not done): pair, images, labels, failed_image, reason."""
    failed = []
    for d in dirs:
        if (d / "failed.json").is_file() and not done(d):
            f = json.loads((d / "failed.json").read_text(encoding="utf-8"))
            failed.append({k: _name(v) for k, v in f.items()})
    return sorted(failed, key=lambda x: x["pair"])


def aggregate(rows: list[dict], failed: list[dict], run: dict) -> dict:
    """SS, B_sim, calls and time per pair over `rows`; the run's sequential calls and occupancy."""
    def mean(key):
        return float(np.mean([r[key] for r in rows])) if rows else None

    return {
        "pairs": len(rows), "SS": mean("S"), "B_sim": mean("b_sim"), "calls_per_pair": mean("calls"),
        "time_per_pair_s": mean("time_s"), "failed": len(failed),
        "sequential_calls": run.get("sequential_calls", 0),
        "mean_occupancy": run["real_slots"] / run["padded_slots"] if run.get("padded_slots") else None,
        "pairs_per_call": run.get("pairs_per_call"),
    }


def csv_bytes(rows: list[dict], failed: list[dict]) -> bytes:
    """results.csv: completed and failed pairs by pair index; text cells spreadsheet-safe."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS)
    w.writeheader()
    table = [{**r, "failed_image": "", "reason": ""} for r in rows]
    table += [{k: f.get(k, "") for k in COLUMNS} for f in failed]
    for r in sorted(table, key=lambda x: (x["pair"] is None, x["pair"])):
        w.writerow({k: spreadsheet_safe(r[k]) if k in TEXT_COLUMNS else r[k] for k in COLUMNS})
    return buf.getvalue().encode("utf-8")


def write_table(out: Path, rows: list[dict], failed: list[dict] = (), run: dict | None = None,
                settings: dict | None = None) -> dict:
    """results.csv and results.json (rows, failed pairs, aggregates, the batch's settings), each written whole.

    run: this run's sequential_calls (jitted model calls issued) and real / padded slots, for
    the aggregate's `sequential_calls` and `mean_occupancy` (real candidates / padded slots).
    Failed pairs are rows of the CSV too, with failed_image and reason and no scores."""
    failed = list(failed)
    agg = aggregate(rows, failed, run or {})
    atomic_write_bytes(Path(out) / "results.csv", csv_bytes(rows, failed))
    failed_json = [{k: f.get(k) for k in ("pair", "image1", "image2", "failed_image", "reason")} for f in failed]
    doc = {"aggregate": agg, "settings": settings, "pairs": rows, "failed": failed_json}
    atomic_write_bytes(Path(out) / "results.json", (json.dumps(doc, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))
    return agg

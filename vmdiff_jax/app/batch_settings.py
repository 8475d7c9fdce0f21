"""The settings of a batch, recorded in OUT/batch.json and honoured by every rerun.

A batch's settings are what decides its pairs' results: the models (demo or checkpoints, and
which checkpoint files), dtype, --steps, --size, --seed, --schedule, --batch, --slerp,
--score-text, --locator and --tiny-search. The first run on an --out records them
(batch.json, created whole and only if absent, so concurrent runs agree on one record); a
rerun with the same settings resumes the batch; a rerun with other settings is refused in
one line naming the first differing flag, before anything is loaded or written, so old
results are never reported as new ones. (--pairs-per-call, --fsdp, --attention, --unordered
and the processes only change how and which pairs are computed, not a pair's result.)
Every pair's report.json carries the same settings (`batch_settings`) and the sha256 of its
two input files (`inputs`): a pair counts as done only when both match.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

from vmdiff_jax.app.inputs import InputError, displayable

SETTINGS_FILE = "batch.json"
SCHEMA = 1
FLAGS = {"models": "--demo-models", "weights": "--weights / --flux", "dtype": "--dtype", "steps": "--steps",
         "size": "--size", "seed": "--seed", "schedule": "--schedule", "batch": "--batch", "slerp": "--slerp",
         "score_text": "--score-text", "locator": "--locator", "search": "--tiny-search", "ablation": "--ablation",
         "threshold": "--threshold", "rounds": "--rounds", "alpha_range": "--alpha-range", "alpha_tol": "--alpha-tol",
         "beta_grid": "--beta-grid"}


def _file_id(path: Path) -> str:
    """A checkpoint named by its file or folder name (and a file's size): the same files on
    another host or mount compare equal, another checkpoint does not."""
    path = Path(path)
    name = displayable(path.name)
    try:
        return f"{name} ({path.stat().st_size} bytes)" if path.is_file() else name
    except OSError:
        return name


def settings_of(args, weights: dict | None, dtype: str) -> dict:
    """The settings of `vmdiff batch` args (weights: the checkpoints found, None for the demo
    models; dtype: the parameter dtype the run resolves --dtype to)."""
    s = {"models": f"demo {args.demo_models}" if weights is None else "checkpoints",
         "weights": None if weights is None else {k: _file_id(v) for k, v in sorted(weights.items())},
         "dtype": dtype, "steps": args.steps, "size": args.size, "seed": args.seed, "schedule": args.schedule,
         "batch": args.batch, "slerp": args.slerp, "score_text": args.score_text,
         "locator": getattr(args, "locator", "dino"), "search": "tiny" if getattr(args, "tiny_search", False) else "paper",
         "ablation": args.ablation, "threshold": args.threshold, "rounds": args.rounds, "alpha_range": args.alpha_range,
         "alpha_tol": args.alpha_tol, "beta_grid": args.beta_grid}
    return json.loads(json.dumps(s))  # as it reads back from JSON


def differing(old: dict, new: dict) -> str | None:
    """The first setting (FLAGS order) whose value differs, None when they agree."""
    for key in list(FLAGS) + sorted(set(old) | set(new)):
        if old.get(key) != new.get(key):
            return key
    return None


def _shown(v) -> str:
    return "(unset)" if v is None else displayable(json.dumps(v, ensure_ascii=False) if not isinstance(v, (int, str)) else str(v))


def _refusal(out: Path, old: dict, new: dict, key: str) -> InputError:
    flag = FLAGS.get(key, key)
    return InputError(f"{displayable(str(out))}: --out holds a batch made with other settings ({flag}: {_shown(old.get(key))} "
                      f"there, {_shown(new.get(key))} now); a rerun only resumes a batch with its own settings: use "
                      f"another --out for these")


def recorded(out: Path) -> dict | None:
    """The settings in out/batch.json, None when there is none; InputError when it is not one."""
    path = Path(out) / SETTINGS_FILE
    if not path.is_file():
        if path.exists() or os.path.islink(path):
            raise InputError(f"{displayable(str(path))}: is not a vmdiff batch record; remove it or use another --out")
        return None
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        doc = None
    if not isinstance(doc, dict) or not isinstance(doc.get("settings"), dict):
        raise InputError(f"{displayable(str(path))}: is not a vmdiff batch record; remove it or use another --out")
    return doc["settings"]


def check(out: Path, settings: dict) -> None:
    """Refuse (InputError, one line) when --out holds a batch with other settings; reads only."""
    old = recorded(out)
    if old is not None and (key := differing(old, settings)) is not None:
        raise _refusal(out, old, settings, key)


def record(out: Path, settings: dict) -> None:
    """Write out/batch.json if absent (whole: a hard link of a complete file), else check it."""
    path = Path(out) / SETTINGS_FILE
    tmp = path.with_name(f".{SETTINGS_FILE}.{uuid.uuid4().hex}.tmp")
    tmp.write_text(json.dumps({"schema": SCHEMA, "settings": settings}, indent=2, ensure_ascii=False) + "\n",
                   encoding="utf-8")
    try:
        os.link(tmp, path)
    except FileExistsError:
        check(out, settings)
    finally:
        tmp.unlink(missing_ok=True)

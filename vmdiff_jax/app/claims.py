"""Claim files: runs sharing an output folder (several processes, hosts on a shared disk)
never compute the same pair twice.

A claim is a file holding {pid, host, time, token}, created whole: written under a temporary
name and hard-linked to its place (`os.link` fails when the claim exists; atomic on local
disks and NFS). A claim is stale when its process is gone (same host; a claim of this very
process whose token it does not hold counts as gone) or when it was not refreshed for the
lease (any host; a live run refreshes its claims every lease / 4 through `Heartbeat`).

A stale claim is taken over by exactly one run: the taker creates the marker
`<claim>.takeover-<token of the stale claim>` (O_EXCL: one taker per stale token), checks
that the claim still holds that token, replaces it with its own (atomic rename) and reads it
back: it holds the claim only if its own token is there. `release` removes a claim only
while it still holds this process's token (a claim taken over stays the new holder's).

The lease is `VMDIFF_CLAIM_LEASE_S` seconds (default 600), a finite number >= 1; anything
else is a `LeaseError` (one line) when a run starts, never at import.
"""

from __future__ import annotations

import json
import math
import os
import socket
import threading
import time
import uuid
from pathlib import Path

LEASE_ENV = "VMDIFF_CLAIM_LEASE_S"
LEASE_S = 600.0  # the default lease
MIN_LEASE_S = 1.0  # below it a live run's heartbeat (every lease / 4) cannot keep its claims fresh
HOST = socket.gethostname()
_held: set[str] = set()  # tokens of the claims this process holds
_held_lock = threading.Lock()


class LeaseError(ValueError):
    """VMDIFF_CLAIM_LEASE_S is not a usable lease (one-line message)."""


def lease_s(environ=None) -> float:
    """The claim lease in seconds from VMDIFF_CLAIM_LEASE_S (default LEASE_S); LeaseError when
    it is not a finite number >= MIN_LEASE_S."""
    raw = (os.environ if environ is None else environ).get(LEASE_ENV)
    if raw is None or raw.strip() == "":
        return LEASE_S
    try:
        v = float(raw)
    except ValueError:
        v = math.nan
    if not math.isfinite(v) or v < MIN_LEASE_S:
        raise LeaseError(f"{LEASE_ENV} must be a finite number of seconds >= {MIN_LEASE_S:g} (how long a claim of a "
                         f"run on another host stays valid without a refresh), got {raw!r}")
    return v


def _new_token() -> str:
    return uuid.uuid4().hex


def _content(token: str) -> bytes:
    return json.dumps({"pid": os.getpid(), "host": HOST, "time": time.time(), "token": token}).encode()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    except (OverflowError, ValueError):  # not a pid at all
        return False
    return True


def _read(path: Path) -> tuple[dict | None, float]:
    """(claim content or None when unreadable, mtime); raises FileNotFoundError."""
    mtime = path.stat().st_mtime
    try:
        info = json.loads(path.read_bytes())
        return (info if isinstance(info, dict) else None), mtime
    except (ValueError, UnicodeDecodeError):
        return None, mtime
    except FileNotFoundError:
        raise
    except OSError:
        return None, mtime


def _token_of(info: dict | None, mtime: float) -> str:
    """The claim's token; for an unreadable claim one derived from its mtime (the same for every taker)."""
    token = info.get("token") if info else None
    if isinstance(token, str) and token and len(token) <= 64 and token.isalnum():
        return token
    return f"m{int(mtime * 1e9)}"


def holds(token: str) -> bool:
    """Whether this process holds the claim with `token`."""
    with _held_lock:
        return token in _held


def is_stale(info: dict | None, mtime: float, lease_s: float = LEASE_S) -> bool:
    """Whether a claim's run is gone: same host and its pid is not running (or is this process,
    which does not hold it), or not refreshed for lease_s."""
    if info is not None and info.get("host") == HOST and isinstance(info.get("pid"), int):
        if not _pid_alive(info["pid"]):
            return True
        if info["pid"] == os.getpid() and not holds(_token_of(info, mtime)):
            return True
    return time.time() - mtime > lease_s


def _place(path: Path, token: str, replace: bool) -> bool:
    """Put a fresh claim with `token` at `path`: a new file (link: fails if one exists) or
    replacing the one there (rename). False when a claim exists (link only)."""
    tmp = path.with_name(f".{path.name}.{token}.tmp")
    tmp.write_bytes(_content(token))
    try:
        if replace:
            os.replace(tmp, path)
            return True
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        return True
    finally:
        tmp.unlink(missing_ok=True)


def _verify(path: Path, token: str) -> bool:
    try:
        info, _ = _read(path)
    except FileNotFoundError:
        return False
    return info is not None and info.get("token") == token


def acquire(path: str | os.PathLike, lease_s: float = LEASE_S) -> bool:
    """Claim `path` for this process: True when this process now holds it, False when another live
    run does. A stale claim is taken over, by one run only."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    token = _new_token()
    with _held_lock:  # held from before it is placed: this process's other threads never see it as stale
        _held.add(token)
    if _take(path, token, lease_s) and _verify(path, token):
        return True
    with _held_lock:
        _held.discard(token)
    return False


def _take(path: Path, token: str, lease_s: float) -> bool:
    for _ in range(100):  # a claim released between our attempts: try again
        if _place(path, token, replace=False):
            return True
        try:
            info, mtime = _read(path)
        except FileNotFoundError:
            continue
        if not is_stale(info, mtime, lease_s):
            return False
        stale = _token_of(info, mtime)
        try:
            os.close(os.open(path.with_name(f"{path.name}.takeover-{stale}"), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
        except FileExistsError:
            return False  # another run takes (or took) this stale claim over
        try:  # still the stale claim we judged? (it may have been released and claimed afresh meanwhile)
            info2, mtime2 = _read(path)
        except FileNotFoundError:
            continue
        if _token_of(info2, mtime2) != stale:
            return False
        _place(path, token, replace=True)
        return True
    return False


def release(path: str | os.PathLike) -> None:
    """Give a claim of this process up (the pair may be computed again by a later run); a claim
    another run has taken over is left to it."""
    path = Path(path)
    try:
        info, mtime = _read(path)
    except FileNotFoundError:
        return
    token = _token_of(info, mtime)
    if holds(token):
        path.unlink(missing_ok=True)
        with _held_lock:
            _held.discard(token)


def forget(path: str | os.PathLike) -> None:
    """Stop holding a claim but leave its file (a done pair's mark): to this process it is now a
    claim it does not hold, stale, so a later run in this same process may take it again."""
    try:
        info, mtime = _read(Path(path))
    except FileNotFoundError:
        return
    with _held_lock:
        _held.discard(_token_of(info, mtime))


class Heartbeat:
    """Refreshes the mtime of the claims in `active` every `every` seconds (a daemon thread)."""

    def __init__(self, every: float = LEASE_S / 4):
        self.active: set[Path] = set()
        self.lock = threading.Lock()
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(every,), daemon=True)
        self.thread.start()

    def _run(self, every: float) -> None:
        while not self.stop_event.wait(every):
            with self.lock:
                paths = list(self.active)
            for p in paths:
                try:
                    os.utime(p)
                except OSError:
                    pass

    def add(self, path: Path) -> None:
        with self.lock:
            self.active.add(Path(path))

    def discard(self, path: Path) -> None:
        with self.lock:
            self.active.discard(Path(path))

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join()

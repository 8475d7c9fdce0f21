"""Claim files: runs sharing an output folder (several processes, hosts on a shared disk)
never compute the same pair twice.

A claim is a file created with O_CREAT | O_EXCL (atomic on local disks and NFSv3+) holding
{pid, host, time, token}. A claim is stale when its process is gone (same host) or when it
was not refreshed for `lease_s` seconds (any host; a live run refreshes its claims every
lease_s / 4 through `Heartbeat`). A stale claim is taken over by exactly one run: the
taker first creates `<claim>.takeover-<token of the stale claim>` with O_EXCL, then replaces
the claim with its own.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from pathlib import Path

LEASE_S = float(os.environ.get("VMDIFF_CLAIM_LEASE_S", 600))
HOST = socket.gethostname()


def _content() -> bytes:
    return json.dumps({"pid": os.getpid(), "host": HOST, "time": time.time(), "token": uuid.uuid4().hex}).encode()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def _read(path: Path) -> tuple[dict | None, float]:
    """(claim content or None when unreadable / half-written, mtime); raises FileNotFoundError."""
    mtime = path.stat().st_mtime
    try:
        info = json.loads(path.read_bytes())
        return (info if isinstance(info, dict) else None), mtime
    except (ValueError, UnicodeDecodeError):
        return None, mtime


def is_stale(info: dict | None, mtime: float, lease_s: float = LEASE_S) -> bool:
    """Whether a claim's run is gone: same host and its pid is not running, or not refreshed for lease_s."""
    if info is not None and info.get("host") == HOST and isinstance(info.get("pid"), int):
        if not _pid_alive(info["pid"]) or info["pid"] == os.getpid():
            return True
    return time.time() - mtime > lease_s


def acquire(path: str | os.PathLike, lease_s: float = LEASE_S) -> bool:
    """Claim `path` for this process: True when this process now holds it, False when another live
    run does. A stale claim is taken over (by one run only)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        try:
            info, mtime = _read(path)
        except FileNotFoundError:  # released meanwhile: try again
            return acquire(path, lease_s)
        if not is_stale(info, mtime, lease_s):
            return False
        token = info.get("token") if info and isinstance(info.get("token"), str) else f"m{int(mtime * 1e9)}"
        try:
            os.close(os.open(path.with_name(f"{path.name}.takeover-{token}"), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
        except FileExistsError:
            return False  # another run took this stale claim over
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        tmp.write_bytes(_content())
        os.replace(tmp, path)
        return True
    try:
        os.write(fd, _content())
    finally:
        os.close(fd)
    return True


def release(path: str | os.PathLike) -> None:
    """Give a claim up (the pair may be computed again by a later run)."""
    Path(path).unlink(missing_ok=True)


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

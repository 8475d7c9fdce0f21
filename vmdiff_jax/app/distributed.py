"""Joining the processes of a multi-host `vmdiff batch` (jax.distributed), from the environment.

Either VMDIFF_COORDINATOR=host:port with VMDIFF_NUM_PROCESSES=N and VMDIFF_PROCESS_ID=k
(0 <= k < N), or VMDIFF_DISTRIBUTED=auto (JAX's own cluster detection on TPU pods / SLURM /
...), or none of them (one process). `from_env` checks them without touching JAX (a
`DistributedError`, one line, for any mistake: a missing or non-numeric count, an id out of
range, a malformed address, both ways at once); `initialize` joins, and turns JAX's failure
to (no cluster found, coordinator unreachable) into the same one-line error.
"""

from __future__ import annotations

import dataclasses
import os

COORDINATOR, NUM_PROCESSES, PROCESS_ID, AUTO = ("VMDIFF_COORDINATOR", "VMDIFF_NUM_PROCESSES", "VMDIFF_PROCESS_ID",
                                                "VMDIFF_DISTRIBUTED")


class DistributedError(ValueError):
    """The distributed settings in the environment are inconsistent, or joining failed (one line)."""


@dataclasses.dataclass(frozen=True)
class Distributed:
    """How this process joins: coordinator address, process count and id (auto: JAX detects them)."""

    coordinator: str | None = None
    num_processes: int | None = None
    process_id: int | None = None
    auto: bool = False


def _int(env, name: str) -> int:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        raise DistributedError(f"{COORDINATOR} is set but {name} is not: set {NUM_PROCESSES} (the number of "
                               f"processes) and {PROCESS_ID} (this one's, from 0) too")
    try:
        return int(raw.strip())
    except ValueError:
        raise DistributedError(f"{name} must be an integer, got {raw!r}") from None


def _check_address(addr: str) -> None:
    host, sep, port = addr.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host  # [::1]:1234
    if not sep or not host or any(c.isspace() for c in addr):
        raise DistributedError(f"{COORDINATOR} must be host:port (e.g. 10.0.0.1:1234), got {addr!r}")
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise DistributedError(f"{COORDINATOR} must end in a port from 1 to 65535 (host:port), got {addr!r}")


def from_env(environ=None) -> Distributed | None:
    """The distributed settings in `environ` (default os.environ), checked; None: one process."""
    env = os.environ if environ is None else environ
    addr = (env.get(COORDINATOR) or "").strip()
    auto = (env.get(AUTO) or "").strip()
    if auto not in ("", "auto"):
        raise DistributedError(f"{AUTO} must be 'auto' (JAX's cluster detection) or unset, got {env.get(AUTO)!r}")
    if addr and auto:
        raise DistributedError(f"both {COORDINATOR} and {AUTO}=auto are set: use one of them")
    if not addr:
        stray = [n for n in (NUM_PROCESSES, PROCESS_ID) if (env.get(n) or "").strip()]
        if stray:
            raise DistributedError(f"{stray[0]} is set but {COORDINATOR} is not: set {COORDINATOR}=host:port of "
                                   f"process 0 too, or unset {' and '.join(stray)}")
        return Distributed(auto=True) if auto else None
    _check_address(addr)
    n, k = _int(env, NUM_PROCESSES), _int(env, PROCESS_ID)
    if n < 1:
        raise DistributedError(f"{NUM_PROCESSES} must be at least 1, got {n}")
    if not 0 <= k < n:
        raise DistributedError(f"{PROCESS_ID} must be from 0 to {NUM_PROCESSES} - 1 = {n - 1}, got {k}")
    return Distributed(addr, n, k)


def _one_line(e: BaseException) -> str:
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:300]


def initialize(settings: Distributed | None) -> tuple[int, int]:
    """Join the processes (jax.distributed.initialize, before any other JAX work); (process index, count)."""
    import jax

    if settings is not None:
        try:
            if settings.auto:
                jax.distributed.initialize()
            else:
                jax.distributed.initialize(coordinator_address=settings.coordinator,
                                           num_processes=settings.num_processes, process_id=settings.process_id)
        except Exception as e:  # noqa: BLE001 - JAX raises ValueError / RuntimeError / XlaRuntimeError here
            how = (f"{AUTO}=auto found no cluster here (TPU pod, SLURM, ...; or set {COORDINATOR})" if settings.auto
                   else f"cannot join {settings.coordinator} as process {settings.process_id} of {settings.num_processes}")
            raise DistributedError(f"{how}: {_one_line(e)}") from None
    return jax.process_index(), jax.process_count()

"""Writing a run's results whole: the folder `--out` holds the complete old set or the complete new one.

`write_result_set(out, {name: bytes})` writes every file into a temporary folder beside
`out` (`.<name>.vmdiff-new-*`), fsyncs the files and the folder, and then swaps it with
`out` in one step (Linux `renameat2(RENAME_EXCHANGE)`; elsewhere two renames, with the old
set put back if the second fails), fsyncs the parent and removes the old set. A failure
before the swap (disk full, kill, Ctrl-C) leaves `out` as it was; a clean failure leaves no
temporary folder, and leftovers of a killed run are removed by the next write. `out` may
only hold files of a result set (so `--out ~/Desktop` cannot be swapped away).
"""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterable, Mapping

from vmdiff_jax.app import interrupts

NEW, OLD = "vmdiff-new-", "vmdiff-old-"


class OutputError(Exception):
    """The results cannot be written (disk full, permissions, a foreign folder); one-line message."""


def _describe(e: OSError) -> str:
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return "no space left on the device (disk full or quota exceeded)"
    return e.strerror or str(e)


def check_out_dir(out: str | os.PathLike, names: Iterable[str]) -> Path:
    """The real path of `out`, if a result set with `names` can be swapped in there; else OutputError.

    `out` is either absent (its nearest existing parent must be a writable folder), or a
    folder holding only files named in `names` (a previous result) while its parent is
    writable; it must not be the current folder or one above it.
    """
    out = Path(os.path.realpath(out))  # a symlinked --out: the folder it points to is replaced
    names = set(names)
    if out.exists() and not out.is_dir():
        raise OutputError(f"{out}: --out exists and is not a folder")
    cwd = Path(os.path.realpath(Path.cwd()))
    if out == cwd or out in cwd.parents:
        raise OutputError(f"{out}: --out must not be the current folder or hold it (results replace the whole folder)")
    if out.is_dir():
        try:
            foreign = sorted(p.name for p in out.iterdir() if p.name not in names or not p.is_file())
        except OSError as e:
            raise OutputError(f"{out}: cannot read the output folder ({_describe(e)})") from None
        foreign = [n for n in foreign if not (n.startswith(".") and n.endswith(".tmp"))]  # older versions' temp files
        if foreign:
            raise OutputError(f"{out}: --out holds files that are not a vmdiff result (e.g. {foreign[0]!r}); "
                              f"give a new or empty folder (results replace the whole folder)")
    parent = out.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"{out}: cannot write to the output folder ({parent} is not a writable folder)")
    return out


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as e:  # some file systems cannot fsync a folder; the data files are synced
        if e.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def _write_file(path: Path, data: bytes) -> None:
    """Create `path` (must not exist) with `data`, synced to disk."""
    with open(path, "xb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _mode(base: int) -> int:
    umask = os.umask(0)
    os.umask(umask)
    return base & ~umask


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100
try:
    _renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
except (AttributeError, OSError):
    _renameat2 = None


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two existing paths; False where the system or file system cannot."""
    if _renameat2 is None:
        return False
    if _renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EPERM):
        return False
    raise OSError(err, os.strerror(err), str(a))


def _sweep(out: Path) -> None:
    """Remove what a killed run left beside `out`; put back an old set whose swap was cut short."""
    for p in out.parent.glob(f".{_glob_escape(out.name)}.{OLD}*"):
        if not out.exists():
            os.rename(p, out)
        else:
            shutil.rmtree(p, ignore_errors=True)
    for p in out.parent.glob(f".{_glob_escape(out.name)}.{NEW}*"):
        shutil.rmtree(p, ignore_errors=True)


def _glob_escape(name: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


def write_result_set(out: str | os.PathLike, files: Mapping[str, bytes]) -> Path:
    """Replace the folder `out` by exactly `files` ({file name: bytes}), whole or not at all.

    Raises OutputError (one line) when it cannot, `out` then unchanged; an interrupt
    (interrupts.Interrupted) that arrives before the swap also leaves `out` unchanged.
    Returns the absolute `out`.
    """
    out = check_out_dir(out, files)
    with interrupts.deferred():
        interrupts.check()
        tmp = None
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            _sweep(out)
            tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.{NEW}", dir=out.parent))
            for name, data in files.items():
                _write_file(tmp / name, data)
                os.chmod(tmp / name, _mode(0o666))
            os.chmod(tmp, _mode(0o777))
            _fsync_dir(tmp)
            interrupts.check()  # a signal (perhaps swallowed by JAX) arrived while computing or writing
            if not out.exists():
                os.rename(tmp, out)
                tmp = None
            elif _exchange(tmp, out):
                pass  # tmp now holds the old set
            else:
                old = Path(tempfile.mkdtemp(prefix=f".{out.name}.{OLD}", dir=out.parent))
                os.rmdir(old)
                os.rename(out, old)
                try:
                    os.rename(tmp, out)
                except BaseException:
                    os.rename(old, out)
                    raise
                tmp = old
            _fsync_dir(out.parent)
        except OSError as e:
            raise OutputError(f"{out}: cannot write the results: {_describe(e)}; the folder was left as it was") from None
        finally:
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)
    return out


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write one file whole: to a temporary name in the same folder, synced, then renamed."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _mode(0o666))  # mkstemp creates 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise

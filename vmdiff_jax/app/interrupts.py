"""Ctrl-C (SIGINT) and SIGTERM always stop a run: exit 130 / 143, one line, nothing written.

Within `handled()`, both signals raise `Interrupted` in the main thread. Python code that
JAX runs on the side (its garbage-collection hook, `_xla_gc_callback`) swallows exceptions
("Exception ignored in ..."), so an interrupt raised there would be lost. Two guards:
the signal is recorded, and `check()` raises it again before anything is committed; and a
swallowed `Interrupted` (seen by `sys.unraisablehook`, which then prints nothing) has its
signal re-delivered shortly after, so the run stops within moments instead of at the commit.

A signal that arrives during an import is raised just after it (interrupting the import of
jaxlib's extension modules crashes the interpreter). Writing a result set runs in `deferred()`: a signal is recorded there but raised only
at the next `check()` or when the outermost deferred block ends, so cleanups finish. Once
the results are committed, `settle()` makes later signals no-ops: the run is complete. Once
its last line is printed, `ended()` keeps the process's handlers until it exits: a signal
during the interpreter's teardown (which XLA's threads make long) still gives one line,
"vmdiff: interrupted by SIGTERM after the run had ended: its output above is complete", and
exit code 128 + the signal, instead of the default action's silent death.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading

SIGNALS = (signal.SIGINT, signal.SIGTERM)
REDELIVER_S = 0.05  # delay before re-sending a swallowed signal (outside the swallowing callback by then)


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived; `exit_code` is 128 + the signal number (130, 143)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = int(signum)

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class _State:
    def __init__(self):
        self.received: int | None = None  # the first signal
        self.hold = 0  # depth of deferred() blocks in the main thread
        self.settled = False
        self.ended = False  # the run's last line is out (ended()): a signal now says so and exits
        self.keep = False  # leave the handlers installed after handled() (until the process exits)
        self.active = True
        self.lock = threading.Lock()


_state: _State | None = None


def _importing(frame) -> bool:
    """Whether `frame` runs inside an import (importlib's frames are on its stack)."""
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib"):
            return True
        frame = frame.f_back
    return False


def _after_end(signum: int) -> None:
    """A signal after the run's last line: one line, then exit 128 + signum at once."""
    try:
        sys.stdout.flush()
        os.write(2, f"vmdiff: interrupted by {signal.Signals(signum).name} after the run had ended: "
                    f"its output above is complete\n".encode())
    finally:
        os._exit(128 + signum)


def _handler(signum, frame):
    st = _state
    if st is not None and st.ended:
        _after_end(signum)
    if st is None or st.settled or not st.active:
        return
    if st.received is None:
        st.received = signum
    if st.hold == 0:
        if _importing(frame):  # an import cut short leaves jaxlib's extensions half-initialised (abort, segfault)
            threading.Timer(REDELIVER_S, _redeliver, (st, signum)).start()
            return
        raise Interrupted(st.received)


def _redeliver(st: _State, signum: int) -> None:
    with st.lock:
        if st.active and not st.settled:
            os.kill(os.getpid(), signum)


@contextlib.contextmanager
def handled():
    """SIGINT / SIGTERM raise `Interrupted` within this block (main thread; elsewhere a no-op).
    The previous handlers and unraisable hook are restored on exit."""
    global _state
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    prev_state, st = _state, _State()
    prev_hook = sys.unraisablehook

    def hook(unraisable):
        if isinstance(unraisable.exc_value, Interrupted) and st.active:
            threading.Timer(REDELIVER_S, _redeliver, (st, unraisable.exc_value.signum)).start()
            return  # silent: the interrupt is not lost, it is raised again outside the callback
        prev_hook(unraisable)

    old = {s: signal.getsignal(s) for s in SIGNALS}
    _state = st
    sys.unraisablehook = hook
    for s in SIGNALS:
        signal.signal(s, _handler)
    try:
        yield
    finally:
        with st.lock:
            st.active = False
        if st.keep:  # this process ends now: its handlers stay for the teardown
            return
        for s, h in old.items():
            signal.signal(s, h if h is not None else signal.SIG_DFL)
        sys.unraisablehook = prev_hook
        _state = prev_state


def received() -> int | None:
    """The signal received so far (None: none, or after `settle()`)."""
    st = _state
    return None if st is None or st.settled else st.received


def check() -> None:
    """Raise `Interrupted` if a signal arrived (also one whose exception was swallowed)."""
    sig = received()
    if sig is not None:
        raise Interrupted(sig)


@contextlib.contextmanager
def deferred():
    """Within: a signal is only recorded (cleanups and commits are not cut short); it is
    raised by `check()`, or when the outermost deferred block ends."""
    st = _state
    main = threading.current_thread() is threading.main_thread()
    if st is None or not main:
        yield
        return
    st.hold += 1
    try:
        yield
    finally:
        st.hold -= 1
    if st.hold == 0:
        check()


def settle() -> None:
    """The run's results are committed: signals from now on are ignored (it has finished)."""
    st = _state
    if st is not None:
        with st.lock:
            st.settled = True


def ended(keep: bool = True) -> None:
    """The run's last line is printed: from now on a signal prints one line and exits 128 + signal
    at once. keep: the handlers stay installed after `handled()` (the process ends with the run)."""
    st = _state
    if st is None:
        return
    with st.lock:
        pending = None if st.settled else st.received  # one recorded and not raised (a deferred block)
        st.settled = True
        st.ended = True
        st.keep = keep
    if pending is not None and keep:
        _after_end(pending)

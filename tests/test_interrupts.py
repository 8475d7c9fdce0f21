"""Ctrl-C and SIGTERM always stop a run: exit 130 / 143, one line, nothing written.

In-process: an interrupt raised inside a garbage-collection callback (where Python swallows
exceptions, as JAX's `_xla_gc_callback` does) is raised again outside it, silently. As a
user: `vmdiff demo` is interrupted at random moments (import, compilation, search, writing).
"""

import gc
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vmdiff_jax.app import interrupts

ROOT = Path(__file__).resolve().parents[1]


def _kill_self_in_gc_callback(signum):
    """A GC callback that, once armed, signals this process and runs Python code at the end of a collection."""
    def cb(phase, info):
        if phase == "stop" and cb.armed and not cb.done:
            cb.done = True
            os.kill(os.getpid(), signum)
            for _ in range(10_000):  # Python code: the handler runs here and its exception is swallowed
                pass

    cb.done = cb.armed = False
    return cb


def test_interrupt_swallowed_by_gc_callback_is_raised_again(capfd):
    cb = _kill_self_in_gc_callback(signal.SIGINT)
    gc.callbacks.append(cb)
    t0 = time.perf_counter()
    after_gc = []
    try:
        with interrupts.handled():
            with pytest.raises(interrupts.Interrupted) as e:
                cb.armed = True
                gc.collect()
                after_gc.append(cb.done)  # the callback's exception did not get out of gc.collect
                while time.perf_counter() - t0 < 30:  # the run goes on ... until the re-delivered signal
                    sum(range(1000))
    finally:
        gc.callbacks.remove(cb)
    assert after_gc == [True] and e.value.exit_code == 130 and time.perf_counter() - t0 < 20
    assert "Exception ignored" not in capfd.readouterr().err


def test_interrupt_during_import_waits_for_its_end(tmp_path, monkeypatch):
    """Cutting an import short leaves extension modules half-initialised (jaxlib then aborts):
    the interrupt is raised just after the import instead."""
    (tmp_path / "slow_module_for_interrupts.py").write_text(
        "import os, signal\nos.kill(os.getpid(), signal.SIGINT)\nfor _ in range(300_000):\n    pass\nDONE = True\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with interrupts.handled():
        with pytest.raises(interrupts.Interrupted):
            import slow_module_for_interrupts  # noqa: F401
            time.sleep(5)
    assert sys.modules["slow_module_for_interrupts"].DONE


def test_recorded_interrupt_stops_at_check(monkeypatch):
    monkeypatch.setattr(interrupts, "_redeliver", lambda *a: None)  # only the record is left
    cb = _kill_self_in_gc_callback(signal.SIGTERM)
    gc.callbacks.append(cb)
    try:
        with interrupts.handled():
            cb.armed = True
            gc.collect()
            assert cb.done and interrupts.received() == signal.SIGTERM
            with pytest.raises(interrupts.Interrupted) as e:
                interrupts.check()
            assert e.value.exit_code == 143
            interrupts.settle()  # after the commit, signals are no-ops
            interrupts.check()
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
    finally:
        gc.callbacks.remove(cb)


def test_deferred_block_finishes_then_raises():
    steps = []
    before = signal.getsignal(signal.SIGINT)  # default_int_handler, or SIG_IGN under nohup / a background shell
    with interrupts.handled():
        with pytest.raises(interrupts.Interrupted):
            with interrupts.deferred():
                os.kill(os.getpid(), signal.SIGINT)
                t0 = time.time()  # the handler runs at the main thread's next check: wait for it, however loaded
                while interrupts.received() is None and time.time() - t0 < 10:
                    time.sleep(0.01)
                steps.append("cleanup finished")
    assert steps == ["cleanup finished"]
    assert signal.getsignal(signal.SIGINT) is before  # restored


def test_demo_interrupted_at_random_moments(tmp_path):
    """Each run: an old result set in --out; the signal at a random moment; then either exit
    130/143 with one line and the old set untouched, or (signal after the end) a new set."""
    old = {"fused.png": b"old", "search.png": b"old", "report.json": b"{}"}
    env = dict(os.environ, PYTHONPATH=str(ROOT), VMDIFF_JAX_CACHE=str(tmp_path / "cache"))  # compiles in the first runs
    rng = random.Random(int(os.environ.get("VMDIFF_TEST_SEED", time.time())))
    moments = [rng.uniform(0.5, 1.5)] + sorted(rng.uniform(0.5, 14.0) for _ in range(6))  # the first while importing jax
    t_end = time.perf_counter() + 55
    outcomes = []
    for k, (t, sig) in enumerate(zip(moments, [signal.SIGINT, signal.SIGTERM] * 4)):
        if time.perf_counter() + t > t_end:
            break
        out = tmp_path / f"out{k}"
        out.mkdir()
        for name, data in old.items():
            (out / name).write_bytes(data)
        p = subprocess.Popen([sys.executable, "-m", "vmdiff_jax.app.cli", "demo", "--out", str(out), "--steps", "2",
                              "--size", "32", "--no-progress"], env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
        time.sleep(t)
        p.send_signal(sig)
        stdout, stderr = p.communicate(timeout=120)
        outcomes.append((round(t, 2), sig.name, p.returncode))
        beside = sorted(x.name for x in tmp_path.iterdir() if x.name.startswith(f".out{k}."))
        assert beside == [], (t, beside)
        if p.returncode == 0:
            assert sorted(x.name for x in out.iterdir()) == sorted(old)
            assert (out / "report.json").read_bytes() != old["report.json"]
            continue
        assert p.returncode == 128 + sig, (t, p.returncode, stderr)
        lines = [line for line in stderr.splitlines() if line.strip()]
        assert lines == [f"vmdiff: interrupted by {sig.name}: no result was written"], (t, stderr)
        assert {x.name: x.read_bytes() for x in out.iterdir()} == old
    assert len(outcomes) >= 3, outcomes
    print(outcomes)


@pytest.mark.parametrize("argv, code", [(["fuse", "--help"], 0), (["fuse", "missing.png", "other.png", "--out", "o"], 2)])
def test_signal_after_the_last_line_still_gives_one_line(tmp_path, argv, code):
    """A signal during the interpreter's teardown (after the command's last line, here held open
    by an exit hook) prints one line and exits 128 + signal, instead of dying silently."""
    marker = tmp_path / "ended"
    script = ("import atexit, pathlib, sys, time\n"
              f"atexit.register(lambda: (pathlib.Path({str(marker)!r}).touch(), time.sleep(20)))\n"
              "from vmdiff_jax.app.cli import main\n"
              f"sys.argv = ['vmdiff'] + {argv!r}\n"
              "sys.exit(main())\n")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    p = subprocess.Popen([sys.executable, "-c", script], env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    t0 = time.time()
    while not marker.exists():
        assert p.poll() is None and time.time() - t0 < 120, p.communicate()
        time.sleep(0.02)
    p.send_signal(signal.SIGTERM)
    stdout, stderr = p.communicate(timeout=30)
    assert p.returncode == 143, (p.returncode, stderr)
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert lines[-1] == "vmdiff: interrupted by SIGTERM after the run had ended: its output above is complete", stderr
    assert len(lines) == (1 if code == 0 else 2) and "Traceback" not in stderr, stderr
    if code == 0:
        assert "usage: vmdiff fuse" in stdout
    else:
        assert lines[0].startswith("vmdiff: error:") and "missing.png" in lines[0]

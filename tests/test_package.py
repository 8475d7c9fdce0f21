"""Package hygiene: the lazy top-level exports resolve, and no module but grounding imports torch."""

import pkgutil
import subprocess
import sys

import vmdiff_jax


def test_top_level_exports_resolve():
    for name in vmdiff_jax._EXPORTS:
        assert getattr(vmdiff_jax, name) is not None, name


def test_no_torch_outside_grounding():
    mods = [m.name for m in pkgutil.iter_modules(vmdiff_jax.__path__) if m.name != "grounding"]
    code = ("import sys, importlib\n"
            f"for m in {mods!r}: importlib.import_module('vmdiff_jax.' + m)\n"
            "bad = sorted(k for k in sys.modules if k == 'torch' or k.startswith('torch.'))\n"
            "print('TORCH' if bad else 'CLEAN')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("CLEAN"), "a vmdiff_jax module imports torch"
    assert len(mods) >= 25

"""Package hygiene: the lazy top-level exports resolve, and no module but grounding imports torch."""

import pkgutil
import subprocess
import sys

import vmdiff_jax


def test_top_level_exports_resolve():
    for name in vmdiff_jax._EXPORTS:
        assert getattr(vmdiff_jax, name) is not None, name


def test_no_torch_outside_grounding():
    mods = [m.name.removeprefix("vmdiff_jax.") for m in pkgutil.walk_packages(vmdiff_jax.__path__, "vmdiff_jax.")
            if m.name != "vmdiff_jax.engine.grounding"]
    code = ("import sys, importlib\n"
            f"for m in {mods!r}: importlib.import_module('vmdiff_jax.' + m)\n"
            "bad = sorted(k for k in sys.modules if k == 'torch' or k.startswith('torch.'))\n"
            "print('TORCH' if bad else 'CLEAN')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("CLEAN"), "a vmdiff_jax module imports torch"
    assert len(mods) >= 25 and "checkpoints.registry" in mods


def test_wheel_ships_the_demo_assets(tmp_path):
    """A non-editable install must carry the example photos and the demo tokenizer (`vmdiff demo` needs them)."""
    import zipfile
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(root)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    (wheel,) = tmp_path.glob("vmdiff_jax-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for f in ("vmdiff_jax/assets/examples/apple.png", "vmdiff_jax/assets/examples/rubber_duck.png",
              "vmdiff_jax/assets/tokenizer/vocab.json", "vmdiff_jax/assets/tokenizer/merges.txt"):
        assert f in names, f
    assert "vmdiff_jax/app/cli.py" in names and not any(n.startswith("tests/") for n in names)


# Which subpackages each layer may import (imports only go down): app -> engine -> method, checkpoints -> nn.
LAYERS = {
    "nn": {"nn"},
    "checkpoints": {"nn", "checkpoints"},
    "method": {"nn", "method"},
    "world": {"nn", "checkpoints", "method", "world"},
    "engine": {"nn", "checkpoints", "method", "world", "engine"},
    "app": {"nn", "checkpoints", "method", "world", "engine", "app"},
}


def _imports(path):
    """vmdiff_jax modules imported anywhere in a file (top level and lazily inside functions)."""
    import ast

    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("vmdiff_jax"):
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("vmdiff_jax")}
    return found


def test_layers_import_only_downwards_and_no_module_cycles():
    from pathlib import Path

    root = Path(vmdiff_jax.__file__).parent
    modules = {".".join(p.relative_to(root.parent).with_suffix("").parts).removesuffix(".__init__"): p
               for p in root.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        parts = name.split(".")
        deps = {d for d in _imports(path) if d in modules and d != name}
        graph[name] = deps
        if len(parts) < 3 or parts[1] not in LAYERS:
            continue  # the package's own __init__ / version, and layer __init__ files
        for d in deps - {"vmdiff_jax"}:  # the root package: __version__ only
            layer = d.split(".")[1]
            assert layer in LAYERS[parts[1]], f"{name} imports {d}: {parts[1]} may import only {sorted(LAYERS[parts[1]])}"
    for a, deps in graph.items():
        for b in deps:
            assert a not in graph.get(b, ()), f"{a} and {b} import each other"
    assert len(modules) >= 40



def test_no_module_over_400_lines():
    from pathlib import Path

    root = Path(vmdiff_jax.__file__).parent
    long = {str(p.relative_to(root)): n for p in root.rglob("*.py") if (n := len(p.read_text().splitlines())) > 400}
    assert not long, f"modules over 400 lines (one concept a file): {long}"


def test_the_commands_copies_of_names_agree_with_their_sources():
    """flags.py imports no JAX (instant --help), so it copies three name lists: keep them equal."""
    from vmdiff_jax.app import flags, plan
    from vmdiff_jax.engine import targets
    from vmdiff_jax.method import search

    assert flags.ABLATIONS == search.ABLATIONS
    assert flags.PLAN_STAGES == plan.STAGES
    assert flags.PLAN_TOPOLOGIES == tuple(targets.TARGETS)

"""Keep an installed-but-idle libtpu quiet: when the `libtpu` package is present on a host with
no TPU chips (a CPU or GPU machine with `pip install -e ".[tpu]"` for `vmdiff plan`), JAX would
try the TPU backend first at every start, which prints libtpu's metadata-server errors and costs
seconds. Then, unless the user set JAX_PLATFORMS, JAX is pointed at the platforms this host has
(cpu, plus cuda when the CUDA plugin is installed). `vmdiff plan` still gets the TPU compiler:
compile-only topologies (jax.experimental.topologies) do not need the TPU backend.
Imported first by `vmdiff_jax/__init__.py`, before anything imports jax.
"""

from __future__ import annotations

import glob
import importlib.util
import os


def _has_tpu_chips() -> bool:
    return bool(glob.glob("/dev/accel[0-9]*") or glob.glob("/dev/vfio/[0-9]*"))


def quiet_idle_libtpu() -> str | None:
    """Set JAX_PLATFORMS when libtpu is installed and this host has no TPU; returns what was set."""
    if "JAX_PLATFORMS" in os.environ or importlib.util.find_spec("libtpu") is None or _has_tpu_chips():
        return None
    cuda = any(importlib.util.find_spec(m) is not None for m in ("jax_cuda12_plugin", "jax_cuda13_plugin"))
    os.environ["JAX_PLATFORMS"] = "cuda,cpu" if cuda else "cpu"
    return os.environ["JAX_PLATFORMS"]

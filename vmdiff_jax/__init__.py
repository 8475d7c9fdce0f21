"""vmdiff-jax: VMDiff (ICLR 2026) object fusion on FLUX.1 Krea [dev] + Redux, in JAX / Flax NNX.

Import what you need from the modules (`vmdiff_jax.method.sampling`, `vmdiff_jax.method.mixing`,
`vmdiff_jax.method.search`, ...); the most used entry points are re-exported lazily here.
"""

from vmdiff_jax._platform import quiet_idle_libtpu

quiet_idle_libtpu()  # before anything imports jax (see _platform.py)

__version__ = "0.1.0"

_EXPORTS = {
    "load_flux": "vmdiff_jax.checkpoints.registry",
    "FluxConfig": "vmdiff_jax.nn.flux",
    "Flux": "vmdiff_jax.nn.flux",
    "load_vae": "vmdiff_jax.checkpoints.registry",
    "VMDiff": "vmdiff_jax.engine.pipeline",
    "FusionResult": "vmdiff_jax.engine.pipeline",
    "flux_sigmas": "vmdiff_jax.method.sampling",
    "denoise": "vmdiff_jax.method.sampling",
    "invert": "vmdiff_jax.method.sampling",
    "scat": "vmdiff_jax.method.mixing",
    "slerp": "vmdiff_jax.method.mixing",
    "golden_section": "vmdiff_jax.method.search",
    "eaa": "vmdiff_jax.method.search",
}


def __getattr__(name):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'vmdiff_jax' has no attribute {name!r}")

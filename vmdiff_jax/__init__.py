"""vmdiff-jax: VMDiff (ICLR 2026) object fusion on FLUX.1 Krea [dev] + Redux, in JAX / Flax NNX.

Import what you need from the modules (`vmdiff_jax.sampling`, `vmdiff_jax.mixing`,
`vmdiff_jax.search`, ...); the most used entry points are re-exported lazily here.
"""

__version__ = "0.1.0"

_EXPORTS = {
    "load_flux": "vmdiff_jax.checkpoints.registry",
    "FluxConfig": "vmdiff_jax.flux",
    "Flux": "vmdiff_jax.flux",
    "load_vae": "vmdiff_jax.checkpoints.registry",
    "VMDiff": "vmdiff_jax.pipeline",
    "FusionResult": "vmdiff_jax.pipeline",
    "flux_sigmas": "vmdiff_jax.sampling",
    "denoise": "vmdiff_jax.sampling",
    "invert": "vmdiff_jax.sampling",
    "scat": "vmdiff_jax.mixing",
    "slerp": "vmdiff_jax.mixing",
    "golden_section": "vmdiff_jax.search",
    "eaa": "vmdiff_jax.search",
}


def __getattr__(name):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'vmdiff_jax' has no attribute {name!r}")

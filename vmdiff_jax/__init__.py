"""vmdiff-jax: VMDiff on FLUX in JAX/Flax NNX."""

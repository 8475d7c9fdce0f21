"""How many pairs share one model call (`--pairs-per-call auto`): an estimate of the
candidates that fit beside the parameters in one device's memory.

Per candidate: FLUX's activations over its N + L tokens (image tokens of the working size +
the Redux context), ACTIVATION_BUFFERS live buffers of the hidden size in the parameter
dtype; plus the VAE decoder's full-resolution buffers, VAE_BUFFERS float32 buffers of
VAE_CHANNELS channels. Free memory: MEMORY_FRACTION of the device's, less its share of the
parameters (1 / fsdp of them). Slots are multiplied by the mesh's 'data' devices and divided
by the candidates one pair's request carries (max(2, batch)). Without a memory figure (CPU):
CPU_PAIRS_PER_DEVICE x 'data'.
"""

from __future__ import annotations

ACTIVATION_BUFFERS = 64
VAE_BUFFERS = 4
VAE_CHANNELS = 128
MEMORY_FRACTION = 0.9
MAX_PAIRS_PER_CALL = 64
CPU_PAIRS_PER_DEVICE = 4


def context_tokens(pipe) -> int:
    """Redux context tokens of one image: the SigLIP tower's patch grid, squared (729 at 384 / 14)."""
    return pipe.models.redux.siglip.cfg.grid ** 2


def candidate_bytes(pipe) -> int:
    """Estimated device bytes of one candidate row at the pipeline's size and dtype."""
    import jax.numpy as jnp

    tokens = pipe.seq_len + context_tokens(pipe)
    itemsize = jnp.dtype(pipe.param_dtype).itemsize
    return tokens * pipe.models.flux.cfg.hidden_size * itemsize * ACTIVATION_BUFFERS + \
        pipe.cfg.size ** 2 * VAE_CHANNELS * 4 * VAE_BUFFERS


def auto_pairs_per_call(pipe, batch: int = 1) -> int:
    """Pairs per call from device memory and the mesh (module doc), within 1 .. MAX_PAIRS_PER_CALL."""
    import jax

    from vmdiff_jax.engine import sharding

    per_request = max(2, batch)
    mem = sharding.device_memory_bytes()
    if mem is None:
        return CPU_PAIRS_PER_DEVICE * pipe.data
    fsdp = pipe.mesh.shape[sharding.FSDP] if pipe.mesh is not None else 1
    params = sum(x.size * x.dtype.itemsize for part in pipe.split.parts().values() for x in jax.tree.leaves(part.state))
    free = MEMORY_FRACTION * mem - params / fsdp
    slots = max(1, int(free // candidate_bytes(pipe))) * pipe.data
    return max(1, min(MAX_PAIRS_PER_CALL, slots // per_request))

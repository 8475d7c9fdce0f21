"""How many pairs share one model call (`--pairs-per-call auto`): an estimate of the
candidates that fit beside the parameters in one device's memory.

Per candidate: FLUX's activations over its N + L tokens (image tokens of the working size +
the Redux context), ACTIVATION_BUFFERS live buffers of the hidden size in the parameter
dtype; plus the VAE decoder's full-resolution buffers, VAE_BUFFERS float32 buffers of
VAE_CHANNELS channels. Free memory: MEMORY_FRACTION of the device's, less its share of the
parameters (1 / fsdp of them). Slots are multiplied by the mesh's 'data' devices and divided
by the candidates one pair's request carries (max(2, batch)). Without a memory figure (CPU):
CPU_PAIRS_PER_DEVICE x 'data'. On an accelerator the per-candidate bytes are the compiler's:
`compiled_candidate_bytes` compiles the actual BNoise and MDeNoise calls for one candidate a
device on the actual devices and reads their temporaries (memory_analysis), the estimate above
being the fallback when that compile fails.
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


def compiled_candidate_bytes(pipe) -> int | None:
    """Device temporaries of ONE candidate a device, the larger of the compiled BNoise and
    MDeNoise calls on the pipeline's own devices and mesh (nothing runs); None if they do not compile."""
    import jax
    import jax.numpy as jnp

    from vmdiff_jax.engine import stages, targets

    n = pipe.data

    def rows(shape, dt):
        return targets.rows(pipe.mesh, shape, dt)

    flux = pipe.models.flux.cfg
    dt = jnp.dtype(pipe.param_dtype)
    eps, y = rows((n, pipe.seq_len, flux.in_channels), jnp.float32), rows((n, flux.vec_in_dim), dt)
    cs = rows((n, 2, context_tokens(pipe), flux.context_in_dim), dt)
    temps = []
    for fn, args in ((stages.bnoise, (*pipe.split.flux, eps, cs, rows((n, 2), jnp.float32), y)),
                     (stages.mdenoise, (*pipe.split.flux, *pipe.split.vae, eps, cs, rows((n, 2), jnp.float32), y))):
        got = targets.compile_stage(fn, args, {"cfg": pipe.cfg}, platform=jax.default_backend(), param_arg_count=2)
        if got.error is not None:
            return None
        temps.append(got.temp_bytes)
    return max(temps)


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
    per = compiled_candidate_bytes(pipe) or candidate_bytes(pipe)
    slots = max(1, int(free // max(per, 1))) * pipe.data
    return max(1, min(MAX_PAIRS_PER_CALL, slots // per_request))

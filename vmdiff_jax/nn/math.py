"""Pure numerical pieces shared by the models: attention (per-backend kernels), rotary embeddings,
timestep embeddings."""

from __future__ import annotations

import contextlib
import contextvars
import math

import jax
import jax.numpy as jnp
import numpy as np


ATTENTION_IMPLS = ("auto", "xla", "chunked", "cudnn", "splash")
CHUNK_QUERIES = 256  # query block of 'chunked': benchmarks/attention.py, 2-core CPU, T = 1753 and 2482
_SPLASH_ALIGN = 128  # splash pads sequences to a multiple of this (its smallest block)


_TARGET = contextvars.ContextVar("vmdiff_target_platform", default=None)


def target_platform() -> str:
    """The platform programs are traced for: the one `compiling_for` names, else JAX's default
    backend. Kernel choices ('auto' attention, splash's interpret mode) read it at trace time."""
    return _TARGET.get() or jax.default_backend()


@contextlib.contextmanager
def compiling_for(platform: str):
    """Within: trace for `platform` ('tpu', 'gpu', 'cpu'), e.g. a TPU topology's compile-only
    devices on a CPU host, so that 'auto' resolves to the target's kernels, not the host's."""
    token = _TARGET.set(platform)
    try:
        yield
    finally:
        _TARGET.reset(token)


class AttentionUnavailable(ValueError):
    """An attention implementation that is unknown or that this machine cannot run (one-line message)."""


def _is_nvidia_gpu() -> bool:
    if target_platform() != "gpu" or jax.default_backend() != "gpu":
        return False
    dev = jax.devices()[0]
    return "nvidia" in dev.device_kind.lower() or "cuda" in getattr(dev.client, "platform_version", "").lower()


def _half(dtype) -> bool:
    return jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))


def normalize_attention_impl(name: str | None) -> str:
    """`name`, None read as 'auto'; AttentionUnavailable if it is not one of ATTENTION_IMPLS."""
    name = "auto" if name is None else name
    if name not in ATTENTION_IMPLS:
        choices = ", ".join(ATTENTION_IMPLS)
        raise AttentionUnavailable(f"unknown attention implementation {name!r} (choose from {choices})")
    return name


def check_attention_impl(name: str | None, dtype=None) -> str:
    """`name` (None = 'auto') if this machine can run it, else raise AttentionUnavailable.

    cudnn needs an NVIDIA GPU (and bfloat16/float16 compute when `dtype` is given); splash
    needs a TPU (its interpret mode, which `attention` uses off TPU, is for tests only).
    """
    name = normalize_attention_impl(name)
    backend = target_platform()
    if name == "cudnn" and not _is_nvidia_gpu():
        raise AttentionUnavailable(f"attention 'cudnn' needs an NVIDIA GPU; JAX runs on {backend} here")
    if name == "cudnn" and dtype is not None and not _half(dtype):
        raise AttentionUnavailable(f"attention 'cudnn' needs bfloat16 or float16 compute, not {jnp.dtype(dtype).name}")
    if name == "splash" and backend != "tpu":
        raise AttentionUnavailable(f"attention 'splash' needs a TPU; JAX runs on {backend} here")
    return name


def resolve_attention_impl(name: str | None, dtype, lq: int, head_dim: int, masked: bool = False) -> str:
    """The implementation `attention` runs for `name` ('auto' / None picks per backend, below).

    auto: CPU -> chunked (xla when the queries fit one block); NVIDIA GPU -> cudnn for
    bfloat16/float16 with head dim a multiple of 8 up to 128, else xla; TPU -> splash for
    unmasked attention with head dim a multiple of 128, else xla; other backends -> xla.
    """
    name = normalize_attention_impl(name)
    if name != "auto":
        return name
    backend = target_platform()
    if backend == "cpu":
        return "chunked" if lq > CHUNK_QUERIES else "xla"
    if _is_nvidia_gpu():
        return "cudnn" if _half(dtype) and head_dim % 8 == 0 and head_dim <= 128 else "xla"
    if backend == "tpu":
        return "splash" if not masked and head_dim % 128 == 0 else "xla"
    return "xla"


def attention(q, k, v, *, mask=None, is_causal: bool = False, implementation: str | None = "auto"):
    """Scaled dot-product attention. q (B, Lq, H, D), k/v (B, Lk, H, D) -> (B, Lq, H*D).

    mask: optional boolean, broadcastable to (B, H, Lq, Lk), True = attend.
    implementation: one of ATTENTION_IMPLS (None = 'auto'); see resolve_attention_impl.
    'xla' and 'cudnn' are jax.nn.dot_product_attention's; 'chunked' and 'splash' are
    chunked_attention and splash_attention below.
    """
    b, lq, h, d = q.shape
    impl = resolve_attention_impl(implementation, q.dtype, lq, d, masked=mask is not None or is_causal)
    if impl == "cudnn":
        check_attention_impl(impl, q.dtype)
    if impl in ("xla", "cudnn"):
        out = jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=is_causal, implementation=impl)
    elif impl == "chunked":
        out = chunked_attention(q, k, v, mask=mask, is_causal=is_causal)
    else:
        if mask is not None or is_causal:
            raise ValueError("attention 'splash' takes neither a mask nor is_causal here")
        out = splash_attention(q, k, v)
    return out.reshape(b, lq, h * d)


def chunked_attention(q, k, v, *, mask=None, is_causal: bool = False, block: int = CHUNK_QUERIES):
    """Attention as a `lax.map` over query blocks, each a dense softmax over all keys.

    q (B, Lq, H, D), k/v (B, Lk, H, D) -> (B, Lq, H, D); mask broadcastable to (B, H, Lq, Lk).
    n = ceil(Lq / block) blocks of ceil(Lq / n) queries rounded up to a multiple of 8 (at
    most `block`); queries are zero-padded to n blocks (their rows are dropped). Logits
    (scaled by 1/sqrt(D)) and softmax in float32, as jax.nn.dot_product_attention's XLA path.
    Only a (B, H, block, Lk) slab of logits is live at a time, which keeps it in cache on CPUs.
    """
    b, lq, h, d = q.shape
    lk = k.shape[1]
    n = -(-lq // block)
    per_block = -(-lq // n)  # ceil(lq / n)
    block = -(-per_block // 8) * 8
    pad = n * block - lq
    scale = 1.0 / math.sqrt(d)
    qb = jnp.pad(q, ((0, 0), (0, pad), (0, 0), (0, 0))).reshape(b, n, block, h, d).transpose(1, 0, 3, 2, 4)
    kt, vt = k.transpose(0, 2, 3, 1), v.transpose(0, 2, 1, 3)  # (B, H, D, Lk), (B, H, Lk, D)
    masks = None
    if mask is not None:
        mask = jnp.asarray(mask, bool).reshape((1,) * (4 - jnp.ndim(mask)) + jnp.shape(mask))
        if mask.shape[2] != 1:  # per-query rows: one slice per block
            rows = jnp.pad(mask, ((0, 0), (0, 0), (0, pad), (0, 0)))
            masks = jnp.moveaxis(rows.reshape(*mask.shape[:2], n, block, mask.shape[3]), 2, 0)

    def one(xs):
        i, qi, mi = xs  # qi (B, H, block, D)
        s = jnp.einsum("bhqd,bhdk->bhqk", qi, kt, preferred_element_type=jnp.float32) * scale
        keep = None if mask is None else (mask if mi is None else mi)
        if is_causal:
            causal = (i * block + jnp.arange(block))[:, None] >= jnp.arange(lk)[None, :]
            keep = causal if keep is None else keep & causal
        if keep is not None:
            s = jnp.where(keep, s, jnp.finfo(jnp.float32).min)
        p = jnp.exp(s - jnp.max(s, axis=-1, keepdims=True))
        o = jnp.einsum("bhqk,bhkd->bhqd", p.astype(v.dtype), vt, preferred_element_type=jnp.float32)
        return (o / jnp.sum(p, axis=-1)[..., None]).astype(v.dtype)

    out = jax.lax.map(one, (jnp.arange(n), qb, masks))  # (n, B, H, block, D)
    return out.transpose(1, 0, 3, 2, 4).reshape(b, n * block, h, d)[:, :lq]


def _splash_block(length: int) -> int:
    return next(s for s in (512, 256, 128) if length % s == 0)


def splash_attention(q, k, v, *, interpret: bool | None = None):
    """Pallas splash attention (the TPU flash kernel): q (B, Lq, H, D), k/v (B, Lk, H, D) -> (B, Lq, H, D).

    Sequences are padded to a multiple of 128; padded keys get segment id 1 and real keys
    and all queries 0, so no real query attends a padded key (padded query rows are
    dropped). Blocks: the largest of 512/256/128 dividing the padded length (unmeasured on
    TPU). interpret: None = Pallas interpret mode iff the backend is not a TPU (for tests).
    """
    mesh = jax.sharding.get_abstract_mesh()
    if not mesh.empty and mesh.size > 1:  # a Mosaic kernel is not partitioned by XLA: run it per shard
        return _splash_sharded(q, k, v, mesh, interpret)
    return _splash_local(q, k, v, interpret)


def _splash_local(q, k, v, interpret):
    """The kernel on the arrays as they are (one device, or one shard inside shard_map)."""
    from jax.experimental.pallas.ops.tpu import splash_attention as sa

    b, lq, h, d = q.shape
    lk = k.shape[1]
    lqp, lkp = (-(-n // _SPLASH_ALIGN) * _SPLASH_ALIGN for n in (lq, lk))
    bq, bkv = _splash_block(lqp), _splash_block(lkp)
    kernel = sa.make_splash_mha(
        sa.MultiHeadMask([sa.FullMask((lqp, lkp))] * h),
        block_sizes=sa.BlockSizes(block_q=bq, block_kv=bkv, block_kv_compute=bkv),
        head_shards=1,
        q_seq_shards=1,
        interpret=target_platform() != "tpu" if interpret is None else interpret,
    )
    seg = sa.SegmentIds(q=jnp.zeros((lqp,), jnp.int32), kv=(jnp.arange(lkp) >= lk).astype(jnp.int32))
    heads = lambda x, n: jnp.pad(x, ((0, 0), (0, n - x.shape[1]), (0, 0), (0, 0))).transpose(0, 2, 1, 3)  # noqa: E731
    q = q * jnp.asarray(1.0 / math.sqrt(d), q.dtype)
    out = jax.vmap(lambda qi, ki, vi: kernel(qi, ki, vi, segment_ids=seg))(heads(q, lqp), heads(k, lkp), heads(v, lkp))
    return out.transpose(0, 2, 1, 3)[:, :lq]


def _splash_sharded(q, k, v, mesh, interpret):
    """splash_attention under jax.shard_map over the current mesh: the batch split over its 'data'
    axis (the candidates), the heads over 'fsdp' when they divide (activations are replicated
    there under FSDP, so each chip takes a share of the heads instead of repeating them all)."""
    from jax.sharding import PartitionSpec as P

    names = dict(zip(mesh.axis_names, mesh.axis_sizes))
    batch = "data" if names.get("data", 1) > 1 and q.shape[0] % names["data"] == 0 else None
    heads = "fsdp" if names.get("fsdp", 1) > 1 and q.shape[2] % names["fsdp"] == 0 else None
    spec = P(batch, None, heads, None)
    local = lambda a, b, c: _splash_local(a, b, c, interpret)  # noqa: E731
    return jax.shard_map(local, mesh=mesh, in_specs=(spec, spec, spec), out_specs=spec, check_vma=False)(q, k, v)


def rope(pos, dim: int, theta: int = 10_000):
    """Rotary angles of one position axis as 2x2 rotations (BFL `rope`), in float32.

    pos (..., N) float -> (..., N, dim/2, 2, 2) with [[cos, -sin], [sin, cos]] of pos * omega_j,
    omega_j = theta^(-2j/dim). The frequencies are computed in float64 on the host (static),
    the angles in float32 (positions are dynamic inputs).
    """
    if dim % 2:
        raise ValueError(f"rope dim must be even, got {dim}")
    omega = 1.0 / (float(theta) ** (np.arange(0, dim, 2, dtype=np.float64) / dim))
    angles = pos.astype(jnp.float32)[..., None] * jnp.asarray(omega, jnp.float32)
    cos, sin = jnp.cos(angles), jnp.sin(angles)
    out = jnp.stack([cos, -sin, sin, cos], axis=-1)
    return out.reshape(*angles.shape, 2, 2)


def apply_rope(x, freqs):
    """Rotate consecutive channel pairs of x (B, L, H, D) by freqs (B, L, D/2, 2, 2) -> x's shape and dtype.

    Computed in float32 (BFL `apply_rope`, diffusers `apply_rotary_emb` with interleaved pairs).
    """
    x_ = x.astype(jnp.float32).reshape(*x.shape[:-1], -1, 1, 2)  # (B, L, H, D/2, 1, 2)
    f = freqs[:, :, None]  # (B, L, 1, D/2, 2, 2)
    out = f[..., 0] * x_[..., 0] + f[..., 1] * x_[..., 1]  # (B, L, H, D/2, 2)
    return out.reshape(x.shape).astype(x.dtype)


def timestep_embedding(t, dim: int, max_period: int = 10_000, time_factor: float = 1000.0):
    """Sinusoidal embedding of t (B,) -> (B, dim) float32, [cos | sin] of time_factor * t * freqs.

    freqs_j = max_period^(-j / (dim/2)) (BFL `timestep_embedding`; diffusers `Timesteps` with
    flip_sin_to_cos=True, downscale_freq_shift=0 applied to 1000 * t).
    """
    half = dim // 2
    # Static frequencies on the host, the exponent rounded to float32 exactly as both
    # references compute it: arguments reach 1000 rad, so one ulp of a frequency moves them
    # by ~6e-5, which the trained time_in weights amplify.
    exponent = (np.float32(-math.log(max_period)) * np.arange(half, dtype=np.float32)) / np.float32(half)
    freqs = np.exp(exponent.astype(np.float64)).astype(np.float32)
    args = (time_factor * t.astype(jnp.float32))[:, None] * jnp.asarray(freqs)[None]
    emb = jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)
    if dim % 2:
        emb = jnp.pad(emb, ((0, 0), (0, 1)))
    return emb

"""Multi-host slice reads: two CPU processes joined by jax.distributed load a FLUX checkpoint
FSDP-sharded across them; each reads only the bytes of its own slices (about half the file)
and holds exactly the values a single-process load gives. The blocks are stacked (one
parameter per block weight, its layers read one by one, each only in the slice it fills)."""

import json
import os
import sys
import textwrap
from pathlib import Path

from flax import nnx
from safetensors.numpy import save_file

from helpers import bfl_tensors
from processes import free_port, run_all
from vmdiff_jax.nn.flux import Flux, FluxConfig

ROOT = Path(__file__).resolve().parents[1]

WORKER = textwrap.dedent(
    """
    import json, sys
    import jax
    pid, port, path = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=2, process_id=pid)
    import numpy as np
    from flax import nnx
    from vmdiff_jax.engine import sharding
    from vmdiff_jax.checkpoints import flux
    from vmdiff_jax.checkpoints.files import open_checkpoint
    from vmdiff_jax.checkpoints.loader import fill

    mesh = sharding.make_mesh(data=1, fsdp=2, devices=jax.devices())
    ckpt = open_checkpoint(path)
    model = fill(flux.build(ckpt, dtype=np.float32), ckpt, sharding=sharding.param_sharding_fn(mesh, min_size=64))
    read = ckpt.bytes_read
    ref_ckpt = open_checkpoint(path)
    ref = fill(flux.build(ref_ckpt, dtype=np.float32), ref_ckpt)  # one process, whole tensors
    ref_state = {".".join(map(str, p)): np.asarray(v.get_value()) for p, v in nnx.to_flat_state(nnx.state(ref, nnx.Param))}
    sharded = equal = 0
    for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        name, arr = ".".join(map(str, p)), v.get_value()
        sharded += len(arr.sharding.device_set) == 2 and not arr.is_fully_replicated
        for shard in arr.addressable_shards:
            equal += bool(np.array_equal(np.asarray(shard.data), ref_state[name][shard.index]))
    print("RESULT " + json.dumps(dict(pid=pid, read=read, total=ref_ckpt.bytes_read, sharded=sharded,
                                      params=len(ref_state), equal=equal, local=len(jax.local_devices()),
                                      devices=len(jax.devices()))))
    """
)


def test_two_processes_read_half_each_and_match_one(tmp_path):
    path = tmp_path / "flux.safetensors"
    save_file(bfl_tensors(Flux(FluxConfig.tiny(depth=2, depth_single_blocks=3), rngs=nnx.Rngs(7))), path)
    (tmp_path / "worker.py").write_text(WORKER)
    port = free_port()
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
    env.pop("XLA_FLAGS", None)
    logs = run_all([([sys.executable, str(tmp_path / "worker.py"), str(pid), str(port), str(path)], env)
                    for pid in range(2)])
    results = []
    for log in logs:
        results.append(json.loads(next(line for line in log.splitlines() if line.startswith("RESULT "))[7:]))
    print(results)
    for r in results:
        assert r["devices"] == 2 and r["local"] == 1
        assert r["equal"] == r["params"]  # every local shard equals the single-process load there
        assert r["sharded"] > r["params"] // 2  # most parameters are split across the two processes
        assert 0.45 * r["total"] < r["read"] < 0.6 * r["total"], r  # about half the file each

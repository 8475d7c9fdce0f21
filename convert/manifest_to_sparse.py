"""Write a full-size safetensors file from a key/shape manifest, data region left as a hole.

    python convert/manifest_to_sparse.py ../shared/manifests/flux1_dev_transformer.bfl.json /tmp/flux_bfl.safetensors
    vmdiff convert --check /tmp/flux_bfl.safetensors

A few KB on disk for a 24 GB header: structure checks of real layouts without the weights.
"""

import argparse
import json

from vmdiff_jax.checkpoints.files import write_sparse

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("manifest")
    ap.add_argument("out")
    ap.add_argument("--dtype", default="BF16")
    a = ap.parse_args()
    shapes = {k: tuple(v) for k, v in json.loads(open(a.manifest).read()).items()}
    write_sparse(shapes, a.out, a.dtype)
    print(f"wrote {a.out}: {len(shapes)} tensors (sparse)")

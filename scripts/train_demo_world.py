"""Train the demo world's seven networks with optax and ship them (vmdiff_jax/assets/world).

    python scripts/train_demo_world.py [--out DIR] [--seed 0]

Trains the VAE, DINOv2, CLIP bigG, then FLUX with the Redux encoder and CLIP-L (world/train.py),
writes them in the real checkpoint layouts (world/shipped.py), loads them back through the
ordinary loaders and calibrates the world's acceptance threshold: the 75th percentile of S over
plain fusions (alpha 0.5, beta (1, 1), one noise) of ordered pairs of distinct objects, so that
the EAA search has something to find, as 2.4 is for FLUX.1 Krea. Seeded: the same seed gives
the same weights on the same machine. About 20 minutes on an idle 2-core CPU (wall and CPU
seconds of each model in world.json; CPU / cores is what an idle machine takes).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402


def calibrate(folder: Path, pairs: int = 48, seed: int = 0) -> dict:
    """S of plain fusions over `pairs` ordered pairs of distinct objects; returns the statistics."""
    import jax

    from vmdiff_jax.checkpoints.weights import find_weights
    from vmdiff_jax.engine.pipeline import VMDiff
    from vmdiff_jax.world import objects

    pipe = VMDiff.from_pretrained(find_weights(folder, use_hf_cache=False), dtype="float32", size=objects.SIZE)
    objs = objects.all_objects()
    rng = np.random.default_rng(seed)
    chosen = [tuple(int(v) for v in rng.choice(len(objs), 2, replace=False)) for _ in range(pairs)]
    values = []
    for i, j in chosen:
        a, b = objs[i], objs[j]
        _, s = pipe.plain_fusion(np.stack([objects.draw(a), objects.draw(b)]), a.label, b.label,
                                 jax.random.key(seed), round_k=0)
        values.append(float(s.S[0]))
    v = np.asarray(values)
    return {"pairs": pairs, "S_mean": round(float(v.mean()), 4), "S_p25": round(float(np.percentile(v, 25)), 4),
            "S_p50": round(float(np.percentile(v, 50)), 4), "S_p75": round(float(np.percentile(v, 75)), 4),
            "S_max": round(float(v.max()), 4)}


def main() -> int:
    from vmdiff_jax.engine.demo import TOKENIZER_FOLDER, demo_tokenizer
    from vmdiff_jax.world import shipped, train
    from vmdiff_jax.world.configs import WorldConfigs

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=shipped.WORLD_DIR)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--scale", type=float, default=1.0, help="multiply every step count (quick trials)")
    ap.add_argument("--calibrate-only", action="store_true", help="only recalibrate the threshold of the world in --out")
    args = ap.parse_args()
    if args.calibrate_only:
        info = shipped.read_info(args.out)
        t0 = time.time()
        cal = calibrate(args.out, seed=info.get("seed", args.seed))
        info |= {"calibration": cal, "threshold": cal["S_p75"], "calibration_seconds": round(time.time() - t0, 1)}
        shipped.write_info(args.out, info)
        print(f"threshold {info['threshold']} ({cal})")
        return 0
    steps = train.Steps()
    steps = dataclasses.replace(steps, **{f: max(2, int(getattr(steps, f) * args.scale))
                                          for f in ("vae", "dinov2", "clip_bigg", "flux")})
    tok = demo_tokenizer()
    cfg = WorldConfigs.default(tok.vocab_size)
    times, cpu, final = {}, {}, {}

    def timed(name, fn, *a, **kw):
        t0, c0 = time.time(), time.process_time()
        out = fn(*a, **kw)
        times[name], cpu[name] = round(time.time() - t0, 1), round(time.process_time() - c0, 1)
        final[name] = round(float(np.mean(out[1][-20:])), 5)
        print(f"{name}: {times[name]} s wall, {cpu[name]} s CPU, final loss {final[name]}", flush=True)
        return out

    vae, _ = timed("vae", train.train_vae, cfg, steps.vae, steps.batch, args.seed, log=print)
    dinov2, _ = timed("dinov2", train.train_dinov2, cfg, steps.dinov2, steps.batch, args.seed, log=print)
    clip_bigg, _ = timed("clip_bigg", train.train_clip_bigg, cfg, tok, steps.clip_bigg, steps.batch, args.seed, log=print)
    gen, _ = timed("flux", train.train_flux, cfg, vae, tok, steps.flux, steps.batch, args.seed, log=print)
    info = {"seed": args.seed, "steps": dataclasses.asdict(steps), "train_seconds": times, "train_cpu_seconds": cpu,
            "final_loss": final,
            "machine": f"{os.cpu_count()} CPU cores", "date": time.strftime("%Y-%m-%d")}
    shipped.save_world(args.out, cfg, vae=vae, flux=gen.flux, redux=gen.redux, clip_l=gen.clip_l, dinov2=dinov2,
                       clip_bigg=clip_bigg, tokenizer_folder=TOKENIZER_FOLDER, info=info)
    t0 = time.time()
    cal = calibrate(args.out, seed=args.seed)
    info |= {"calibration": cal, "threshold": cal["S_p75"], "calibration_seconds": round(time.time() - t0, 1)}
    shipped.write_info(args.out, info)
    size = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file())
    print(f"wrote {args.out} ({size / 1e6:.1f} MB); threshold {info['threshold']} (S over {cal['pairs']} plain fusions: "
          f"median {cal['S_p50']}, 75th percentile {cal['S_p75']}, max {cal['S_max']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

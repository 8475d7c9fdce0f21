"""`vmdiff plan --topology NAME`: what a run would cost on a TPU slice, from the TPU compiler itself.

Builds the full-size models abstractly (nothing allocated), compiles each stage the run uses for
the slice's compile-only devices with the run's mesh (data x fsdp) and reports, per chip, the
compiler's memory analysis (parameters, temporaries, outputs, peak against HBM), the FLOPs of one
call (a while loop's body is counted once by the compiler, so BNoise / MDeNoise add the FLUX calls
of their remaining steps and blocks, from compiled FLUX evaluations at the stage's context
length: `flux_call_flops`), the
bytes its collectives move, the compile time, and a time per call: the compiler's own estimate
(`optimal_seconds`) where it is positive, else the roofline (FLOPs at 50% of peak bf16 against
the collectives at 80% of ICI bandwidth). A configuration the compiler refuses is reported as not
fitting, with its reason (exit 0).
"""

from __future__ import annotations

import dataclasses
import json
import time

import jax
import jax.numpy as jnp

STAGES = ("condition", "pooled_text", "text_embed", "dino_patches", "features", "bnoise", "mdenoise")
MFU, LINK_EFF = 0.5, 0.8
# a pair whose alpha stage suffices (BENCHMARKS.md, search calls): 1 BNoise + 11 MDeNoise candidates
BNOISE_PER_PAIR, MDENOISE_PER_PAIR = 1, 11
IIOF_PAIRS = 1560  # 40 images, every ordered pair


def full_size_models(dtype, flux_dtype, attention: str | None):
    """The seven abstract full-size networks (bf16 or fp8 FLUX; scorers computing in float32)."""
    from flax import nnx

    from vmdiff_jax.checkpoints.flux import abstract_flux
    from vmdiff_jax.checkpoints.vae import abstract_vae
    from vmdiff_jax.nn.flux import FluxConfig
    from vmdiff_jax.nn.redux import ReduxEncoder, ReduxProjector
    from vmdiff_jax.nn.vae import VAEConfig
    from vmdiff_jax.nn.vit import CLIP, TextTransformer, VisionTransformer
    from vmdiff_jax.nn.vit_config import ViTConfig

    kw = dict(dtype=dtype, param_dtype=dtype)
    f32 = dict(kw, dtype=jnp.float32)
    sig = ViTConfig.siglip_so400m()

    def shape(make):
        return nnx.eval_shape(lambda: make(nnx.Rngs(0)))

    return {
        "flux": abstract_flux(FluxConfig.flux1_dev(), dtype, attention_impl=attention, fp8=flux_dtype == "fp8"),
        "vae": abstract_vae(VAEConfig.flux(), dtype),
        "redux": shape(lambda r: ReduxEncoder(VisionTransformer(sig, **kw, rngs=r),
                                              ReduxProjector(sig.width, 4096, **kw, rngs=r))),
        "clip_l": shape(lambda r: TextTransformer(ViTConfig.clip_l(), **kw, rngs=r)),
        "dinov2": shape(lambda r: VisionTransformer(ViTConfig.dinov2_base(), **f32, rngs=r)),
        "clip_bigg": shape(lambda r: CLIP(ViTConfig.clip_bigg_vision(), ViTConfig.clip_bigg_text(), **f32, rngs=r)),
    }


@jax.jit
def _flux_call(flux_def, flux_state, x, img_ids, txt, txt_ids, t, y, g):
    from flax import nnx

    return nnx.merge(flux_def, flux_state)(x, img_ids, txt, txt_ids, t, y, g)


def flux_call_flops(flux, mesh, n: int, seq: int, ctx: int, platform: str) -> tuple[float, float, float]:
    """(F, f11, compile s): per-chip FLOPs of ONE full-depth FLUX evaluation of n rows with ctx
    context tokens, and of the 1 + 1 block evaluation that a scanned loop body counts.

    The compiler counts a scan's body once, so depth comes by arithmetic from three compiles of
    shallow unrolled copies (no block, one double block, one single block): with f00 the
    embedders and the last layer, d and s one block each, F = f00 + depth d + single s.
    Their attention is 'xla' (a Mosaic kernel's FLOPs are invisible to the cost analysis)."""
    from flax import nnx

    from vmdiff_jax.engine import targets
    from vmdiff_jax.nn.flux import Flux

    cfg, r = flux.cfg, (lambda shape, dt: targets.rows(mesh, shape, dt))
    inputs = (r((n, seq, cfg.in_channels), jnp.bfloat16), r((n, seq, 3), jnp.float32),
              r((n, ctx, cfg.context_in_dim), jnp.bfloat16), r((n, ctx, 3), jnp.float32), r((n,), jnp.float32),
              r((n, cfg.vec_in_dim), jnp.bfloat16), r((n,), jnp.float32))
    f, secs = {}, 0.0
    for d, s in ((0, 0), (1, 0), (0, 1)):
        shallow = nnx.eval_shape(lambda: Flux(dataclasses.replace(cfg, depth=d, depth_single_blocks=s),
                                              dtype=jnp.bfloat16, param_dtype=jnp.bfloat16, rngs=nnx.Rngs(0),
                                              attention_impl="xla", fp8=flux.fp8,
                                              scan_blocks=False))
        c = targets.compile_stage(_flux_call, (*targets.abstract_state(shallow, mesh), *inputs), platform=platform,
                                  param_arg_count=2)
        if c.error:
            raise RuntimeError(f"FLUX evaluation does not compile for counting FLOPs: {c.error}")
        f[d, s], secs = c.flops, secs + c.compile_s
    double, single = f[1, 0] - f[0, 0], f[0, 1] - f[0, 0]
    return f[0, 0] + cfg.depth * double + cfg.depth_single_blocks * single, f[0, 0] + double + single, secs


def plan(topology: str, *, stages_: tuple[str, ...] = STAGES, dtype: str = "bf16", size: int = 512, steps: int = 20,
         fsdp: int | str = "auto", pairs_per_call: int | str = "auto", attention: str | None = None,
         log=print) -> dict:
    """The plan as a dict (the --json object); `log` gets a line per compiled stage."""
    from vmdiff_jax.engine import fsdp_auto, sharding, targets
    from vmdiff_jax.method.hsp import HSPConfig, seq_len

    target = targets.TARGETS[topology]
    devs = targets.devices(target)
    attention = attention or "auto"
    models = full_size_models(jnp.bfloat16, dtype, attention)
    hsp_cfg = HSPConfig(num_steps=steps, size=size)
    t_all = time.perf_counter()
    choice: dict = {"from": "given"}
    if fsdp == "auto":  # fsdp_auto.auto_fsdp, as a run on the slice chooses it (compiling its FLUX stages)
        compiled_choice = any(s in targets.FIT_STAGES for s in stages_)
        fsdp = fsdp_auto.auto_fsdp(models["flux"], None, target.chips, device_memory=target.hbm_bytes,
                                  models=models if compiled_choice else None, cfg=hsp_cfg, devices=devs,
                                  platform=target.platform, record=choice, log=log)
    if target.chips % fsdp:
        raise ValueError(f"--fsdp {fsdp} does not divide the {target.chips} chips of {topology}")
    data = target.chips // fsdp
    mesh = sharding.make_mesh(data=data, fsdp=fsdp, devices=devs)
    ppc = 1 if pairs_per_call == "auto" else int(pairs_per_call)
    n = -(-2 * ppc // data) * data  # golden section's first step: 2 candidates a pair, padded to the data axis
    seq, ctx = seq_len(size, models["vae"].cfg.downsample_factor), targets.context_tokens(models)
    resident = targets.resident_bytes(models, mesh)
    out = {"topology": topology, "chips": target.chips, "hbm_bytes": target.hbm_bytes,
           "mesh": {"data": data, "fsdp": fsdp}, "dtype": dtype, "size": size, "steps": steps, "attention": attention,
           "candidates_per_call": n, "resident_bytes": sum(resident.values()), "resident": resident,
           "fsdp_from": choice["from"], "fsdp_tried": {str(k): v for k, v in choice.get("tried", {}).items()},
           "stages": []}
    # what --fsdp auto compiled at one candidate a data row is the same call when n = data
    reuse = choice.get("compiled", {}).get(fsdp, {}) if n == data else {}
    for name in stages_:
        if name in reuse:
            c = reuse[name]
        else:
            fn, args, kw, parts = targets.stage_calls(name, hsp_cfg, models, mesh, n, ctx=ctx)
            c = targets.compile_stage(fn, args, kw, platform=target.platform, param_arg_count=parts)
        row = {"name": name, "parameters_bytes": c.parameters_bytes, "temp_bytes": c.temp_bytes,
               "output_bytes": c.output_bytes, "peak_bytes": c.peak_bytes, "flops": c.flops,
               "collective_bytes": sum(c.collectives.values()), "collectives": c.collectives,
               "compile_s": round(c.compile_s, 1), "compiler_optimal_s": c.optimal_seconds, "error": c.error}
        if c.error is None and name in ("bnoise", "mdenoise"):  # the loops' uncounted FLUX work
            trips = hsp_cfg.bnoise_calls if name == "bnoise" else hsp_cfg.mdenoise_calls
            bodies = 2 if name == "bnoise" else 1  # denoise + invert scans / one denoise scan, each body counted once
            full, f11, dt = flux_call_flops(models["flux"], mesh, n, seq, 2 * ctx if name == "bnoise" else ctx,
                                            target.platform)
            row["flops"] = c.flops + bodies * (full - f11) + (trips - bodies) * full
            row["collective_bytes"] = int(row["collective_bytes"] * row["flops"] / max(c.flops, 1.0))
            row["flux_call_flops"], row["flux_call_compile_s"] = full, round(dt, 1)
        _estimate(row, target)
        # every network stays resident: the call's peak less its own parameters, plus all of them
        row["required_bytes"] = c.peak_bytes - c.parameters_bytes + out["resident_bytes"]
        row["fits"] = c.error is None and row["required_bytes"] <= target.hbm_bytes
        out["stages"].append(row)
        log(_line(row, target))
    out["compile_s_total"] = round(time.perf_counter() - t_all, 1)
    _summary(out, target, ppc, pairs_per_call == "auto")
    return out


def _estimate(row: dict, target) -> None:
    """estimated_s: the compiler's optimal_seconds when positive, else the roofline; which one in estimate_from."""
    roof = max(row["flops"] / (target.peak_flops * MFU), row["collective_bytes"] / (target.link_bytes_s * LINK_EFF))
    row["roofline_s"] = roof
    opt = row.get("compiler_optimal_s")
    if opt is not None and opt > 0 and row["name"] not in ("bnoise", "mdenoise"):
        row["estimated_s"], row["estimate_from"] = opt, "compiler"
    else:
        row["estimated_s"], row["estimate_from"] = roof, "roofline"


def _summary(out: dict, target, ppc: int, auto: bool) -> None:
    st = {r["name"]: r for r in out["stages"]}
    out["fits"] = all(r["fits"] for r in out["stages"])
    out["reasons"] = [f"{r['name']}: {r['error'] or 'needs %.2f GB > HBM %.2f GB' % (r['required_bytes'] / 1e9, target.hbm_bytes / 1e9)}"
                      for r in out["stages"] if not r["fits"]]
    n = out["candidates_per_call"]
    if auto and "mdenoise" in st and "bnoise" in st and out["fits"]:
        # temporaries grow with the candidates a chip holds: extrapolate linearly from this compile
        per = max(st["mdenoise"]["temp_bytes"], st["bnoise"]["temp_bytes"]) / max(1, n // out["mesh"]["data"])
        free = 0.9 * target.hbm_bytes - out["resident_bytes"]  # every network's parameters stay on the chip
        ppc = max(1, int(free // max(per, 1)) * out["mesh"]["data"] // 2)
    out["pairs_per_call"] = ppc
    _compilations(out, st)
    if "mdenoise" in st and "bnoise" in st:
        slot = {k: st[k]["estimated_s"] / n for k in ("bnoise", "mdenoise")}  # seconds per candidate slot
        pair_s = BNOISE_PER_PAIR * slot["bnoise"] + MDENOISE_PER_PAIR * slot["mdenoise"]
        out["pair_s"] = pair_s
        out["pairs_per_hour"] = 3600.0 / pair_s if pair_s > 0 else None
        out["iiof_run_s"] = IIOF_PAIRS * pair_s
    else:
        out["pairs_per_hour"] = None


BUCKETED = ("bnoise", "mdenoise", "features")  # compiled once per call size of a run
SINGLE = ("condition", "pooled_text", "text_embed", "dino_patches")  # once


def _compilations(out: dict, st: dict) -> None:
    """compilations: the programs a `vmdiff batch` run at the recommended pairs per call compiles
    (BNoise, MDeNoise and features once per call size, `scheduler.bucket_sizes(2 P, data)`; the
    other four stages once); compile_total_s: their compile time, each size taken to compile as
    long as the planned call, summed over the stages planned here (compile_total_stages). Larger
    calls compile longer (v5e-8, 2 -> 24 candidates: BNoise 1.4x, MDeNoise 2.3x, features 2.0x;
    benchmarks/iiof_compilations.py), so planned at the recommended pairs per call (about the
    largest size) this is an upper bound, planned at 1 pair a lower one."""
    from vmdiff_jax.engine.scheduler import bucket_sizes

    buckets = bucket_sizes(2 * out["pairs_per_call"], out["mesh"]["data"])
    out["call_sizes"] = list(buckets)
    out["compilations"] = len(BUCKETED) * len(buckets) + len(SINGLE)
    done = [r for r in out["stages"] if r["name"] in BUCKETED + SINGLE and r["error"] is None]
    out["compile_total_s"] = round(sum(r["compile_s"] * (len(buckets) if r["name"] in BUCKETED else 1) for r in done), 1)
    out["compile_total_stages"] = [r["name"] for r in done]


def _line(r: dict, target) -> str:
    if r["error"]:
        return f"{r['name']:>12}: does not compile for this slice: {r['error']}"
    gb = lambda b: b / 1e9  # noqa: E731
    return (f"{r['name']:>12}: params {gb(r['parameters_bytes']):6.2f} GB + temp {gb(r['temp_bytes']):5.2f} GB, peak "
            f"{gb(r['peak_bytes']):6.2f} GB, with every network resident {gb(r['required_bytes']):6.2f} / "
            f"{gb(target.hbm_bytes):.2f} GB{'' if r['fits'] else ' (does not fit)'}; "
            f"{r['flops'] / 1e12:9.2f} TFLOP, collectives {gb(r['collective_bytes']):6.2f} GB; compile {r['compile_s']:5.1f} s; "
            f"~{r['estimated_s'] * 1e3:9.1f} ms a call ({r['estimate_from']})")


def report(out: dict) -> str:
    """The plan's closing lines (after the per-stage lines)."""
    lines = [f"{out['topology']}: mesh data {out['mesh']['data']} x fsdp {out['mesh']['fsdp']}, {out['dtype']}, "
             f"{out['size']} px, {out['steps']} steps, {out['candidates_per_call']} candidates a call; "
             f"compiled in {out['compile_s_total']} s"]
    lines.append("fits" if out["fits"] else "does NOT fit: " + "; ".join(out["reasons"]))
    lines.append(f"every network's parameters: {out['resident_bytes'] / 1e9:.2f} GB a chip")
    tried = "; ".join(f"fsdp {k}: {v}" for k, v in out["fsdp_tried"].items())
    lines.append(f"--fsdp {out['mesh']['fsdp']} ({out['fsdp_from']}{': ' + tried if tried else ''})")
    lines.append(f"recommended: --fsdp {out['mesh']['fsdp']} --pairs-per-call {out['pairs_per_call']}")
    lines.append(f"a batch run compiles {out['compilations']} programs (call sizes {out['call_sizes']}): about "
                 f"{out['compile_total_s'] / 60:.0f} min for {', '.join(out['compile_total_stages']) or 'no stage planned'}")
    if out.get("pairs_per_hour"):
        lines.append(f"predicted: {out['pairs_per_hour']:.0f} pairs an hour ({out['pair_s']:.2f} s a pair of "
                     f"{BNOISE_PER_PAIR} BNoise + {MDENOISE_PER_PAIR} MDeNoise candidates), an IIOF run "
                     f"({IIOF_PAIRS} pairs) {out['iiof_run_s'] / 3600:.2f} h")
    return "\n".join(lines)


def to_json(out: dict) -> str:
    return json.dumps(out, indent=2, default=lambda o: dataclasses.asdict(o) if dataclasses.is_dataclass(o) else str(o))

"""The whole VMDiff pipeline on tiny random-weight models: the demo command end to end,
determinism, report.json's schema, sequential three-way fusion, and the locators."""

import json

import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from vmdiff_jax.method import search
from vmdiff_jax.app.cli import main
from vmdiff_jax.engine.grounding import nms
from vmdiff_jax.method.hsp import HSPConfig
from vmdiff_jax.method.locators import WholeImage, foreground_box

DEMO = ["demo", "--demo-models", "random", "--steps", "4", "--size", "64", "--no-progress"]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    assert main(DEMO + ["--out", str(out)]) == 0
    return out


def test_demo_writes_all_outputs(demo_run):
    names = sorted(p.name for p in demo_run.iterdir())
    assert names == ["fused.png", "report.json", "search.png"]
    img = np.asarray(Image.open(demo_run / "fused.png"))
    assert img.shape == (64, 64, 3) and img.dtype == np.uint8 and img.std() > 0
    assert Image.open(demo_run / "search.png").size[0] == 1000


def test_report_schema(demo_run):
    r = json.loads((demo_run / "report.json").read_text())
    for key, typ in {"schema": int, "labels": list, "prompt": str, "seed": int, "schedule": str, "parameters": dict,
                     "score": float, "subscores": dict, "b_sim": float, "accepted": bool, "calls": int, "rounds": int,
                     "timings": dict, "settings": dict, "trajectory": list, "versions": dict}.items():
        assert isinstance(r[key], typ), key
    assert r["labels"] == ["apple", "rubber duck"]
    assert r["prompt"] == "A photo of apple creatively fused with rubber duck."
    assert set(r["subscores"]) == {"S", "d1", "d2", "n1", "n2", "c1", "c2"}
    assert set(r["parameters"]) == {"alpha", "beta1", "beta2", "weights", "betas"}
    p = r["parameters"]
    assert p["weights"] == pytest.approx([1 - p["alpha"], p["alpha"]]) and p["betas"] == [p["beta1"], p["beta2"]]
    assert r["objects"] == 2
    assert "random weights" in r["settings"]["models"]
    s = r["subscores"]
    assert r["score"] == pytest.approx(s["d1"] + s["d2"] + s["n1"] + s["n2"] - abs(s["d1"] - s["d2"]) - abs(s["n1"] - s["n2"]), abs=1e-5)
    assert r["score"] == pytest.approx(max(t["S"] for t in r["trajectory"]), abs=1e-9)
    # cost model: 4 steps -> BNoise 2 x round(4 * 11/20) = 4 calls, MDeNoise 4 calls per candidate
    assert r["settings"]["den_stop"] == 2
    per = {"alpha": 4}
    alpha_n = sum(t["stage"] == "alpha" for t in r["trajectory"])
    beta_n = sum(t["stage"] == "beta" for t in r["trajectory"])
    rounds = len({t["round"] for t in r["trajectory"]})
    assert r["calls"] == rounds * 4 + alpha_n * per["alpha"] + beta_n * (4 + 4)
    assert r["calls"] == r["trajectory"][-1]["calls_so_far"]
    first_alpha = [t for t in r["trajectory"] if t["stage"] == "alpha" and t["round"] == 1]
    assert len(first_alpha) == 11  # golden section with reuse on [0.4, 0.6] to 0.002
    assert all(0.4 <= t["alpha"] <= 0.6 for t in first_alpha)
    assert r["timings"]["total_s"] > 0


def test_same_seed_same_bytes_other_seed_differs(demo_run, tmp_path):
    again = tmp_path / "again"
    assert main(DEMO + ["--out", str(again)]) == 0
    assert (again / "fused.png").read_bytes() == (demo_run / "fused.png").read_bytes()
    other = tmp_path / "other"
    assert main(DEMO + ["--out", str(other), "--seed", "7"]) == 0
    assert (other / "fused.png").read_bytes() != (demo_run / "fused.png").read_bytes()


def test_sequential_three_way_fusion():
    from vmdiff_jax.engine.pipeline import VMDiff

    pipe = VMDiff.demo(random=True, num_steps=4, size=64, eaa_cfg=search.EAAConfig.tiny(), locator="whole")
    rng = np.random.default_rng(0)
    imgs = [rng.integers(0, 255, (64, 64, 3), dtype=np.uint8) for _ in range(3)]
    pipe.fuse(imgs[0], imgs[1], "cat", "teapot", seed=1)  # compile every stage for these shapes first
    before = pipe.compile_counts()
    res = pipe.fuse_sequence(imgs, ["cat", "teapot", "cactus"], seed=1)
    assert len(res) == 2
    assert res[1].labels == ("cat-teapot hybrid", "cactus")
    assert res[1].image.shape == (64, 64, 3)
    assert all(r.calls > 0 and len(r.trajectory) >= 2 for r in res)
    assert pipe.compile_counts() == before  # same shapes: no recompilation between fusions


def test_den_stop_matches_reference():
    assert HSPConfig().den_stop == 11  # i = 0..10 of 20, t = 1000 .. 652.5
    sig = HSPConfig().sigmas(seq_len=1024)  # 512 x 512: a 64 x 64 latent, 32 x 32 packed tokens
    assert 1000 * sig[10] == pytest.approx(652.5, abs=0.1) and 1000 * sig[11] == pytest.approx(605.7, abs=0.1)


def test_foreground_box_finds_the_object():
    rng = np.random.default_rng(0)
    grid, d = 8, 16
    bg, fg = rng.normal(size=d), rng.normal(size=d)
    tok = np.tile(bg, (grid, grid, 1)) + 0.01 * rng.normal(size=(grid, grid, d))
    tok[2:5, 3:7] = fg + 0.01 * rng.normal(size=(3, 4, d))
    box, ok = foreground_box(jnp.asarray(tok.reshape(-1, d)), grid)
    assert bool(ok) and np.asarray(box).tolist() == [3, 2, 7, 5]
    flat = np.tile(bg, (grid * grid, 1))
    _, ok = foreground_box(jnp.asarray(flat), grid)
    assert not bool(ok)  # nothing stands out: fall back to the whole image
    assert WholeImage()(np.zeros((30, 40, 3), np.uint8)) == (0.0, 0.0, 40.0, 30.0)


def test_nms_keeps_best_and_suppresses_overlaps():
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 9.5], [20, 20, 30, 30], [1, 1, 10, 10]], np.float32)
    scores = np.array([0.5, 0.9, 0.7, 0.3], np.float32)
    assert nms(boxes, scores, 0.8).tolist() == [1, 2, 3]  # box 3 overlaps box 1 at IoU 0.77 < 0.8
    assert nms(boxes, scores, 0.5).tolist() == [1, 2]
    assert nms(boxes, scores, 0.99).tolist() == [1, 2, 0, 3]  # nothing suppressed: score order


def test_fuse_takes_an_explicit_prng_key():
    import jax

    from vmdiff_jax.engine.pipeline import VMDiff

    pipe = VMDiff.demo(random=True, num_steps=4, size=64, eaa_cfg=search.EAAConfig.tiny(), locator="whole")
    rng = np.random.default_rng(1)
    a, b = (rng.integers(0, 255, (64, 64, 3), dtype=np.uint8) for _ in range(2))
    by_key = pipe.fuse(a, b, "cat", "teapot", jax.random.key(4))
    by_int = pipe.fuse(a, b, "cat", "teapot", 4)
    other = pipe.fuse(a, b, "cat", "teapot", jax.random.key(5))
    assert by_key.seed is None and by_int.seed == 4
    np.testing.assert_array_equal(by_key.image, by_int.image)
    assert by_key.score == by_int.score and not np.array_equal(by_key.image, other.image)


def test_mdenoise_is_the_batched_path_for_one_candidate():
    """The batched HSP (each row its own eps, c1, c2, y: rows may come from different pairs)
    gives each row what the one-candidate function gives it."""
    import jax

    from vmdiff_jax.method import hsp
    from vmdiff_jax.engine.demo import demo_models

    m = demo_models(0)
    cfg = HSPConfig(num_steps=3, size=32)
    n_tok = hsp.seq_len(32, m.vae.cfg.downsample_factor)
    rng = np.random.default_rng(2)
    c1, c2, d1, d2 = (jnp.asarray(rng.standard_normal((9, 32)), jnp.float32) for _ in range(4))
    y, y2 = (jnp.asarray(rng.standard_normal(32), jnp.float32) for _ in range(2))
    eps = jax.random.normal(jax.random.key(0), (n_tok, m.flux.cfg.in_channels))
    eps2 = jax.random.normal(jax.random.key(1), (n_tok, m.flux.cfg.in_channels))
    one = hsp.mdenoise(m.flux, m.vae, cfg, eps, c1, c2, 0.3, y)
    other = hsp.mdenoise(m.flux, m.vae, cfg, eps2, d1, d2, 0.6, y2)  # a second pair's candidate
    many = hsp.mdenoise_candidates(m.flux, m.vae, cfg, jnp.stack([eps2, eps]), jnp.stack([jnp.stack([d1, d2]), jnp.stack([c1, c2])]),
                                   jnp.array([[0.4, 0.6], [0.7, 0.3]]), jnp.stack([y2, y]))
    assert one.shape == (32, 32, 3) and float(one.min()) >= 0 and float(one.max()) <= 1
    np.testing.assert_allclose(np.asarray(many[1]), np.asarray(one), atol=2e-5)
    np.testing.assert_allclose(np.asarray(many[0]), np.asarray(other), atol=2e-5)
    eps_b = hsp.bnoise(m.flux, cfg, eps, c1, c2, 1.0, 1.5, y)
    blended = hsp.bnoise_candidates(m.flux, cfg, jnp.stack([eps, eps]), jnp.stack([jnp.stack([c1, c2])] * 2),
                                    jnp.array([[1.0, 1.0], [1.0, 1.5]]), jnp.stack([y, y]))
    np.testing.assert_allclose(np.asarray(blended[1]), np.asarray(eps_b), atol=2e-5)
    assert float(jnp.abs(blended[0] - blended[1]).max()) > 0  # beta changes the SCat context


def test_decode_uses_the_vaes_own_scale_and_shift():
    """hsp.decode reads scale/shift from the loaded VAE's config (as diffusers decodes with
    vae.config.scaling_factor), not module defaults."""
    import dataclasses

    from vmdiff_jax.method import hsp
    from vmdiff_jax.engine.demo import demo_models
    from vmdiff_jax.nn.vae import unscale_latents

    vae = demo_models(0).vae
    packed = jnp.asarray(np.random.default_rng(3).standard_normal((16, 64)), jnp.float32)
    ref = np.asarray(hsp.decode(vae, packed))
    vae.cfg = dataclasses.replace(vae.cfg, scale_factor=0.5, shift_factor=-0.2)
    got = np.asarray(hsp.decode(vae, packed))
    from vmdiff_jax.method.sampling import unpack

    want = np.clip((np.asarray(vae.decode(unscale_latents(unpack(packed[None], 8, 8), vae.cfg))[0]) + 1) / 2, 0, 1)
    np.testing.assert_allclose(got, want, atol=1e-6)
    assert np.abs(got - ref).max() > 1e-3  # the config's values took effect
    assert got.shape == (8 * vae.cfg.downsample_factor,) * 2 + (3,)


def test_authors_score_text_is_the_list_repr():
    from vmdiff_jax.engine.pipeline import VMDiff

    paper = VMDiff.demo(random=True, num_steps=2, size=32, locator="whole")
    authors = VMDiff.demo(random=True, num_steps=2, size=32, locator="whole")
    authors.score_text = "authors"
    seen = []
    tok = authors.models.clip_bigg_tokenizer
    authors.models.clip_bigg_tokenizer = lambda texts, **kw: (seen.extend(texts), tok(texts, **kw))[1]
    e_auth = np.asarray(authors.text_embeddings(["cat"]))
    e_paper = np.asarray(paper.text_embeddings(["cat"]))
    assert seen == ["['A  cat .']"]
    assert not np.allclose(e_auth, e_paper)


def test_scorers_compute_in_float32_with_bf16_weights():
    """DINOv2 and CLIP bigG compute in float32 even when every model is loaded in bf16: the
    features equal those of float32 models holding the same (bf16-rounded) weights, and differ
    from an all-bf16 forward; the weights themselves stay bf16."""
    import jax
    from flax import nnx

    from vmdiff_jax.nn import image_ops
    from vmdiff_jax.engine import stages
    from vmdiff_jax.engine.demo import demo_models
    from vmdiff_jax.engine.pipeline import VMDiff

    bf16 = VMDiff(demo_models(0, dtype=jnp.bfloat16), HSPConfig(num_steps=2, size=32), locator="whole")
    assert {x.dtype for x in jax.tree.leaves(bf16.split.clip_bigg.state)} == {jnp.dtype(jnp.bfloat16)}
    f32_models = demo_models(0, dtype=jnp.bfloat16)
    for tower in (f32_models.dinov2, f32_models.clip_bigg):  # same rounded weights, held in float32
        for _, m in nnx.iter_modules(tower):
            if hasattr(m, "dtype"):
                m.dtype = jnp.float32
        for _, v in nnx.to_flat_state(nnx.state(tower, nnx.Param)):
            v.set_value(v.get_value().astype(jnp.float32))
    rng = np.random.default_rng(4)
    images = rng.integers(0, 255, (2, 32, 32, 3), dtype=np.uint8)
    d, e = (np.asarray(x) for x in bf16.features(images))
    wy, wx = image_ops.box_matrices(np.array([[0, 0, 32, 32]] * 2, np.float32), (32, 32), (224, 224), uint8=False)
    d_ref, e_ref = (np.asarray(x) for x in stages.features(*nnx.split(f32_models.dinov2), *nnx.split(f32_models.clip_bigg),
                                                          jnp.asarray(images / 255.0, jnp.float32), wy, wx))
    assert d.dtype == np.float32 and e.dtype == np.float32
    np.testing.assert_allclose(d, d_ref, atol=1e-5)
    np.testing.assert_allclose(e, e_ref, atol=1e-5)
    low = demo_models(0, dtype=jnp.bfloat16)  # compute dtype left at bf16
    d_low, _ = stages.features(*nnx.split(low.dinov2), *nnx.split(low.clip_bigg), jnp.asarray(images / 255.0, jnp.float32),
                               wy, wx)
    assert np.abs(np.asarray(d_low, np.float32) - d_ref).max() > 1e-3

"""`vmdiff convert --check` on full-size checkpoints of every kind, from their headers alone:
sparse files written from ../shared/manifests (real header, data region a hole)."""

import json

import pytest

from vmdiff_jax.app.cli import main
from vmdiff_jax.checkpoints.files import write_sparse

from helpers import MANIFESTS

KINDS = {
    "flux1_dev_transformer.bfl.json": "flux-bfl",
    "flux1_dev_transformer.diffusers.json": "flux-diffusers",
    "flux1_vae.bfl_ae.json": "vae-bfl",
    "flux1_vae.diffusers.json": "vae-diffusers",
    "flux1_redux_image_encoder.json": "redux",
    "siglip_so400m_patch14_384.vision.hub.json": "siglip",
    "clip_vit_large_patch14.text.hub.json": "clip-l",
    "dinov2_base.hub.json": "dinov2",
    "open_clip_vit_bigg_14.json": "clip-bigg-openclip",
}


def _sparse(tmp_path, manifest, mutate=None):
    shapes = {k: tuple(v) for k, v in json.loads((MANIFESTS / manifest).read_text()).items()}
    if mutate:
        mutate(shapes)
    p = tmp_path / (manifest.replace(".json", "") + ".safetensors")
    write_sparse(shapes, p, dtype="BF16")
    return p


@pytest.mark.parametrize("manifest", sorted(KINDS))
def test_real_headers_pass(tmp_path, capsys, manifest):
    p = _sparse(tmp_path, manifest)
    code = main(["convert", "--check", str(p)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "OK" in out and KINDS[manifest].split("-")[0] in out


@pytest.mark.parametrize("manifest", ["flux1_dev_transformer.diffusers.json", "flux1_dev_transformer.bfl.json",
                                      "flux1_vae.diffusers.json", "dinov2_base.hub.json", "open_clip_vit_bigg_14.json"])
def test_mutated_copy_names_the_key(tmp_path, capsys, manifest):
    victim = {}

    def mutate(shapes):
        key = sorted(k for k in shapes if len(shapes[k]) == 2)[3]
        victim["key"] = key
        a, b = shapes[key]
        shapes[key] = (a, b + 1)

    p = _sparse(tmp_path, manifest, mutate)
    code = main(["convert", "--check", str(p)])
    out = capsys.readouterr().out
    assert code == 2
    assert victim["key"] in out and "wrong shape" in out


def test_missing_and_extra_key(tmp_path, capsys):
    man = "flux1_dev_transformer.bfl.json"

    def mutate(shapes):
        shapes.pop("single_blocks.37.linear2.weight")
        shapes["surplus.weight"] = (3072, 15360)

    p = _sparse(tmp_path, man, mutate)
    assert main(["convert", "--check", str(p)]) == 2
    out = capsys.readouterr().out
    assert "missing key single_blocks.37.linear2.weight" in out
    assert "unexpected key surplus.weight" in out


def test_unknown_and_pickle_files(tmp_path, capsys):
    write_sparse({"foo.weight": (3, 3)}, tmp_path / "odd.safetensors")
    assert main(["convert", "--check", str(tmp_path / "odd.safetensors")]) == 2
    assert "not a checkpoint kind vmdiff-jax knows" in capsys.readouterr().err
    (tmp_path / "model.ckpt").write_bytes(b"\x80\x04")
    assert main(["convert", "--check", str(tmp_path / "model.ckpt")]) == 2
    err = capsys.readouterr().err
    assert "pickle checkpoints" in err and len(err.strip().splitlines()) == 1

"""Finding the checkpoints of the seven models and their two tokenizers: a local folder, or the Hugging Face cache (offline).

Nothing is downloaded. When some are missing, `MissingWeights` lists every missing one
with the file to download and where to put it, in one message.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path


@dataclasses.dataclass(frozen=True)
class WeightSpec:
    """One checkpoint the pipeline needs: local names to look for, and its hub location."""

    name: str
    local: tuple[str, ...]
    repo: str
    subpath: str  # inside the hub repo ("" = the repo root)
    what: str


SPECS: tuple[WeightSpec, ...] = (
    WeightSpec("flux", ("flux", "transformer", "flux1-krea-dev.safetensors", "flux1-dev.safetensors"),
               "black-forest-labs/FLUX.1-Krea-dev", "transformer", "FLUX.1 Krea [dev] transformer"),
    WeightSpec("vae", ("vae", "ae.safetensors"), "black-forest-labs/FLUX.1-Krea-dev", "vae", "FLUX VAE"),
    WeightSpec("clip_l", ("text_encoder",), "black-forest-labs/FLUX.1-Krea-dev", "text_encoder",
               "CLIP ViT-L/14 text encoder"),
    WeightSpec("clip_l_tokenizer", ("tokenizer",), "black-forest-labs/FLUX.1-Krea-dev", "tokenizer", "CLIP-L tokenizer"),
    WeightSpec("redux", ("flux1-redux-dev.safetensors", "redux", "image_embedder"),
               "black-forest-labs/FLUX.1-Redux-dev", "flux1-redux-dev.safetensors", "FLUX.1 Redux [dev] projector"),
    WeightSpec("siglip", ("siglip", "image_encoder"), "google/siglip-so400m-patch14-384", "", "SigLIP so400m vision tower"),
    WeightSpec("dinov2", ("dinov2",), "facebook/dinov2-base", "", "DINOv2-base"),
    WeightSpec("clip_bigg", ("clip_bigg",), "laion/CLIP-ViT-bigG-14-laion2B-39B-b160k", "",
               "open_clip ViT-bigG-14 laion2b_s39b_b160k (open_clip_model.safetensors)"),
    WeightSpec("clip_bigg_tokenizer", ("clip_bigg/tokenizer", "clip_bigg"), "laion/CLIP-ViT-bigG-14-laion2B-39B-b160k", "",
               "CLIP bigG tokenizer (vocab.json + merges.txt, beside the checkpoint or in its tokenizer/)"),
)


class MissingWeights(FileNotFoundError):
    """Some checkpoints were not found; the message lists what to download and where."""


def hf_cache_dir() -> str:
    """The Hugging Face hub cache, read from the environment at call time (HF_HUB_CACHE, HF_HOME)."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    home = os.environ.get("HF_HOME", os.path.join(os.path.expanduser("~"), ".cache", "huggingface"))
    return os.path.join(home, "hub")


def _from_hf_cache(spec: WeightSpec) -> Path | None:
    try:
        from huggingface_hub import snapshot_download

        root = Path(snapshot_download(spec.repo, local_files_only=True, cache_dir=hf_cache_dir()))
    except Exception:  # noqa: BLE001 - not cached (or hub library missing)
        return None
    p = root / spec.subpath if spec.subpath else root
    return p if p.exists() else None


def find_weights(weights_dir: str | os.PathLike | None, use_hf_cache: bool = True,
                 given: dict[str, Path] | None = None) -> dict[str, Path]:
    """{model name: path} for all of SPECS, or MissingWeights naming every missing one.
    given: paths named by the user ({"flux": FILE} for --flux), taken as they are."""
    found: dict[str, Path] = {}
    missing: list[WeightSpec] = []
    root = Path(weights_dir) if weights_dir is not None else None
    for spec in SPECS:
        hit = (given or {}).get(spec.name)
        if hit is None and root is not None:
            hit = next((root / n for n in spec.local if (root / n).exists()), None)
        if hit is None and use_hf_cache:
            hit = _from_hf_cache(spec)
        if hit is None:
            missing.append(spec)
        else:
            found[spec.name] = hit
    if missing:
        where = root if root is not None else Path("weights")
        items = "; ".join(
            f"{s.what}: {s.repo}{'/' + s.subpath if s.subpath else ''} -> {where / s.local[0]}" for s in missing
        )
        raise MissingWeights(f"missing checkpoints ({len(missing)} of {len(SPECS)}): {items} (see weights/README.md; or run `vmdiff demo`)")
    return found

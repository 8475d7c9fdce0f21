"""The demo world's trained weights as the real checkpoints lay them out, in one folder that
`checkpoints.weights.find_weights` reads like any weights folder:

  flux/flux.safetensors                        BFL layout (flux1-dev.safetensors names)
  vae/diffusion_pytorch_model.safetensors      diffusers AutoencoderKL + config.json (latent scale, shift)
  text_encoder/model.safetensors               transformers CLIPTextModel + config.json
  tokenizer/, clip_bigg/tokenizer/             the demo tokenizer (vocab.json + merges.txt)
  redux/redux.safetensors                      flux1-redux-dev.safetensors names
  siglip/model.safetensors                     transformers SiglipVisionModel + config.json
  dinov2/model.safetensors                     transformers Dinov2Model + config.json
  clip_bigg/model.safetensors                  transformers CLIPModel (both towers) + config.json
  examples/red_circle.png, blue_square.png     the demo's example pair (objects.EXAMPLE_PAIR)
  world.json                                   the recipe, final losses, the calibrated threshold

Written through our own exporter (checkpoints/export.py), read back through the ordinary loaders.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from PIL import Image

from vmdiff_jax.checkpoints import encoders, export
from vmdiff_jax.checkpoints import flux as flux_ckpt
from vmdiff_jax.checkpoints import vae as vae_ckpt
from vmdiff_jax.world import objects
from vmdiff_jax.world.configs import WorldConfigs

WORLD_DIR = Path(__file__).resolve().parents[1] / "assets" / "world"
INFO = "world.json"


def save_world(folder: str | Path, cfg: WorldConfigs, *, vae, flux, redux, clip_l, dinov2, clip_bigg,
               tokenizer_folder: str | Path, info: dict) -> Path:
    """Write the seven trained networks, the tokenizer and `info` into `folder` (see the module doc)."""
    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    axes = {"axes_dim": json.dumps(list(cfg.flux.axes_dim))}
    export.save(root / "flux" / "flux.safetensors", flux, flux_ckpt.bfl_rules(flux.cfg, model=flux), axes)
    export.save(root / "vae" / "diffusion_pytorch_model.safetensors", vae, vae_ckpt.diffusers_rules(vae.cfg, vae))
    export.write_json(root / "vae" / "config.json", export.vae_config(vae.cfg))
    export.save(root / "text_encoder" / "model.safetensors", clip_l, encoders.clip_text_rules(cfg.clip_l))
    export.write_json(root / "text_encoder" / "config.json", export.clip_text_config(cfg.clip_l))
    export.save(root / "redux" / "redux.safetensors", redux.redux, encoders.redux_rules())
    export.save(root / "siglip" / "model.safetensors", redux.siglip, encoders.siglip_rules(cfg.siglip))
    export.write_json(root / "siglip" / "config.json", export.siglip_config(cfg.siglip))
    export.save(root / "dinov2" / "model.safetensors", dinov2, encoders.dinov2_rules(cfg.dinov2))
    export.write_json(root / "dinov2" / "config.json", export.dinov2_config(cfg.dinov2))
    export.save(root / "clip_bigg" / "model.safetensors", clip_bigg,
                encoders.hf_clip_rules(cfg.clip_bigg_vision, cfg.clip_bigg_text))
    export.write_json(root / "clip_bigg" / "config.json", export.clip_config(cfg.clip_bigg_vision, cfg.clip_bigg_text))
    for dest in (root / "tokenizer", root / "clip_bigg" / "tokenizer"):
        dest.mkdir(parents=True, exist_ok=True)
        for name in ("vocab.json", "merges.txt"):
            shutil.copyfile(Path(tokenizer_folder) / name, dest / name)
    examples = root / "examples"
    examples.mkdir(exist_ok=True)
    for obj in objects.EXAMPLE_PAIR:
        Image.fromarray(objects.draw(obj)).save(examples / f"{obj.label.replace(' ', '_')}.png")
    write_info(root, info)
    return root


def example_files(folder: str | Path = WORLD_DIR) -> list[tuple[Path, str]]:
    """The demo's example pair as files of the world folder, with their labels."""
    return [(Path(folder) / "examples" / f"{o.label.replace(' ', '_')}.png", o.label) for o in objects.EXAMPLE_PAIR]


def write_info(folder: str | Path, info: dict) -> None:
    export.write_json(Path(folder) / INFO, info)


def read_info(folder: str | Path = WORLD_DIR) -> dict:
    """world.json of a world folder ({} when absent)."""
    p = Path(folder) / INFO
    return json.loads(p.read_text()) if p.is_file() else {}


def available(folder: str | Path = WORLD_DIR) -> bool:
    """Whether the folder holds a complete world (every checkpoint and world.json)."""
    root = Path(folder)
    need = ["flux", "vae", "text_encoder", "tokenizer", "redux", "siglip", "dinov2", "clip_bigg", "examples", INFO]
    return all((root / n).exists() for n in need)

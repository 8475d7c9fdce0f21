"""Reading CLIP tokenizer folders: transformers / diffusers `tokenizer/` (vocab.json +
merges.txt, or tokenizer.json, with special_tokens_map.json / tokenizer_config.json).

Malformed files raise CheckpointError naming the file; a folder without them raises MissingWeights.
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer
from tokenizers.models import BPE

from vmdiff_jax.checkpoints.files import CheckpointError, read_json_object
from vmdiff_jax.checkpoints.weights import MissingWeights
from vmdiff_jax.nn.tokenizer import EOS, CLIPTokenizer, clip_pipeline

_MAX_FILE = 64 * 1024 * 1024


def _special(tok) -> str | None:
    """A token entry of tokenizer_config.json / special_tokens_map.json (str or {"content": ...})."""
    return tok.get("content") if isinstance(tok, dict) else tok


def _json(path: Path) -> dict:
    return read_json_object(path, "tokenizer file", _MAX_FILE)


def load_tokenizer(path: str | Path, **overrides) -> CLIPTokenizer:
    """Read a `tokenizer/` folder: vocab.json + merges.txt, else tokenizer.json.

    Special tokens and model_max_length come from special_tokens_map.json /
    tokenizer_config.json when present (FLUX: pad = <|endoftext|>); `overrides` win.
    """
    path = Path(path)
    kwargs: dict = {}
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        if (path / name).is_file():
            cfg = _json(path / name)
            for key in ("bos_token", "eos_token", "pad_token", "unk_token"):
                if _special(cfg.get(key)) is not None:
                    kwargs[key] = _special(cfg[key])
            ml = cfg.get("model_max_length")
            if isinstance(ml, int) and not isinstance(ml, bool) and 2 <= ml < 10**6:
                kwargs["max_length"] = ml
    kwargs.update(overrides)
    vocab_file, merges_file, tj = path / "vocab.json", path / "merges.txt", path / "tokenizer.json"
    if vocab_file.is_file() and merges_file.is_file():
        unk = kwargs.get("unk_token", EOS)
        try:
            vocab, merges = BPE.read_file(str(vocab_file), str(merges_file))
            tk = clip_pipeline(Tokenizer(BPE(vocab, merges, dropout=None, continuing_subword_prefix="",
                                             end_of_word_suffix="</w>", fuse_unk=False, unk_token=unk)))
        except Exception as e:  # noqa: BLE001 - the library's parse errors: malformed files
            raise CheckpointError(f"{path}: malformed vocab.json / merges.txt ({' '.join(str(e).split())[:160]})") from None
    elif tj.is_file():
        _json(tj)  # one-line error for a file that is not JSON at all
        try:
            tk = Tokenizer.from_file(str(tj))
        except Exception as e:  # noqa: BLE001
            raise CheckpointError(f"{tj}: malformed tokenizer.json ({' '.join(str(e).split())[:160]})") from None
        if type(tk.model).__name__ != "BPE":
            raise CheckpointError(f"{tj}: model type {type(tk.model).__name__}, expected BPE")
    else:
        raise MissingWeights(f"{path}: no vocab.json + merges.txt nor tokenizer.json")
    try:
        return CLIPTokenizer(tk, **kwargs)
    except ValueError as e:
        raise CheckpointError(f"{path}: {e}") from None

"""CLIP's byte-level BPE tokenizer, offline, in pure Python (+ `regex`).

Behaves as transformers' CLIPTokenizer (tokenizers-backed, transformers 5): special tokens
(bos, eos, pad, unk) found verbatim in the text are kept as such; the rest is NFC-normalized, whitespace-collapsed and
lowercased, split by CLIP's regex, byte-encoded, and BPE-merged with a `</w>` suffix on
each word's last symbol; then `<|startoftext|>` ... `<|endoftext|>`, truncated to
`max_length` with EOS kept last, and padded.

Reads a transformers/diffusers `tokenizer/` folder (vocab.json + merges.txt, or
tokenizer.json). open_clip's tokenizer for ViT-bigG-14 is the same BPE, padded with 0:
call with `pad_id=0`.
"""

from __future__ import annotations

import collections
import functools
import json
import unicodedata
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import regex

BOS = "<|startoftext|>"
EOS = "<|endoftext|>"
PATTERN = regex.compile(
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
)
# tokenizers' ByteLevel pre-tokenizer splits each piece again with GPT-2's regex (this only
# changes pieces such as a lowercased "<|ENDOFTEXT|>" -> "<|", "endoftext", "|>").
GPT2_PATTERN = regex.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")
_WHITESPACE = regex.compile(r"\s+")
DEMO_FOLDER = Path(__file__).parent / "assets" / "tokenizer"


@functools.lru_cache(maxsize=None)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable character table (256 entries, CLIP's vocab order)."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def normalize(text: str) -> str:
    """tokenizers' normalizer of CLIP: NFC, runs of whitespace -> one space, per-character lowercase."""
    text = _WHITESPACE.sub(" ", unicodedata.normalize("NFC", text))
    return "".join(c.lower() for c in text)


def pre_tokenize(text: str) -> list[str]:
    """Normalized text -> CLIP's words, each byte-encoded with `bytes_to_unicode`."""
    table = bytes_to_unicode()
    words = [w for piece in PATTERN.findall(text) for w in GPT2_PATTERN.findall(piece)]
    return ["".join(table[b] for b in w.encode("utf-8")) for w in words]


def _special(tok) -> str | None:
    """A token entry of tokenizer_config.json / special_tokens_map.json (str or {"content": ...})."""
    if isinstance(tok, dict):
        return tok.get("content")
    return tok


def merge_pair(parts: list[str], a: str, b: str) -> list[str]:
    """Every adjacent (a, b) in `parts` merged into a + b, left to right (one BPE merge)."""
    out: list[str] = []
    i = 0
    while i < len(parts):
        if i < len(parts) - 1 and parts[i] == a and parts[i + 1] == b:
            out.append(a + b)
            i += 2
        else:
            out.append(parts[i])
            i += 1
    return out


class CLIPTokenizer:
    """CLIP BPE tokenizer. `tok(texts) -> int32 (B, max_length)` token ids."""

    def __init__(
        self,
        vocab: dict[str, int],
        merges: Sequence[tuple[str, str]],
        *,
        bos_token: str = BOS,
        eos_token: str = EOS,
        pad_token: str = EOS,
        unk_token: str = EOS,
        max_length: int = 77,
    ):
        self.encoder = dict(vocab)
        self.decoder = {v: k for k, v in self.encoder.items()}
        self.bpe_ranks = {tuple(m): i for i, m in enumerate(merges)}
        for name, tok in (("bos", bos_token), ("eos", eos_token), ("pad", pad_token), ("unk", unk_token)):
            if tok not in self.encoder:
                raise ValueError(f"{name} token {tok!r} is not in the vocabulary")
        self.bos_token, self.eos_token, self.pad_token, self.unk_token = bos_token, eos_token, pad_token, unk_token
        self.bos_id, self.eos_id = self.encoder[bos_token], self.encoder[eos_token]
        self.pad_id, self.unk_id = self.encoder[pad_token], self.encoder[unk_token]
        self.max_length = max_length
        # transformers extracts its special tokens verbatim from the raw text, longest first.
        self.special_tokens = sorted({bos_token, eos_token, pad_token, unk_token}, key=len, reverse=True)
        self._special_split = regex.compile("(" + "|".join(regex.escape(t) for t in self.special_tokens) + ")")
        self._cache: dict[str, tuple[int, ...]] = {}

    @property
    def vocab_size(self) -> int:
        return max(self.encoder.values()) + 1

    # ----------------------------------------------------------------- loading
    @classmethod
    def from_folder(cls, path: str | Path, **overrides) -> "CLIPTokenizer":
        """Read a `tokenizer/` folder: vocab.json + merges.txt, else tokenizer.json.

        Special tokens and model_max_length come from special_tokens_map.json /
        tokenizer_config.json when present (FLUX: pad = <|endoftext|>); `overrides` win.
        """
        path = Path(path)
        if (path / "vocab.json").is_file() and (path / "merges.txt").is_file():
            vocab = json.loads((path / "vocab.json").read_text(encoding="utf-8"))
            lines = (path / "merges.txt").read_text(encoding="utf-8").splitlines()
            merges = [tuple(line.split()) for line in lines if line.strip() and not line.startswith("#version")]
        elif (path / "tokenizer.json").is_file():
            tj = json.loads((path / "tokenizer.json").read_text(encoding="utf-8"))
            model = tj["model"]
            if model.get("type") != "BPE":
                raise ValueError(f"{path / 'tokenizer.json'}: model type {model.get('type')!r}, expected BPE")
            vocab = dict(model["vocab"])
            for added in tj.get("added_tokens", []):
                vocab.setdefault(added["content"], added["id"])
            merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
        else:
            raise FileNotFoundError(f"{path}: no vocab.json + merges.txt nor tokenizer.json")
        if any(len(m) != 2 for m in merges):
            raise ValueError(f"{path}: malformed merge line {next(m for m in merges if len(m) != 2)}")
        kwargs = {}
        for name in ("special_tokens_map.json", "tokenizer_config.json"):
            if (path / name).is_file():
                cfg = json.loads((path / name).read_text(encoding="utf-8"))
                for key in ("bos_token", "eos_token", "pad_token", "unk_token"):
                    if _special(cfg.get(key)) is not None:
                        kwargs[key] = _special(cfg[key])
                ml = cfg.get("model_max_length")
                if isinstance(ml, int) and ml < 10**6:
                    kwargs["max_length"] = ml
        kwargs.update(overrides)
        return cls(vocab, merges, **kwargs)

    # ----------------------------------------------------------------- encoding
    def bpe(self, word: str) -> tuple[int, ...]:
        """One byte-encoded word -> its token ids (BPE with `</w>` on the last symbol)."""
        if word in self._cache:
            return self._cache[word]
        parts = list(word[:-1]) + [word[-1] + "</w>"]
        while len(parts) > 1:
            ranked = [(self.bpe_ranks[p], p) for p in zip(parts, parts[1:]) if p in self.bpe_ranks]
            if not ranked:
                break
            _, (a, b) = min(ranked)
            parts = merge_pair(parts, a, b)
        ids = tuple(self.encoder.get(p, self.unk_id) for p in parts)
        if len(self._cache) < 100_000:
            self._cache[word] = ids
        return ids

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, without BOS/EOS, padding or truncation."""
        ids: list[int] = []
        for piece in self._special_split.split(text):
            if piece in self.special_tokens:
                ids.append(self.encoder[piece])
            elif piece:
                for word in pre_tokenize(normalize(piece)):
                    ids.extend(self.bpe(word))
        return ids

    def __call__(
        self,
        texts: str | Iterable[str],
        max_length: int | None = None,
        *,
        pad_id: int | None = None,
        return_mask: bool = False,
    ):
        """texts -> int32 ids (B, max_length): BOS, tokens (truncated), EOS, then padding.

        max_length defaults to the folder's model_max_length (77). pad_id defaults to the
        pad token's id (FLUX/transformers: <|endoftext|>); open_clip pads with 0.
        return_mask: also return the int32 attention mask (1 on BOS..EOS).
        """
        if isinstance(texts, str):
            texts = [texts]
        length = self.max_length if max_length is None else max_length
        pad = self.pad_id if pad_id is None else pad_id
        texts = list(texts)
        ids = np.full((len(texts), length), pad, np.int32)
        mask = np.zeros((len(texts), length), np.int32)
        for row, text in enumerate(texts):
            toks = [self.bos_id, *self.encode(text)[: length - 2], self.eos_id]
            ids[row, : len(toks)] = toks
            mask[row, : len(toks)] = 1
        return (ids, mask) if return_mask else ids

    def decode(self, ids: Iterable[int], skip_special: bool = True) -> str:
        """Token ids -> text (words separated by spaces, as CLIP decodes)."""
        table = {c: b for b, c in bytes_to_unicode().items()}
        special = {self.bos_id, self.eos_id, self.pad_id}
        out = []
        for i in ids:
            i = int(i)
            if skip_special and i in special:
                continue
            out.append(self.decoder.get(i, ""))
        text = "".join(out)
        raw = bytearray()
        pieces = []
        for ch in text:
            if ch in table:
                raw.append(table[ch])
            else:
                pieces.append(raw.decode("utf-8", errors="replace"))
                raw = bytearray()
                pieces.append(ch)
        pieces.append(raw.decode("utf-8", errors="replace"))
        return "".join(pieces).replace("</w>", " ").strip()


def demo_tokenizer() -> CLIPTokenizer:
    """The tiny built-in tokenizer of the demo's tiny random models: vocab size 1024 (510 merges), BOS 1022, EOS = pad 1023."""
    return CLIPTokenizer.from_folder(DEMO_FOLDER)


# --------------------------------------------------------------------- building vocabularies
def train_bpe(texts: Iterable[str], vocab_size: int) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Learn CLIP-style BPE merges from `texts` until the vocabulary has `vocab_size` tokens.

    Deterministic: the most frequent pair is merged, ties go to the smallest pair. Returns
    (vocab, merges) in CLIP's layout: the 256 byte characters, the same with `</w>`, the
    merged tokens in merge order, then <|startoftext|> and <|endoftext|>. Stops early when
    no pair is left.
    """
    base = list(bytes_to_unicode().values())
    tokens = dict.fromkeys(base + [c + "</w>" for c in base])
    counts = collections.Counter(w for t in texts for w in pre_tokenize(normalize(t)))
    words = [[*w[:-1], w[-1] + "</w>"] for w in counts]
    freqs = list(counts.values())
    merges: list[tuple[str, str]] = []
    while len(tokens) + 2 < vocab_size:
        pairs: collections.Counter = collections.Counter()
        for w, f in zip(words, freqs):
            for p in zip(w, w[1:]):
                pairs[p] += f
        if not pairs:
            break
        a, b = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append((a, b))
        tokens[a + b] = None
        words = [merge_pair(w, a, b) for w in words]
    vocab = {t: i for i, t in enumerate([*tokens, BOS, EOS])}
    return vocab, merges


def write_folder(path: str | Path, vocab: dict[str, int], merges: Sequence[tuple[str, str]]) -> Path:
    """Write vocab.json + merges.txt (transformers' format, `#version: 0.2` header) into `path`."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (path / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")
    return path

"""Learning a small CLIP-style BPE vocabulary (tests, and how the demo asset was made).

Deterministic: the most frequent pair is merged, ties go to the smallest pair; words are cut
by the tokenizer's own normalizer and pre-tokenizer (`clip_tokenizer.clip_pipeline`).
"""

from __future__ import annotations

import collections
import json
from pathlib import Path
from typing import Iterable, Sequence

from tokenizers import Tokenizer
from tokenizers.models import BPE

from vmdiff_jax.nn.tokenizer import BOS, EOS, clip_pipeline


def _bytes_to_unicode() -> list[str]:
    """GPT-2/CLIP's 256 byte characters, in CLIP's vocabulary order."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def _merge(parts: list[str], a: str, b: str) -> list[str]:
    out, i = [], 0
    while i < len(parts):
        if i < len(parts) - 1 and parts[i] == a and parts[i + 1] == b:
            out.append(a + b)
            i += 2
        else:
            out.append(parts[i])
            i += 1
    return out


def train_bpe(texts: Iterable[str], vocab_size: int) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """(vocab, merges) in CLIP's layout: the 256 byte characters, the same with `</w>`, the merged
    tokens in merge order, then <|startoftext|> and <|endoftext|>."""
    tk = clip_pipeline(Tokenizer(BPE()))
    base = _bytes_to_unicode()
    tokens = dict.fromkeys(base + [c + "</w>" for c in base])
    counts = collections.Counter(w for t in texts
                                 for w, _ in tk.pre_tokenizer.pre_tokenize_str(tk.normalizer.normalize_str(t)))
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
        words = [_merge(w, a, b) for w in words]
    return {t: i for i, t in enumerate([*tokens, BOS, EOS])}, merges


def write_folder(path: str | Path, vocab: dict[str, int], merges: Sequence[tuple[str, str]]) -> Path:
    """Write vocab.json + merges.txt (transformers' format, `#version: 0.2` header) into `path`."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (path / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")
    return path

"""CLIP's byte-level BPE tokenizer, read with Hugging Face `tokenizers`, offline.

The pipeline is transformers' `CLIPTokenizer` (tokenizers-backed, transformers 5), built here
from the same pieces so that torch and transformers are not needed: NFC, whitespace runs ->
one space, lowercase; CLIP's regex split + byte-level encoding; BPE with `</w>` on each
word's last symbol; special tokens (bos, eos, pad, unk) found verbatim in the text are kept
as such. Then `<|startoftext|>` ... `<|endoftext|>`, truncated to `max_length` with EOS kept
last, and padded.

`checkpoints.load_tokenizer(folder)` reads a transformers/diffusers `tokenizer/` folder
(vocab.json + merges.txt, or tokenizer.json). open_clip's tokenizer for ViT-bigG-14 is the
same BPE, padded with 0: call with `pad_id=0`.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np
from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers

BOS = "<|startoftext|>"
EOS = "<|endoftext|>"
SPLIT = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""


def clip_pipeline(tk: Tokenizer) -> Tokenizer:
    """Give `tk` CLIP's normalizer, pre-tokenizer and decoder (as transformers' CLIPTokenizer does)."""
    tk.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "),
                                          normalizers.Lowercase()])
    tk.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(SPLIT), behavior="removed", invert=True),
                                                pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tk.decoder = decoders.ByteLevel()
    return tk


class CLIPTokenizer:
    """CLIP BPE tokenizer. `tok(texts) -> int32 (B, max_length)` token ids."""

    def __init__(self, tokenizer: Tokenizer, *, bos_token: str = BOS, eos_token: str = EOS, pad_token: str = EOS,
                 unk_token: str = EOS, max_length: int = 77):
        self.tokenizer = tokenizer
        vocab = tokenizer.get_vocab()
        for name, tok in (("bos", bos_token), ("eos", eos_token), ("pad", pad_token), ("unk", unk_token)):
            if not isinstance(tok, str) or tok not in vocab:
                raise ValueError(f"{name} token {tok!r} is not in the vocabulary")
        tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False)
                                      for t in dict.fromkeys((bos_token, eos_token, pad_token, unk_token))])
        tokenizer.no_truncation()
        tokenizer.no_padding()
        self.bos_token, self.eos_token, self.pad_token, self.unk_token = bos_token, eos_token, pad_token, unk_token
        self.bos_id, self.eos_id, self.pad_id, self.unk_id = (vocab[t] for t in (bos_token, eos_token, pad_token, unk_token))
        self.max_length = max_length
        self.vocab_size = max(vocab.values()) + 1

    # ----------------------------------------------------------------- encoding
    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, without BOS/EOS, padding or truncation."""
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def num_tokens(self, text: str) -> int:
        """Number of tokens of `text` without BOS/EOS, before truncation (CLIP keeps max_length - 2)."""
        return len(self.encode(text))

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
        texts = [texts] if isinstance(texts, str) else list(texts)
        length = self.max_length if max_length is None else max_length
        pad = self.pad_id if pad_id is None else pad_id
        ids = np.full((len(texts), length), pad, np.int32)
        mask = np.zeros((len(texts), length), np.int32)
        for row, enc in enumerate(self.tokenizer.encode_batch(texts, add_special_tokens=False)):
            toks = [self.bos_id, *enc.ids[: length - 2], self.eos_id]
            ids[row, : len(toks)] = toks
            mask[row, : len(toks)] = 1
        return (ids, mask) if return_mask else ids

    def decode(self, ids: Iterable[int], skip_special: bool = True) -> str:
        """Token ids -> text (words separated by spaces, as CLIP decodes)."""
        text = self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=skip_special)
        return text.replace("</w>", " ").strip()

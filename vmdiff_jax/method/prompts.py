"""The texts VMDiff builds from the two labels: FLUX's guidance prompt and the score's CLIP texts."""

from __future__ import annotations

from typing import Sequence

PROMPT = "A photo of {} creatively fused with {}."
SCORE_TEXT = "A  {} ."  # the score's text, as REFERENCE.md gives it (two spaces)
SCORE_TEXT_MODES = ("paper", "authors")


def guidance_prompt(label1: str, label2: str) -> str:
    """The prompt of FLUX's pooled CLIP-L vector."""
    return PROMPT.format(label1, label2)


def score_texts(labels: Sequence[str], score_text: str = "paper") -> list[str]:
    """The CLIP bigG texts of the score: "A  {label} ." (paper), or the repr of a one-element
    list of it ("['A  cat .']"), which is what the authors' code tokenizes ("authors")."""
    if score_text not in SCORE_TEXT_MODES:
        raise ValueError(f"score_text must be 'paper' or 'authors', got {score_text!r}")
    texts = [SCORE_TEXT.format(label) for label in labels]
    return [str([t]) for t in texts] if score_text == "authors" else texts

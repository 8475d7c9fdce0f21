"""The texts VMDiff builds from the labels: FLUX's guidance prompt and the score's CLIP texts."""

from __future__ import annotations

from typing import Sequence

PROMPT = "A photo of {} creatively fused with {}."
MANY_PROMPT = "A photo of {} and {} creatively fused together."  # three or more objects
SCORE_TEXT = "A  {} ."  # the score's text, as REFERENCE.md gives it (two spaces)
SCORE_TEXT_MODES = ("paper", "authors")


def guidance_prompt(*labels: str) -> str:
    """The prompt of FLUX's pooled CLIP-L vector: the paper's for two labels, in their order; for
    three or more, "A photo of a, b and c creatively fused together." with the labels sorted, so
    that the prompt (the one text of an N-object fusion, which cannot be symmetric in its words)
    does not depend on the order of the inputs."""
    if len(labels) < 2:
        raise ValueError(f"need at least two labels, got {len(labels)}")
    if len(labels) == 2:
        return PROMPT.format(*labels)
    first = sorted(labels)
    return MANY_PROMPT.format(", ".join(first[:-1]), first[-1])


def score_texts(labels: Sequence[str], score_text: str = "paper") -> list[str]:
    """The CLIP bigG texts of the score: "A  {label} ." (paper), or the repr of a one-element
    list of it ("['A  cat .']"), which is what the authors' code tokenizes ("authors")."""
    if score_text not in SCORE_TEXT_MODES:
        raise ValueError(f"score_text must be 'paper' or 'authors', got {score_text!r}")
    texts = [SCORE_TEXT.format(label) for label in labels]
    return [str([t]) for t in texts] if score_text == "authors" else texts

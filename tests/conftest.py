"""Shared test fixtures: where the real checkpoints' key/shape manifests are."""

from pathlib import Path

import numpy as np
import torch

# A copy of ../shared/manifests (every key and shape of the real checkpoints, see SOURCE.md),
# kept with the tests so that the full-size structure tests never depend on the checkout's neighbours.
MANIFESTS = Path(__file__).resolve().parent / "data" / "manifests"


def rel(ours, ref) -> float:
    """max |ours - ref| / max(1, max |ref|), after checking the shapes agree."""
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    return float(np.abs(ours - ref).max() / max(1.0, np.abs(ref).max()))


def perturbed(model, seed: int):
    """Every parameter moved by N(0, 0.1^2) so no zero/one init hides a mapping bug."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model.eval()

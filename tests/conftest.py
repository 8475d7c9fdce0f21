"""Shared test fixtures: where the real checkpoints' key/shape manifests are."""

from pathlib import Path

# A copy of ../shared/manifests (every key and shape of the real checkpoints, see SOURCE.md),
# kept with the tests so that the full-size structure tests never depend on the checkout's neighbours.
MANIFESTS = Path(__file__).resolve().parent / "data" / "manifests"

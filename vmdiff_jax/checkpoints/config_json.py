"""A checkpoint's config.json checked against its tensors.

The sizes of a model come from the tensors' shapes; a config.json beside them may only agree.
`agree` / `divides` / `integer` raise a CheckpointError, one line naming the file and the
field ("weights/vae/config.json: layers_per_block = 3 but the tensors give 2 (blocks
encoder.down_blocks.0.resnets.*)"), for a field of the wrong type, one the tensors contradict,
or a head count that does not divide the width. A field that is absent or null is not checked.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vmdiff_jax.checkpoints.files import Checkpoint, CheckpointError


def path_of(ckpt: Checkpoint) -> Path:
    """The config.json a checkpoint's config comes from (in its folder, or beside its file)."""
    folder = ckpt.source if ckpt.source.is_dir() else ckpt.source.parent
    return folder / "config.json"


def _where(ckpt: Checkpoint, section: str | None, name: str) -> str:
    return f"{path_of(ckpt)}: {section + '.' if section else ''}{name}"


def integer(ckpt: Checkpoint, conf: dict, name: str, section: str | None = None, minimum: int = 0) -> int | None:
    """conf[name] as an int >= minimum, None when absent or null; CheckpointError for anything else."""
    v = conf.get(name)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        raise CheckpointError(f"{_where(ckpt, section, name)} is {v!r}, not an integer >= {minimum}")
    return v


def agree(ckpt: Checkpoint, conf: dict, name: str, actual: Any, evidence: str, section: str | None = None) -> None:
    """conf[name] (when given) must equal `actual`, what the tensors (`evidence`) show."""
    if isinstance(actual, bool):
        v = conf.get(name)
        if v is not None and v is not actual:
            raise CheckpointError(f"{_where(ckpt, section, name)} = {v!r} but the tensors give {actual} ({evidence})")
        return
    if isinstance(actual, (list, tuple)):
        v = conf.get(name)
        if v is None:
            return
        if not isinstance(v, list) or any(isinstance(x, bool) or not isinstance(x, int) for x in v):
            raise CheckpointError(f"{_where(ckpt, section, name)} is {v!r}, not a list of integers")
        if list(v) != list(actual):
            raise CheckpointError(f"{_where(ckpt, section, name)} = {v} but the tensors give {list(actual)} ({evidence})")
        return
    v = integer(ckpt, conf, name, section)
    if v is not None and v != actual:
        raise CheckpointError(f"{_where(ckpt, section, name)} = {v} but the tensors give {actual} ({evidence})")


def divides(ckpt: Checkpoint, conf: dict, name: str, width: int, what: str, section: str | None = None) -> None:
    """conf[name] (heads, groups) must be a positive integer dividing `width` (`what` it splits)."""
    v = integer(ckpt, conf, name, section, minimum=1)
    if v is not None and width % v:
        raise CheckpointError(f"{_where(ckpt, section, name)} = {v} does not divide {what} {width} (from the tensors)")

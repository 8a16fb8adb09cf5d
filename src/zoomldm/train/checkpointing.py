"""Checkpoint directories: our format (loadable by ``ZoomLDMPipeline.from_pretrained``) + an exact resume state.

Layout of ``<output_dir>/checkpoints/step-00005000/``::

    zoomldm.json, unet/, vae/, summarizer/   our format; unet/ holds the **EMA** UNet (what one samples with),
                                             summarizer/ the live Summarizer (it has no EMA)
    training_state/                          accelerate's save_state: model.safetensors (live UNet +
                                             Summarizer), optimizer.bin, scheduler.bin, random_states_<rank>.pkl
                                             (+ scaler.pt in fp16), plus ours: noise_rng_<rank>.safetensors
                                             (the generator of t, ε and dropout) and progress.json (step,
                                             epoch, batch position, EMA counter)

The EMA is not stored twice: ``unet/`` *is* the EMA (float32, bit-exact), and the counter is in
progress.json. A checkpoint is built in ``checkpoints/.step-….partial`` and renamed into place when
complete, so a ``step-*`` directory is always whole; a crash or Ctrl-C during a save leaves the previous
checkpoints untouched and only a ``.partial`` directory, which the next save removes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from ..errors import ZoomLDMError
from ..fsutil import replace_dir

CHECKPOINTS = "checkpoints"
STATE = "training_state"
PROGRESS = "progress.json"
_NAME = re.compile(r"^step-(\d+)$")


@dataclass
class Progress:
    """Where training stands: enough to continue the data stream and the EMA exactly."""

    step: int = 0  # optimizer steps done
    epoch: int = 0  # current epoch of the sampler
    batch_in_epoch: int = 0  # micro-batches of that epoch already consumed on every rank
    samples_seen: int = 0  # over all processes
    ema_num_updates: int = 0
    world_size: int = 1
    batch_size: int = 0
    gradient_accumulation_steps: int = 1
    seed: int = 0

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def read(cls, checkpoint: str | Path) -> Progress:
        path = Path(checkpoint) / STATE / PROGRESS
        if not path.is_file():
            raise ZoomLDMError(f"{checkpoint} is not a training checkpoint (no {STATE}/{PROGRESS})")
        data = json.loads(path.read_text())
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


def checkpoint_name(step: int) -> str:
    return f"step-{step:08d}"


def is_complete(path: Path) -> bool:
    return (path / "zoomldm.json").is_file() and (path / STATE / PROGRESS).is_file()


def list_checkpoints(output_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints of a run, oldest first."""
    root = Path(output_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        match = _NAME.match(path.name)
        if match and path.is_dir() and is_complete(path):
            found.append((int(match.group(1)), path))
    return sorted(found)


def resolve_resume(spec: str | None, output_dir: str | Path) -> Path | None:
    """``auto``: the newest checkpoint of ``output_dir`` (None when there is none); ``never``/None: None; a
    path: that checkpoint (it must be complete)."""
    if spec is None or spec == "never":
        return None
    if spec == "auto":
        found = list_checkpoints(output_dir)
        return found[-1][1] if found else None
    path = Path(spec)
    if path.is_dir() and (path / CHECKPOINTS).is_dir():  # an output_dir: its newest checkpoint
        found = list_checkpoints(path)
        if not found:
            raise ZoomLDMError(f"resume: {path} has no complete checkpoint")
        return found[-1][1]
    if not path.is_dir() or not is_complete(path):
        raise ZoomLDMError(
            f"resume: {path} is not a complete training checkpoint (expected zoomldm.json and {STATE}/{PROGRESS})"
        )
    return path


def staging_path(output_dir: str | Path, step: int) -> Path:
    return Path(output_dir) / CHECKPOINTS / f".{checkpoint_name(step)}.partial"


def clean_staging(output_dir: str | Path) -> None:
    """Remove what an interrupted save, publish or prune left: ``.…partial`` (and the temporary directory
    ``save_pretrained`` makes beside it), ``.…old`` and ``.…deleting``; complete checkpoints are untouched."""
    root = Path(output_dir) / CHECKPOINTS
    if root.is_dir():
        for pattern in (".*.partial", ".*.partial.*", ".*.old", ".*.deleting"):
            for path in root.glob(pattern):
                if path.is_dir():
                    shutil.rmtree(path, ignore_errors=True)


def publish(staging: Path, output_dir: str | Path, step: int) -> Path:
    """Atomically rename a finished staging directory to ``checkpoints/step-…`` (replacing one of that step)."""
    final = replace_dir(staging, Path(output_dir) / CHECKPOINTS / checkpoint_name(step))
    _fsync_dir(final.parent)
    return final


def prune(output_dir: str | Path, keep: int) -> list[Path]:
    """Delete all but the newest ``keep`` checkpoints (``keep`` 0: keep all); returns the deleted ones."""
    if keep <= 0:
        return []
    found = list_checkpoints(output_dir)
    doomed = [path for _, path in found[:-keep]]
    for path in doomed:
        trash = path.with_name(f".{path.name}.deleting")
        os.replace(path, trash)  # never leave a half-deleted checkpoint that looks complete
        shutil.rmtree(trash, ignore_errors=True)
    return doomed


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)

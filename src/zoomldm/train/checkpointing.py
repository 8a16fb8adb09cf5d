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

:func:`save_checkpoint` is that sequence, shared by the ZoomLDM trainer and the CDM trainer (whose
checkpoints hold ``cdm/`` instead of our pipeline format); each passes in what it writes besides
``training_state/``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ZoomLDMError
from ..fsutil import replace_dir

if TYPE_CHECKING:
    import torch
    from accelerate import Accelerator

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
    """A ZoomLDM checkpoint: our format (``zoomldm.json``) and the completion mark ``training_state/progress.json``."""
    return (path / "zoomldm.json").is_file() and (path / STATE / PROGRESS).is_file()


def list_checkpoints(
    output_dir: str | Path, complete: Callable[[Path], bool] = is_complete
) -> list[tuple[int, Path]]:
    """Complete checkpoints of a run, oldest first; ``complete`` says which ``step-…`` directories count."""
    root = Path(output_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        match = _NAME.match(path.name)
        if match and path.is_dir() and complete(path):
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


def noise_rng_path(checkpoint: str | Path, rank: int) -> Path:
    """Where process ``rank`` keeps its noise generator's state in a checkpoint (or its staging directory)."""
    return Path(checkpoint) / STATE / f"noise_rng_{rank}.safetensors"


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


def prune(output_dir: str | Path, keep: int, complete: Callable[[Path], bool] = is_complete) -> list[Path]:
    """Delete all but the newest ``keep`` checkpoints (``keep`` 0: keep all); returns the deleted ones.
    ``complete`` says which checkpoints count (see :func:`list_checkpoints`); others are left alone."""
    if keep <= 0:
        return []
    found = list_checkpoints(output_dir, complete)
    doomed = [path for _, path in found[:-keep]]
    for path in doomed:
        trash = path.with_name(f".{path.name}.deleting")
        os.replace(path, trash)  # never leave a half-deleted checkpoint that looks complete
        shutil.rmtree(trash, ignore_errors=True)
    return doomed


def save_checkpoint(
    accelerator: Accelerator,
    output_dir: str | Path,
    progress: Progress,
    generator: torch.Generator,
    write_files: Callable[[Path], None],
    *,
    keep: int = 0,
    complete: Callable[[Path], bool] = is_complete,
    log: Callable[[str], None] | None = None,
) -> Path:
    """Write ``checkpoints/step-<progress.step>`` of a run atomically; every process calls it, in step.

    The sequence (``wait`` is ``accelerator.wait_for_everyone()``):

    1. main process: :func:`clean_staging` (leftovers of an interrupted save) and create ``checkpoints/``;
       wait;
    2. every process: ``write_files(staging)``, the trainer's own part of the checkpoint (its model in
       its own format, provenance, …). It runs before anything else is written to ``staging``, so it may
       create ``staging`` itself (e.g. by renaming a temporary directory to it); it may be collective
       (an FSDP state-dict gather), and processes that have nothing to write simply return; wait;
    3. every process: ``accelerator.save_state(staging/training_state)`` (safetensors) and its noise
       generator as ``training_state/noise_rng_<rank>.safetensors``; wait;
    4. main process: ``training_state/progress.json`` (the completion mark, written last),
       :func:`publish` (rename to ``step-…``), :func:`prune` to the newest ``keep`` (0: keep all) of the
       checkpoints ``complete`` accepts, and ``log("checkpoint <path>")``; wait.

    Args:
        accelerator: the run's ``accelerate.Accelerator``.
        output_dir: the run's directory (checkpoints go to ``output_dir/checkpoints``).
        progress: the training position; its ``step`` names the checkpoint, and it is stored as progress.json.
        generator: this process's noise generator (of t, ε and dropout), saved for an exact resume.
        write_files: writes the trainer-specific files into the staging directory (see step 2).
        keep: how many checkpoints to keep after this one is published; 0 keeps all.
        complete: which ``step-…`` directories are complete checkpoints of this kind of run (for pruning).
        log: receives one line naming the published checkpoint (main process).

    Returns:
        The published checkpoint directory (the same path on every process).
    """
    from safetensors.torch import save_file

    output_dir = Path(output_dir)
    acc, step = accelerator, progress.step
    staging = staging_path(output_dir, step)
    if acc.is_main_process:
        clean_staging(output_dir)
        staging.parent.mkdir(parents=True, exist_ok=True)
    acc.wait_for_everyone()
    write_files(staging)  # before anyone else writes to ``staging``: it may rename its own temp dir to it
    acc.wait_for_everyone()
    acc.save_state(str(staging / STATE), safe_serialization=True)
    save_file({"state": generator.get_state()}, str(noise_rng_path(staging, acc.process_index)))
    acc.wait_for_everyone()
    final = output_dir / CHECKPOINTS / checkpoint_name(step)
    if acc.is_main_process:
        (staging / STATE / PROGRESS).write_text(progress.to_json())  # the completion mark, written last
        final = publish(staging, output_dir, step)
        prune(output_dir, keep, complete)
        if log is not None:
            log(f"checkpoint {final}")
    acc.wait_for_everyone()
    return final


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

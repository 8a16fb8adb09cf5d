"""Checkpoint directory bookkeeping: what counts as complete, pruning, clean-up and resume resolution."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from zoomldm.errors import ZoomLDMError
from zoomldm.train.checkpointing import (
    Progress,
    clean_staging,
    list_checkpoints,
    noise_rng_path,
    prune,
    publish,
    resolve_resume,
    save_checkpoint,
    staging_path,
)


def _fake(path, complete=True):
    (path / "training_state").mkdir(parents=True)
    (path / "zoomldm.json").write_text("{}")
    if complete:
        (path / "training_state" / "progress.json").write_text("{}")
    return path


def test_only_complete_checkpoints_count_and_prune_keeps_the_newest(tmp_path):
    ck = tmp_path / "checkpoints"
    for step in (1, 2, 10, 3):
        _fake(ck / f"step-{step:08d}")
    _fake(ck / "step-00000020", complete=False)  # no progress.json: never finished
    (ck / "notes").mkdir()
    assert [s for s, _ in list_checkpoints(tmp_path)] == [1, 2, 3, 10]
    assert resolve_resume("auto", tmp_path) == ck / "step-00000010"
    assert resolve_resume(str(tmp_path), "elsewhere") == ck / "step-00000010"  # an output_dir
    assert resolve_resume("never", tmp_path) is None
    with pytest.raises(ZoomLDMError, match="not a complete training checkpoint"):
        resolve_resume(str(ck / "step-00000020"), tmp_path)
    deleted = prune(tmp_path, keep=2)
    assert sorted(p.name for p in deleted) == ["step-00000001", "step-00000002"]
    assert [s for s, _ in list_checkpoints(tmp_path)] == [3, 10]
    assert prune(tmp_path, keep=0) == []


def test_publish_replaces_atomically_and_clean_removes_leftovers(tmp_path):
    ck = tmp_path / "checkpoints"
    _fake(ck / "step-00000005")
    staging = _fake(staging_path(tmp_path, 5))
    (staging / "marker").write_text("new")
    final = publish(staging, tmp_path, 5)
    assert final == ck / "step-00000005" and (final / "marker").read_text() == "new"
    assert not staging.exists() and not list(ck.glob(".*"))
    for name in (
        ".step-00000006.partial",
        "..step-00000006.partial.x1y2",
        ".step-00000004.old",
        ".step-00000001.deleting",
    ):
        (ck / name).mkdir()
    clean_staging(tmp_path)
    assert sorted(p.name for p in ck.iterdir()) == ["step-00000005"]


def test_prune_counts_only_what_the_predicate_calls_complete(tmp_path):
    ck = tmp_path / "checkpoints"
    for step in (1, 2, 3):
        _fake(ck / f"step-{step:08d}")
    (ck / "step-00000002" / "cdm").mkdir()
    (ck / "step-00000003" / "cdm").mkdir()

    def has_cdm(path):
        return (path / "cdm").is_dir()

    assert [s for s, _ in list_checkpoints(tmp_path, has_cdm)] == [2, 3]
    assert [p.name for p in prune(tmp_path, 1, has_cdm)] == ["step-00000002"]
    assert sorted(p.name for p in ck.iterdir()) == ["step-00000001", "step-00000003"]


class _OneProcess:
    """The part of ``accelerate.Accelerator`` that :func:`save_checkpoint` uses, for one process."""

    is_main_process = True
    process_index = 0

    def __init__(self):
        self.calls = []

    def wait_for_everyone(self):
        self.calls.append("wait")

    def save_state(self, directory, safe_serialization):
        assert safe_serialization
        self.calls.append("save_state")
        path = Path(directory)
        path.mkdir(parents=True)
        (path / "model.safetensors").write_text("")


def test_save_checkpoint_stages_writes_publishes_and_prunes(tmp_path):
    from safetensors.torch import load_file

    _fake(tmp_path / "checkpoints" / "step-00000001")
    _fake(tmp_path / "checkpoints" / "step-00000002")
    (tmp_path / "checkpoints" / ".step-00000001.deleting").mkdir()  # a leftover of a crashed prune
    acc, lines = _OneProcess(), []
    generator = torch.Generator().manual_seed(3)
    progress = Progress(step=7, ema_num_updates=7)

    def write_files(staging):
        acc.calls.append("write_files")
        assert not staging.exists() and not (tmp_path / "checkpoints" / ".step-00000001.deleting").exists()
        staging.mkdir()
        (staging / "zoomldm.json").write_text("{}")

    final = save_checkpoint(acc, tmp_path, progress, generator, write_files, keep=2, log=lines.append)
    assert final == tmp_path / "checkpoints" / "step-00000007"
    assert acc.calls == ["wait", "write_files", "wait", "save_state", "wait", "wait"]
    assert lines == [f"checkpoint {final}"]
    assert json.loads((final / "training_state" / "progress.json").read_text())["step"] == 7
    assert torch.equal(load_file(str(noise_rng_path(final, 0)))["state"], generator.get_state())
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-00000002", "step-00000007"]
    assert resolve_resume("auto", tmp_path) == final

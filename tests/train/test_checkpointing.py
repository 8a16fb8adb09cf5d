"""Checkpoint directory bookkeeping: what counts as complete, pruning, clean-up and resume resolution."""

from __future__ import annotations

import pytest

from zoomldm.errors import ZoomLDMError
from zoomldm.train.checkpointing import (
    clean_staging,
    list_checkpoints,
    prune,
    publish,
    resolve_resume,
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

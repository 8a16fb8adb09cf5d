"""The zarr tile canvas of large-image sampling (zoomldm.sampling.canvas): one chunk per block, the double
buffer, the record of finished blocks, reopening a folder, and the lazily read latent view."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from zoomldm.sampling.canvas import BlockLayout, TileCanvas
from zoomldm.sampling.constrained import batch_rows, block_shape

# a 3×5 canvas of 8-px latent tiles in 2×2 blocks: 2 block rows × 3 block columns, clipped at the edges
LAYOUT = BlockLayout(rows=3, cols=5, bh=2, bw=2, channels=3, latent=8)


def _tiles(ids, offset=0.0):
    return torch.stack([torch.full((3, 8, 8), float(t) + offset) for t in ids])


@pytest.fixture(params=["disk", "memory"])
def canvas(request, tmp_path):
    folder = tmp_path / "joint.zarr" if request.param == "disk" else None
    return TileCanvas.open(folder, LAYOUT, "settings-1")


def test_layout_blocks_are_the_tile_batches():
    assert (LAYOUT.block_rows, LAYOUT.block_cols) == (2, 3)
    assert LAYOUT.shape == (3, 32, 48) and LAYOUT.chunks == (3, 16, 16)  # padded to whole blocks
    # the block of every tile is the batch constrained sampling puts it in (batch_rows, row-major blocks)
    batches = batch_rows(list(range(15)), 5, 4)
    assert [LAYOUT.block_of(b[0]) for b in batches] == list(range(6))
    assert all(len({LAYOUT.block_of(t) for t in b}) == 1 for b in batches)
    assert block_shape(4) == (LAYOUT.bh, LAYOUT.bw)


def test_a_block_is_one_chunk(tmp_path):
    canvas = TileCanvas.open(tmp_path / "c.zarr", LAYOUT, "s")
    assert canvas.latent(0).chunks == LAYOUT.chunks
    canvas.write_tiles(1, [0, 1, 5, 6], _tiles([0, 1, 5, 6]))  # block (0, 0)
    canvas.write_tiles(1, [12, 13], _tiles([12, 13]))  # block (1, 1), clipped at the bottom edge
    latent_1 = tmp_path / "c.zarr" / "latent_1"
    chunks = sorted(str(p.relative_to(latent_1)) for p in latent_1.rglob("c/*/*/*"))
    assert chunks == ["c/0/0/0", "c/0/1/1"]  # one chunk file per block, nothing else
    # a run killed while writing a chunk leaves it cut short: rewriting the block never reads it
    (latent_1 / "c/0/1/1").write_bytes(b"cut short")
    canvas.write_tiles(1, [12, 13], _tiles([12, 13], offset=0.5))
    assert torch.equal(canvas.read_tiles(1, [12, 13]), _tiles([12, 13], offset=0.5))
    assert not list((tmp_path / "c.zarr" / "latent_0").rglob("c/*/*/*"))  # the other buffer is untouched


def test_tiles_round_trip_and_the_buffers_alternate(canvas):
    canvas.write_tiles(1, [0, 1, 5, 6], _tiles([0, 1, 5, 6]))
    canvas.write_tiles(1, [14], _tiles([14]))  # an edge block of one tile
    canvas.write_tiles(1, [3, 9], _tiles([3, 9]))  # part of a block (not its bounding box): tile by tile
    assert torch.equal(canvas.read_tiles(1, [6, 0, 14, 9, 3]), _tiles([6, 0, 14, 9, 3]))
    assert torch.equal(canvas.read_tiles(3, [6]), _tiles([6]))  # step 3 reads buffer 1
    assert torch.equal(canvas.read_tiles(0, [6]), torch.zeros(1, 3, 8, 8))  # buffer 0 was not written
    assert canvas.read_tiles(1, [4]).abs().max() == 0  # tile 4 shares the block of 3 and 9: left alone
    view = canvas.view(1, 1, 0, 2, 2)  # tiles (1..2, 0..1) as a [3, 16, 16] latent
    assert view.shape == (3, 16, 16)
    assert np.array_equal(view[:, 0:8, 8:16], np.full((3, 8, 8), 6.0, np.float32))
    assert torch.equal(view.to_tensor()[:, :8, :8], _tiles([5])[0])


def test_the_record_of_finished_blocks(canvas):
    blocks = list(range(6))
    assert canvas.resume_point(blocks) == (0, set())
    canvas.mark_done(0, 2)
    canvas.mark_done(0, 4)
    assert canvas.done(0) == {2, 4} and canvas.resume_point(blocks) == (0, {2, 4})
    for b in blocks:
        canvas.mark_done(0, b)
    assert canvas.resume_point(blocks) == (1, set())  # step 0 complete: continue with step 1
    canvas.mark_done(1, 5)
    assert canvas.resume_point(blocks) == (1, {5})
    for b in blocks:
        canvas.mark_done(1, b)
    canvas.drop_step(0)
    assert canvas.recorded_steps() == [1] and canvas.resume_point(blocks) == (2, set())
    assert canvas.resume_point(blocks, first_step=5) == (5, set())  # a run starting later ignores it
    assert canvas.load_guide(2) is None
    canvas.save_guide(2, torch.ones(1, 3, 8, 8))
    assert torch.equal(canvas.load_guide(2), torch.ones(1, 3, 8, 8))


def test_reopen_keeps_matching_state_and_drops_foreign_state(tmp_path):
    folder = tmp_path / "joint.zarr"
    first = TileCanvas.open(folder, LAYOUT, "settings-1")
    first.write_tiles(0, [0, 1, 5, 6], _tiles([0, 1, 5, 6]))
    first.mark_done(0, 0)
    again = TileCanvas.open(folder, LAYOUT, "settings-1")  # a rerun with the same settings
    assert torch.equal(again.read_tiles(0, [5]), _tiles([5])) and again.done(0) == {0}
    other = TileCanvas.open(folder, LAYOUT, "settings-2")  # other settings: start afresh
    assert other.done(0) == set() and other.read_tiles(0, [5]).abs().max() == 0
    other.mark_done(0, 3)
    fresh = TileCanvas.open(folder, LAYOUT, "settings-2", fresh=True)  # resume=False
    assert fresh.recorded_steps() == []
    (folder / "zarr.json").write_text("not json")  # a damaged folder is replaced, not trusted
    assert TileCanvas.open(folder, LAYOUT, "settings-2").recorded_steps() == []
    wider = BlockLayout(rows=3, cols=7, bh=2, bw=2, channels=3, latent=8)  # another canvas: afresh too
    assert TileCanvas.open(folder, wider, "settings-2").latent(0).shape == (3, 32, 64)

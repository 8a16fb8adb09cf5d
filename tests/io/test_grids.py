"""SSL grids read by block from their file (issue 24): the same numbers as the array, the same digest, one
box in memory at a time, and the callers (window grids, tile grids, the gigapixel path) unchanged."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from zoomldm.io.grids import SSLGridFile, crop_grid, grid_digest, materialize_grid


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        import os

        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def test_npy_and_safetensors_read_by_box_as_the_array(tmp_path):
    from safetensors.numpy import save_file

    array = np.random.default_rng(0).standard_normal((6, 9, 7)).astype(np.float32)
    np.save(tmp_path / "g.npy", array)
    np.save(tmp_path / "g4.npy", array[None].astype(np.float16))
    save_file({"ssl_feat": array}, str(tmp_path / "g.safetensors"))
    for name, tol in (("g.npy", 0), ("g4.npy", 1e-3), ("g.safetensors", 0)):
        grid = SSLGridFile.open(tmp_path / name)
        assert grid is not None and tuple(grid.shape) == (6, 9, 7) and grid.dim() == 3
        box = grid[:, 2:5, 1:6]
        assert box.dtype == torch.float32 and tuple(box.shape) == (6, 3, 5)
        np.testing.assert_allclose(box.numpy(), array[:, 2:5, 1:6], atol=tol)
        np.testing.assert_allclose(grid[1:3, 0, -2:].numpy(), array[1:3, 0:1, -2:], atol=tol)
        view = crop_grid(grid, 3, 9, 2, 7).view(1, 4, 0, 3)
        np.testing.assert_allclose(view[:, :, :].numpy(), array[:, 4:7, 2:5], atol=tol)
        np.testing.assert_allclose(materialize_grid(grid).numpy(), array, atol=tol)
    lazy = SSLGridFile.open(tmp_path / "g.npy")
    assert grid_digest(lazy) == grid_digest(torch.from_numpy(array))  # the provenance digest is the same
    # layouts read whole by load_ssl_grid are not opened lazily
    np.save(tmp_path / "flat.npy", array.reshape(6, -1))
    torch.save(torch.from_numpy(array), tmp_path / "g.pt")
    assert SSLGridFile.open(tmp_path / "flat.npy") is None and SSLGridFile.open(tmp_path / "g.pt") is None


def test_reading_a_grid_block_by_block_keeps_one_block_resident(tmp_path):
    """A 192 MiB grid read whole, block by block: the process's resident memory does not grow by the grid
    (each read maps the file and unmaps it; a mapping kept open would leave every touched page resident)."""
    path = tmp_path / "big.npy"
    C, n = 48, 1024  # 48 × 1024² float32 = 192 MiB
    out = np.lib.format.open_memmap(path, "w+", np.float32, (C, n, n))
    for r in range(0, n, 128):
        out[:, r : r + 128] = r
    del out
    grid = SSLGridFile.open(path)
    before = _rss_mib()
    peak = before
    total = 0.0
    for r in range(0, n, 64):  # 64 rows × 1024 × 48 channels = 12 MiB a block
        block = grid[:, r : r + 64, :]
        total += float(block[0, 0, 0])
        del block
        peak = max(peak, _rss_mib())
    assert total == sum((r // 128) * 128 for r in range(0, n, 64))
    assert peak - before < 64, (before, peak)  # measured ≈ 12 MiB (one block); the grid is 192 MiB


def test_window_and_tile_grids_read_only_their_box(tmp_path):
    """window_grids reads the bounding box of its windows (padded only where it meets the grid's edge) and
    tile_grids one box per block: the same tokens as from the whole grid held in memory."""
    from zoomldm.sampling.conditions import tile_grids, window_grids
    from zoomldm.scales import Magnification

    rng = np.random.default_rng(1)
    array = rng.standard_normal((16, 12, 10)).astype(np.float32)
    np.save(tmp_path / "g.npy", array)
    lazy, whole = SSLGridFile.open(tmp_path / "g.npy"), torch.from_numpy(array)

    def padded_reference(grid, positions, tile_latent, g):  # the former whole-grid algorithm
        from zoomldm.sampling import conditions as c

        u = tile_latent // g
        full = torch.nn.functional.pad(grid[None], (0, 1, 0, 1), mode="replicate")[0]
        tokens = full.permute(1, 2, 0)
        pos = positions.to(torch.float64)
        offs = torch.arange(g, dtype=torch.float64)
        rows, cols = pos[:, 0:1] / u + offs, pos[:, 1:2] / u + offs
        r0, c0 = rows.floor(), cols.floor()
        tr, tc = rows - r0, cols - c0
        r0, c0 = r0.long().clamp(max=full.shape[1] - 2), c0.long().clamp(max=full.shape[2] - 2)
        R, Cc = r0[:, :, None].expand(-1, g, g), c0[:, None, :].expand(-1, g, g)
        TR, TC = tr[:, :, None].expand(-1, g, g), tc[:, None, :].expand(-1, g, g)
        top = c.slerp(tokens[R, Cc], tokens[R, Cc + 1], TC)
        bottom = c.slerp(tokens[R + 1, Cc], tokens[R + 1, Cc + 1], TC)
        mixed = c.slerp(top, bottom, TR).permute(0, 3, 1, 2)
        return torch.stack([c.standardize_tokens(c.pool_grid(m), eps=0.0) for m in mixed])

    mag = Magnification("pathology", 1, "10x", "10x", 0.5)  # g = 2
    for positions in ([[0, 0], [8, 24]], [[36, 20], [40, 28]], [[6, 2]]):  # inside, at the far edges, a shift
        pos = torch.tensor(positions)
        expected = padded_reference(whole, pos, 16, 2)
        assert torch.equal(window_grids(whole, pos, 16, mag), expected)
        assert torch.equal(window_grids(lazy, pos, 16, mag), expected)
    ids = [6, 7, 11, 12]
    for a, b in zip(tile_grids(lazy, mag, ids, 5), tile_grids(whole, mag, ids, 5), strict=True):
        assert torch.equal(a, b)


def test_a_grid_file_reference_is_kept_on_disk_and_checked(tmp_path):
    from zoomldm.errors import InputError
    from zoomldm.sampling.reference import read_reference

    good = np.zeros((32, 4, 4), np.float32)
    np.save(tmp_path / "g.npy", good)
    ref = read_reference(tmp_path / "g.npy", 32)
    assert isinstance(ref, SSLGridFile)
    bad = good.copy()
    bad[3, 1, 2] = np.nan
    np.save(tmp_path / "nan.npy", bad)
    with pytest.raises(InputError, match="1 non-finite values"):
        read_reference(tmp_path / "nan.npy", 32)
    with pytest.raises(InputError, match="16 channels; this model expects 32"):
        np.save(tmp_path / "c16.npy", good[:16])
        read_reference(tmp_path / "c16.npy", 32)

"""Store commit, Dataset serving (SPEC §1.4 pooling + standardisation), the balanced sampler, collate.

These tests write parts with known contents directly (no models), so every served value can be
compared with an exact expectation.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from zoomldm.conditioning import prepare_grid
from zoomldm.data.dataset import MagnificationBalancedSampler, MultiScaleDataset, collate_multiscale
from zoomldm.data.store import PARTS, StoreWriter, create_part, create_store, finish_part, open_store
from zoomldm.errors import ZoomLDMError
from zoomldm.scales import PATHOLOGY

LEVELS = (PATHOLOGY[0], PATHOLOGY[2], PATHOLOGY[4])  # 20x (1×1), 5x (4×4), 1.25x (16×16)
C = 8


def _write_slide(root, slide_id: str, rng: np.random.Generator, regions: dict[int, list[tuple[int, int]]]):
    """A part over a 16×16 base-tile slide with random tile embeddings, latents and JPEGs."""
    counts = {m: len(regions[m.index]) for m in LEVELS}
    part = create_part(root, slide_id, (16, 16), C, counts, save_jpeg=True)
    emb = rng.standard_normal((16, 16, C)).astype(np.float16)
    part["tiles/embeddings"][...] = emb
    truth = {}
    for mag in LEVELS:
        rc = regions[mag.index]
        n = len(rc)
        latents = rng.standard_normal((n, 3, 64, 64)).astype(np.float16)
        images = rng.integers(0, 256, size=(n, 256, 256, 3), dtype=np.uint8)
        jpegs = []
        for image in images:
            buffer = io.BytesIO()
            Image.fromarray(image).save(buffer, format="JPEG", quality=90)
            jpegs.append(buffer.getvalue())
        part[mag.key]["latents"][...] = latents
        part[mag.key]["coords"][...] = np.array([(c * 256, r * 256) for r, c in rc], dtype=np.int64)
        part[mag.key].create_array("jpeg", data=np.frombuffer(b"".join(jpegs), np.uint8))
        part[mag.key]["jpeg_size"][...] = np.array([len(j) for j in jpegs], np.int32)
        g = mag.grid_size
        grids = [emb[r : r + g, c : c + g].transpose(2, 0, 1) for r, c in rc]
        truth[mag.key] = (latents, grids, jpegs)
    meta = {
        "id": slide_id,
        "path": f"/x/{slide_id}.svs",
        "mpp": 0.25,
        "base_mpp": 0.5,
        "size": [8192, 8192],
        "tile": 256,
    }
    finish_part(part, meta, {m.name: n for m, n in counts.items()})
    return truth


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("synthetic") / "store.zarr"
    root = open_store(path, "w")
    attrs = {"format": "zoomldm-multiscale", "domain": "pathology", "encoder": {"name": "test", "dim": C},
             "levels": [{"index": m.index, "key": m.key} for m in LEVELS]}  # fmt: skip
    create_store(root, LEVELS, C, attrs, save_jpeg=True)
    writer = StoreWriter(root, LEVELS)
    rng = np.random.default_rng(0)
    truth = {}
    layouts = {
        "a": {0: [(0, 0), (0, 1), (5, 7)], 2: [(0, 0), (4, 8)], 4: [(0, 0)]},
        "b": {0: [(15, 15)], 2: [], 4: [(0, 0)]},
    }
    for slide, regions in layouts.items():
        truth[slide] = _write_slide(root, slide, rng, regions)
        writer.commit(root[f"{PARTS}/{slide}"])
    return path, truth


def test_commit_assembles_grids_from_the_tile_embeddings(store):
    path, truth = store
    root = open_store(path)
    assert root.attrs["committed"] == {
        "slides": 2,
        "samples": {"20x": 4, "5x": 2, "1_25x": 2},
        "jpeg_bytes": {k: sum(len(j) for s in "ab" for j in truth[s][k][2]) for k in ("20x", "5x", "1_25x")},
    }
    np.testing.assert_array_equal(root["1_25x"]["ssl"][1], truth["b"]["1_25x"][1][0])
    np.testing.assert_array_equal(root["5x"]["ssl"][1], truth["a"]["5x"][1][1])
    np.testing.assert_array_equal(root["20x"]["slide"][:], [0, 0, 0, 1])
    np.testing.assert_array_equal(root["slides/counts"][:], [[3, 2, 1], [1, 0, 1]])
    assert root["1_25x"]["ssl"].shape == (2, C, 16, 16)


def test_dataset_items(store):
    path, truth = store
    ds = MultiScaleDataset(path, return_image=True)
    assert len(ds) == 8 and ds.counts == [4, 2, 2]
    item = ds[7]  # 1.25x sample of slide b: a 16×16 grid served pooled to 8×8, then standardised
    raw = torch.from_numpy(truth["b"]["1_25x"][1][0].astype(np.float32))
    torch.testing.assert_close(item["ssl"], prepare_grid(raw, 8, True))
    block = raw.reshape(C, 8, 2, 8, 2).mean(dim=(2, 4))  # the pooling is an exact 2×2 block mean
    torch.testing.assert_close(item["ssl"], (block - block.mean(0)) / (block.std(0) + 1e-8))
    torch.testing.assert_close(item["latent"], torch.from_numpy(truth["b"]["1_25x"][0][0].astype(np.float32)))
    assert (item["mag"], item["slide"], item["index"]) == (4, "b", 7)
    assert item["coords"].tolist() == [0, 0]
    decoded = np.asarray(Image.open(io.BytesIO(truth["b"]["1_25x"][2][0])).convert("RGB"))
    np.testing.assert_array_equal(item["image"].numpy(), decoded)
    assert ds[0]["ssl"].shape == (C, 1, 1) and ds[5]["coords"].tolist() == [2048, 1024]
    only = MultiScaleDataset(path, levels=["5x"])
    assert len(only) == 2 and only[1]["mag"] == 2
    with pytest.raises(ZoomLDMError, match="not in"):
        MultiScaleDataset(path, levels=["10x"])
    with pytest.raises(IndexError):
        ds[8]


def test_loader_with_workers_collates_grids_as_a_list(store):
    path, _ = store
    ds = MultiScaleDataset(path)
    sampler = MagnificationBalancedSampler(ds, num_samples=12, seed=3)
    loader = DataLoader(ds, batch_size=6, sampler=sampler, num_workers=2, collate_fn=collate_multiscale)
    batches = list(loader)
    assert len(batches) == 2
    batch = batches[0]
    assert batch["latent"].shape == (6, 3, 64, 64) and isinstance(batch["ssl"], list)
    sizes = {0: (C, 1, 1), 2: (C, 4, 4), 4: (C, 8, 8)}
    assert [tuple(g.shape) for g in batch["ssl"]] == [sizes[int(m)] for m in batch["mag"]]
    assert torch.equal(torch.cat([b["index"] for b in batches]), torch.from_numpy(sampler.draw()))


def test_sampler_is_uniform_over_levels_and_uniform_within():
    counts = [10_000, 500, 20, 0, 3]
    sampler = MagnificationBalancedSampler(counts, num_samples=40_000, seed=0)
    idx = sampler.draw()
    offsets = np.concatenate([[0], np.cumsum(counts)])
    level = np.searchsorted(offsets, idx, side="right") - 1
    freq = np.bincount(level, minlength=5) / len(idx)
    # 4 non-empty levels at 1/4 each; binomial std = sqrt(.25·.75/40000) = 0.0022 → 5 sigma
    np.testing.assert_allclose(freq[[0, 1, 2, 4]], 0.25, atol=0.011)
    assert freq[3] == 0
    within = idx[level == 2] - offsets[2]
    np.testing.assert_allclose(np.bincount(within, minlength=20) / len(within), 1 / 20, atol=0.015)
    assert len(sampler) == 40_000 and len(MagnificationBalancedSampler(counts, world_size=4)) == 10_523 // 4


def test_sampler_is_deterministic_per_seed_epoch_and_rank():
    counts = [100, 30, 7]

    def draw(seed=0, epoch=0, rank=0):
        s = MagnificationBalancedSampler(counts, num_samples=50, seed=seed, rank=rank, world_size=2)
        s.set_epoch(epoch)
        return list(s)

    assert draw() == draw()
    assert draw() != draw(seed=1)
    assert draw() != draw(epoch=1)
    assert draw() != draw(rank=1)
    weighted = MagnificationBalancedSampler(counts, num_samples=1000, weights=[1, 0, 0]).draw()
    assert weighted.max() < 100
    with pytest.raises(ZoomLDMError, match="no samples"):
        MagnificationBalancedSampler([0, 0])

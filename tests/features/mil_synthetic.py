"""A synthetic slide-level task built from real image tiles (shared by the MIL tests).

Tiles of 64² px are cut from three real images of ``/work/shared/data``: H&E tissue (``brca_001.jpeg``),
a Sentinel-2 scene (``sentinel2_rgb.tif``) and an aerial NAIP-style image (``naip_001.jpg``). A tile's
feature is a set of plain image statistics (8-bin colour histograms, channel means and standard
deviations, mean vertical gradient): 31-d, standardised over the pool. A slide is a bag of 16-24 tiles
from the H&E and Sentinel-2 pools in random proportions; a positive slide has 3-5 of them replaced by NAIP
tiles, so the label is carried by a few tiles of one kind, as in tumour-detection MIL.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

from zoomldm.features.bags import write_bag
from zoomldm.features.mil import MILConfig

#: the tests use lr 1e-3 (10× the default) so that a few epochs suffice on CPU; everything else is default
FAST = MILConfig(folds=3, epochs=5, patience=3, lr=1e-3)


TILE = 64
#: level-0 tile side recorded in the synthetic feature files (a 256² tile at 20x)
PATCH_LEVEL0 = 256
BINS = 8


def _tiles(image: Image.Image) -> np.ndarray:
    a = np.asarray(image.convert("RGB"))
    rows, cols = a.shape[0] // TILE, a.shape[1] // TILE
    a = a[: rows * TILE, : cols * TILE].reshape(rows, TILE, cols, TILE, 3)
    return a.transpose(0, 2, 1, 3, 4).reshape(-1, TILE, TILE, 3)


def _features(tiles: np.ndarray) -> np.ndarray:
    x = tiles.astype(np.float32) / 255.0
    n = len(x)
    binned = np.minimum((x * BINS).astype(np.int64), BINS - 1).reshape(n, -1, 3)
    hist = [
        np.stack([np.bincount(binned[i, :, c], minlength=BINS) for i in range(n)]) / binned.shape[1]
        for c in range(3)
    ]
    grad = np.abs(np.diff(x.mean(-1), axis=1)).mean(axis=(1, 2))[:, None]
    return np.concatenate([*hist, x.mean(axis=(1, 2)), x.std(axis=(1, 2)), grad], axis=1)


def tile_pools(data_dir: Path) -> dict[str, np.ndarray]:
    """Standardised features of the tiles of each source: ``{"brca", "sentinel", "naip"} → (n, 31)``."""
    brca = Image.open(data_dir / "brca_001.jpeg")
    brca.draft("RGB", (1024, 1024))  # JPEG DCT scaling: decode at 1/4 size directly
    naip = Image.open(data_dir / "naip_001.jpg")
    naip.draft("RGB", (1024, 1024))
    sentinel = Image.fromarray(tifffile.imread(data_dir / "sentinel2_rgb.tif")).reduce(2)
    pools = {k: _features(_tiles(v)) for k, v in {"brca": brca, "sentinel": sentinel, "naip": naip}.items()}
    allf = np.concatenate(list(pools.values()))
    mean, std = allf.mean(0), allf.std(0) + 1e-6
    return {k: ((v - mean) / std).astype(np.float32) for k, v in pools.items()}


@dataclass
class SyntheticCohort:
    features_dir: Path
    labels_csv: Path
    positive_tiles: dict[str, np.ndarray]  # slide → bool mask of NAIP tiles
    labels: dict[str, int]
    patients: dict[str, str]


def make_cohort(
    pools: dict[str, np.ndarray],
    root: Path,
    n_patients: int = 30,
    slides_per_patient: int = 2,
    seed: int = 0,
    shuffle_labels: bool = False,
) -> SyntheticCohort:
    """Write ``root/features/<slide>.h5`` and ``root/labels.csv`` (slide_id,label,patient_id).

    Half the patients are positive (all their slides are). ``shuffle_labels`` permutes the labels over
    patients after the bags are drawn, so the labels no longer depend on the tiles.
    """
    rng = np.random.default_rng(seed)
    features_dir = root / "features"
    patient_label = rng.permutation(np.arange(n_patients) % 2)
    written_label = rng.permutation(patient_label) if shuffle_labels else patient_label
    positive_tiles, labels, patients = {}, {}, {}
    for p in range(n_patients):
        for s in range(slides_per_patient):
            slide = f"slide_{p:03d}_{s}"
            n = int(rng.integers(16, 25))
            n_brca = int(rng.integers(0, n + 1))
            feats = np.concatenate(
                [
                    pools["brca"][rng.choice(len(pools["brca"]), n_brca, replace=False)],
                    pools["sentinel"][rng.choice(len(pools["sentinel"]), n - n_brca, replace=False)],
                ]
            )
            is_pos = np.zeros(n, dtype=bool)
            if patient_label[p]:
                k = int(rng.integers(3, 6))
                where = rng.choice(n, k, replace=False)
                feats[where] = pools["naip"][rng.choice(len(pools["naip"]), k, replace=False)]
                is_pos[where] = True
            order = rng.permutation(n)
            feats, is_pos = feats[order], is_pos[order]
            grid = np.stack(np.divmod(np.arange(n), 5), axis=1)[:, ::-1]  # (col, row) on a 5-wide grid
            coords = (grid * PATCH_LEVEL0).astype(np.int64)
            attrs = {"patch_size": PATCH_LEVEL0, "patch_size_level0": PATCH_LEVEL0, "encoder": "image_stats"}
            write_bag(features_dir / f"{slide}.h5", feats, coords, attrs)
            positive_tiles[slide], labels[slide], patients[slide] = (
                is_pos,
                int(written_label[p]),
                f"patient_{p:03d}",
            )
    labels_csv = root / "labels.csv"
    with labels_csv.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["slide_id", "label", "patient_id"])
        for slide in labels:
            writer.writerow([slide, "tumor" if labels[slide] else "normal", patients[slide]])
    return SyntheticCohort(features_dir, labels_csv, positive_tiles, labels, patients)

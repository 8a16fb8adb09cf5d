"""FID per magnification on real crops: streaming, lossless samples, resume, cache, records, Inception."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from zoomldm.errors import CheckpointError, ZoomLDMError
from zoomldm.evaluation.extractors import (
    FID_WEIGHTS_NAME,
    EncoderExtractor,
    InceptionExtractor,
    resolve_inception_weights,
)
from zoomldm.evaluation.fid import (
    FeatureStatistics,
    compute_statistics,
    fid_for_magnification,
    fid_per_magnification,
    iter_image_batches,
    list_images,
    reference_statistics,
)
from zoomldm.io import read_png_metadata

from .conftest import write_pngs

RECORD_FIELDS = {
    "magnification",
    "fid",
    "num_real",
    "num_generated",
    "feature_extractor",
    "library",
    "resize_mode",
    "split",
    "real_source",
    "generated_source",
    "zoomldm_version",
    "created",
}


def test_streamed_statistics_equal_all_features_at_once(
    crop_dirs, real_crops, conv_extractor, tmp_path
) -> None:
    files = list_images(crop_dirs["brca_a"])
    assert len(files) == 24
    streamed = compute_statistics(iter_image_batches(files, batch_size=5), conv_extractor, progress=False)
    at_once = FeatureStatistics.from_features(conv_extractor(real_crops["brca"][:24]))
    assert streamed.count == 24
    np.testing.assert_allclose(streamed.mu, at_once.mu, rtol=1e-12)
    np.testing.assert_allclose(streamed.sigma, at_once.sigma, rtol=1e-9, atol=1e-15)
    assert streamed.meta["feature_extractor"] == "test conv net 19-d" and streamed.meta["resize_mode"]
    # a change of image size starts a new batch instead of failing to stack
    small = write_pngs(real_crops["naip"][:3, :32, :32], tmp_path / "small")
    shapes = [b.shape for b in iter_image_batches(files[:4] + small + files[4:6], batch_size=3)]
    assert shapes == [(3, 64, 64, 3), (1, 64, 64, 3), (3, 32, 32, 3), (2, 64, 64, 3)]


def test_fid_for_magnification_writes_lossless_samples_and_the_record(
    crop_dirs, real_crops, conv_extractor, tmp_path
) -> None:
    naip = real_crops["naip"]
    calls: list[tuple[int, int]] = []

    def generator(start: int, count: int) -> torch.Tensor:  # channels-first uint8 is accepted too
        calls.append((start, count))
        return torch.from_numpy(naip[start : start + count]).permute(0, 3, 1, 2)

    result = fid_for_magnification(
        "2.5x",
        crop_dirs["brca_a"],
        generator,
        conv_extractor,
        tmp_path / "out",
        num_samples=20,
        sample_batch_size=8,
        split="held-out slides",
        progress=False,
        sample_metadata={"seed": 7},
    )
    assert calls == [(0, 8), (8, 8), (16, 4)]
    samples = sorted((tmp_path / "out" / "2_5x").glob("*.png"))
    assert [p.name for p in samples[:2]] == ["000000.png", "000001.png"] and len(samples) == 20
    for i in (0, 13, 19):  # PNG: bit-exact
        np.testing.assert_array_equal(np.asarray(Image.open(samples[i])), naip[i])
    meta = read_png_metadata(samples[13])
    assert meta["magnification"] == "2.5x" and meta["sample_index"] == 13 and meta["seed"] == 7

    record = json.loads((tmp_path / "out" / "fid_2_5x.json").read_text())
    assert set(record) == RECORD_FIELDS
    assert record["num_real"] == 24 and record["num_generated"] == 20 and record["split"] == "held-out slides"
    assert record["feature_extractor"] == "test conv net 19-d" and record["library"] == "torch"
    assert record["fid"] == pytest.approx(result.fid)

    # H&E vs aerial crops are far apart; two halves of the same H&E region are close; a set vs itself is 0
    same_domain = fid_for_magnification(
        "2.5x", crop_dirs["brca_a"], crop_dirs["brca_b"], conv_extractor, tmp_path / "b", progress=False
    )
    itself = fid_for_magnification(
        "2.5x", crop_dirs["brca_a"], crop_dirs["brca_a"], conv_extractor, tmp_path / "c", progress=False
    )
    assert abs(itself.fid) < 1e-6
    assert result.fid > 5 * same_domain.fid > 0


def test_generation_resumes_and_reference_statistics_are_cached(
    crop_dirs, real_crops, conv_extractor, tmp_path
) -> None:
    naip = real_crops["naip"]
    calls: list[int] = []

    def generator(start: int, count: int) -> np.ndarray:
        calls.append(start)
        return naip[start : start + count]

    kwargs = dict(num_samples=12, sample_batch_size=4, progress=False, cache_dir=tmp_path / "cache")
    first = fid_for_magnification(
        "5x", crop_dirs["brca_a"], generator, conv_extractor, tmp_path / "out", **kwargs
    )
    assert calls == [0, 4, 8]
    seen_after_first = conv_extractor.counter.seen
    assert seen_after_first == 24 + 12
    caches = list((tmp_path / "cache").glob("ref_*.npz"))
    assert len(caches) == 1 and FeatureStatistics.load(caches[0]).meta["num_images"] == 24

    (tmp_path / "out" / "5x" / "000005.png").unlink()  # as if the run had died while writing batch 1
    calls.clear()
    second = fid_for_magnification(
        "5x", crop_dirs["brca_a"], generator, conv_extractor, tmp_path / "out", **kwargs
    )
    assert calls == [4]  # only the incomplete batch is regenerated
    assert conv_extractor.counter.seen - seen_after_first == 12  # the real statistics came from the cache
    assert second.fid == pytest.approx(first.fid, rel=1e-12)

    # another file list is another cache entry; precomputed statistics are used as given
    other = reference_statistics(
        list_images(crop_dirs["brca_b"]), conv_extractor, tmp_path / "cache", progress=False
    )
    assert len(list((tmp_path / "cache").glob("ref_*.npz"))) == 2
    stats_file = other.save(tmp_path / "brca_b_stats.npz")
    from_file = fid_for_magnification(
        "5x", stats_file, crop_dirs["brca_b"], conv_extractor, tmp_path / "d", progress=False
    )
    assert abs(from_file.fid) < 1e-6


def test_fid_per_magnification_summary_and_input_errors(crop_dirs, conv_extractor, tmp_path) -> None:
    results = fid_per_magnification(
        {"20x": crop_dirs["brca_a"], "10x": crop_dirs["naip"]},
        {"20x": crop_dirs["brca_b"], "10x": crop_dirs["naip"]},
        conv_extractor,
        tmp_path / "out",
        split="test",
        progress=False,
    )
    summary = json.loads((tmp_path / "out" / "fid_summary.json").read_text())
    assert set(summary) == {"20x", "10x"} and summary["10x"]["fid"] == pytest.approx(results["10x"].fid)
    assert abs(results["10x"].fid) < 1e-6 and results["20x"].fid > 0
    with pytest.raises(ZoomLDMError, match="no real images given for magnification 5x"):
        fid_per_magnification(
            {"20x": crop_dirs["brca_a"]}, {"5x": crop_dirs["naip"]}, conv_extractor, tmp_path
        )
    with pytest.raises(ZoomLDMError, match="not found"):
        list_images(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ZoomLDMError, match="no images"):
        list_images(tmp_path / "empty")
    with pytest.raises(ZoomLDMError, match="uint8 images"):
        fid_for_magnification(
            "5x",
            crop_dirs["brca_a"],
            lambda s, n: np.zeros((n, 8, 8, 3), np.float32),
            conv_extractor,
            tmp_path / "e",
            num_samples=4,
            progress=False,
        )


# ------------------------------------------------------------------------------------------------
# pytorch-fid's InceptionV3 (random weights: the real architecture and loading path, no download)
# ------------------------------------------------------------------------------------------------
def test_inception_extractor_streams_real_crops(random_inception_weights, real_crops) -> None:
    extractor = InceptionExtractor(random_inception_weights, batch_size=2)
    assert extractor.library.startswith("pytorch-fid") and "299" in extractor.resize_mode
    images = np.concatenate([real_crops["brca"][:3], real_crops["naip"][:3]])
    features = extractor(images)  # three batches of 2 inside the extractor
    assert features.shape == (6, 2048) and torch.isfinite(features).all() and features.std() > 0.1
    streamed = compute_statistics(iter(np.split(images, [4])), extractor, progress=False)
    at_once = FeatureStatistics.from_features(features)
    assert streamed.count == 6 and streamed.meta["library"] == extractor.library
    # different batch compositions: float32 conv arithmetic may differ in the last bits only
    np.testing.assert_allclose(streamed.mu, at_once.mu, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        streamed.sigma, at_once.sigma, rtol=1e-4, atol=1e-5 * np.abs(at_once.sigma).max()
    )


def test_inception_weights_are_found_locally_or_refused_with_a_clear_message(
    random_inception_weights, tmp_path, monkeypatch
) -> None:
    monkeypatch.setattr("torch.hub.get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.delenv("ZOOMLDM_INCEPTION_WEIGHTS", raising=False)
    with pytest.raises(ZoomLDMError, match="--inception-weights"):
        resolve_inception_weights()
    with pytest.raises(ZoomLDMError, match=FID_WEIGHTS_NAME):
        InceptionExtractor()
    monkeypatch.setenv("ZOOMLDM_INCEPTION_WEIGHTS", str(random_inception_weights))
    assert resolve_inception_weights() == random_inception_weights
    monkeypatch.delenv("ZOOMLDM_INCEPTION_WEIGHTS")
    cached = tmp_path / "hub" / "checkpoints" / FID_WEIGHTS_NAME  # where pytorch-fid itself caches them
    cached.parent.mkdir(parents=True)
    cached.symlink_to(random_inception_weights)
    assert resolve_inception_weights() == cached
    wrong = tmp_path / "wrong.pth"
    torch.save({"fc.weight": torch.zeros(2, 2)}, wrong)
    with pytest.raises(CheckpointError, match="wrong.pth is not pytorch-fid's Inception weights"):
        InceptionExtractor(wrong)


def test_inception_without_pytorch_fid_says_how_to_install_it(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "pytorch_fid", None)  # as if not installed
    with pytest.raises(ZoomLDMError, match=r"pip install 'zoomldm\[fid\]'"):
        InceptionExtractor()


def test_domain_encoder_frechet_distance(crop_dirs, tmp_path) -> None:
    from zoomldm.models.encoders import build_encoder

    torch.manual_seed(0)
    encoder = build_encoder("timm:test_vit", weights="random")
    extractor = EncoderExtractor(encoder, batch_size=16)
    assert "timm:test_vit" in extractor.name and "random" in extractor.name
    result = fid_for_magnification(
        "20x", crop_dirs["brca_a"], crop_dirs["naip"], extractor, tmp_path, progress=False
    )
    itself = fid_for_magnification(
        "20x", crop_dirs["brca_a"], crop_dirs["brca_a"], extractor, tmp_path / "s", progress=False
    )
    assert result.fid > 0 and abs(itself.fid) < 1e-6
    record = json.loads(Path(tmp_path / "fid_20x.json").read_text())
    assert record["feature_extractor"] == extractor.name
    assert (
        record["resize_mode"].startswith(encoder.transform["resize"])
        and "[160, 160]" in record["resize_mode"]
    )

"""Fréchet distance: closed forms, identical sets, and streaming statistics equal to batch statistics."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import linalg

from zoomldm.errors import ZoomLDMError
from zoomldm.evaluation.frechet import (
    FeatureStatistics,
    RunningStatistics,
    embedding_frechet_distance,
    frechet_distance,
)


def test_diagonal_gaussians_match_the_closed_form() -> None:
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=16), rng.normal(size=16)
    v1, v2 = rng.uniform(0.1, 3, 16), rng.uniform(0.1, 3, 16)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(v1 + v2 - 2 * np.sqrt(v1 * v2))
    assert frechet_distance(mu1, np.diag(v1), mu2, np.diag(v2)) == pytest.approx(expected, rel=1e-10)
    # one dimension: (μ1 − μ2)² + (σ1 − σ2)²
    assert frechet_distance([1.0], [[4.0]], [3.0], [[9.0]]) == pytest.approx(4.0 + 1.0, rel=1e-12)


def test_agrees_with_pytorch_fid() -> None:
    pytest.importorskip(
        "pytorch_fid", reason="pytorch-fid (the optional extra zoomldm[fid]) is not installed"
    )
    from pytorch_fid.fid_score import calculate_frechet_distance

    rng = np.random.default_rng(7)
    a, b = rng.normal(size=(200, 64)), rng.normal(size=(150, 64)) * 1.3 + 0.2
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    theirs = calculate_frechet_distance(a.mean(0), s1, b.mean(0), s2)
    assert frechet_distance(a.mean(0), s1, b.mean(0), s2) == pytest.approx(float(theirs), rel=1e-10)


def test_full_covariances_match_the_symmetric_eigen_form() -> None:
    # Tr (Σ1 Σ2)^½ = Σ √λ(Σ1^½ Σ2 Σ1^½): an independent route through a symmetric PSD matrix
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(32, 12)), rng.normal(size=(40, 12)) @ rng.normal(size=(12, 12))
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    mu1, mu2 = a.mean(0), b.mean(0)
    root1 = linalg.sqrtm(s1).real
    tr_covmean = np.sum(np.sqrt(np.clip(np.linalg.eigvalsh(root1 @ s2 @ root1), 0, None)))
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * tr_covmean
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-8)


def test_identical_sets_give_zero_also_when_the_covariance_is_singular() -> None:
    rng = np.random.default_rng(2)
    full = rng.normal(size=(500, 64)) @ rng.normal(size=(64, 64))
    stats = FeatureStatistics.from_features(full)
    assert abs(stats.frechet_distance(stats)) < 1e-6
    few = rng.normal(size=(20, 64))  # 20 vectors in 64-d: rank 19
    few_stats = FeatureStatistics.from_features(few)
    assert abs(few_stats.frechet_distance(few_stats)) < 1e-7 * np.trace(few_stats.sigma)
    with pytest.raises(ZoomLDMError, match="do not match"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


def test_a_non_finite_square_root_falls_back_to_the_offset(monkeypatch) -> None:
    rng = np.random.default_rng(6)
    a, b = rng.normal(size=(40, 6)), rng.normal(size=(40, 6)) + 0.5
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    exact = frechet_distance(a.mean(0), s1, b.mean(0), s2)
    seen = []
    real_sqrtm = linalg.sqrtm

    def flaky_sqrtm(m):  # the first call fails like sqrtm on a singular product
        seen.append(m)
        return np.full_like(m, np.nan) if len(seen) == 1 else real_sqrtm(m)

    monkeypatch.setattr("zoomldm.evaluation.frechet.linalg.sqrtm", flaky_sqrtm)
    fallback = frechet_distance(a.mean(0), s1, b.mean(0), s2, eps=1e-6)
    offset = np.eye(6) * 1e-6
    np.testing.assert_allclose(seen[1], (s1 + offset) @ (s2 + offset), rtol=1e-12)
    assert fallback == pytest.approx(exact, abs=1e-4)  # the offset moves the trace term by O(eps·D)


def test_streaming_statistics_equal_batch_statistics() -> None:
    rng = np.random.default_rng(3)
    features = rng.normal(size=(1000, 48)) * rng.uniform(0.1, 5, 48) + 1e3  # a large offset
    running = RunningStatistics()
    start = 0
    for size in [1, 7, 250, 13, 0, 400, 329]:
        running.update(
            torch.from_numpy(features[start : start + size]).float()
            if size == 13
            else features[start : start + size]
        )
        start += size
    assert running.count == 1000 == start
    # batch 13 went through float32: its rounding (≈ 6e-5 at 1e3) is the only difference allowed
    reference = features.copy()
    reference[258:271] = reference[258:271].astype(np.float32)
    np.testing.assert_allclose(running.mean, reference.mean(0), rtol=1e-12)
    np.testing.assert_allclose(running.covariance, np.cov(reference, rowvar=False), rtol=1e-9, atol=1e-10)
    with pytest.raises(ZoomLDMError, match="dimensions"):
        running.update(np.zeros((2, 3)))
    with pytest.raises(ZoomLDMError, match="at least 2"):
        RunningStatistics(4).covariance  # noqa: B018


def test_statistics_file_roundtrip_and_pytorch_fid_npz(tmp_path) -> None:
    rng = np.random.default_rng(4)
    stats = FeatureStatistics.from_features(
        rng.normal(size=(50, 8)), {"feature_extractor": "x", "resize_mode": "none"}
    )
    loaded = FeatureStatistics.load(stats.save(tmp_path / "ref.npz"))
    np.testing.assert_array_equal(loaded.mu, stats.mu)
    np.testing.assert_array_equal(loaded.sigma, stats.sigma)
    assert loaded.count == 50 and loaded.meta == stats.meta
    np.savez(tmp_path / "pfid.npz", mu=stats.mu, sigma=stats.sigma)  # what pytorch-fid --save-stats writes
    assert FeatureStatistics.load(tmp_path / "pfid.npz").frechet_distance(stats) == pytest.approx(0, abs=1e-9)
    np.savez(tmp_path / "bad.npz", m=stats.mu)
    with pytest.raises(ZoomLDMError, match="'mu' and 'sigma'"):
        FeatureStatistics.load(tmp_path / "bad.npz")


def test_embedding_frechet_distance_of_token_sets() -> None:
    g = torch.Generator().manual_seed(5)
    tokens = torch.randn(300, 65, 2, generator=g)  # [N, 65, D] token sets are flattened per sample
    assert abs(embedding_frechet_distance(tokens, tokens)) < 1e-6
    shift = torch.randn(65, 2, generator=g)
    # a translated set has the same covariance: the distance is exactly |shift|²
    assert embedding_frechet_distance(tokens, tokens + shift) == pytest.approx(
        float((shift**2).sum()), rel=1e-6
    )

"""Fréchet distance between Gaussians fitted to feature sets, with streaming statistics.

``FD = ‖μ1 − μ2‖² + Tr(Σ1 + Σ2 − 2 (Σ1 Σ2)^{1/2})`` (Dowson & Landau 1982; FID when the features are
Inception pool3 activations). The matrix square root is scipy's ``sqrtm``, as in pytorch-fid, with the
usual fallback: if the product is singular (non-finite root), retry with ``eps·I`` added to both
covariances; a root with a significant imaginary part is an error. It is written here rather than
imported from pytorch-fid because that package is an optional extra and this function also serves
non-image embeddings (CDM tokens, domain-encoder features).

:class:`RunningStatistics` accumulates mean and covariance batch by batch in float64 (Chan et al.'s
pairwise update), so 10k+ images never sit in memory at once and the result equals the two-pass
``np.cov`` of all features.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import linalg

from ..errors import ZoomLDMError
from ..fsutil import atomic_path


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray, eps: float = 1e-6
) -> float:
    """Fréchet distance between ``N(mu1, sigma1)`` and ``N(mu2, sigma2)`` (float64 throughout)."""
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = (
        np.atleast_2d(np.asarray(sigma1, np.float64)),
        np.atleast_2d(np.asarray(sigma2, np.float64)),
    )
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (mu1.size, mu1.size):
        raise ZoomLDMError(
            f"statistics do not match: means {mu1.shape} / {mu2.shape}, covariances {sigma1.shape} / {sigma2.shape}"
        )
    diff = mu1 - mu2
    covmean = linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        imag = np.max(np.abs(covmean.imag))
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ZoomLDMError(f"the covariance product has no real square root (imaginary part {imag:.3g})")
        covmean = covmean.real
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


class RunningStatistics:
    """Mean and (unbiased) covariance of feature vectors added batch by batch, in float64."""

    def __init__(self, dim: int | None = None) -> None:
        self.count = 0
        self.dim = dim
        self._mean: np.ndarray | None = None
        self._m2: np.ndarray | None = None  # sum of outer products of deviations from the mean

    def update(self, features: Any) -> None:
        """Add ``features`` ``[N, D]`` (numpy or torch; any float dtype)."""
        if hasattr(features, "detach"):
            features = features.detach().cpu().double().numpy()
        x = np.asarray(features, dtype=np.float64)
        if x.ndim != 2:
            raise ZoomLDMError(f"features must be [N, D], got shape {list(x.shape)}")
        if self.dim is None:
            self.dim = x.shape[1]
        if x.shape[1] != self.dim:
            raise ZoomLDMError(f"features have {x.shape[1]} dimensions, earlier batches had {self.dim}")
        n = x.shape[0]
        if n == 0:
            return
        mean_b = x.mean(0)
        dev = x - mean_b
        m2_b = dev.T @ dev
        if self._mean is None:
            self._mean, self._m2, self.count = mean_b, m2_b, n
            return
        total = self.count + n
        delta = mean_b - self._mean
        self._mean = self._mean + delta * (n / total)
        self._m2 = self._m2 + m2_b + np.outer(delta, delta) * (self.count * n / total)
        self.count = total

    @property
    def mean(self) -> np.ndarray:
        if self._mean is None:
            raise ZoomLDMError("no features were added")
        return self._mean

    @property
    def covariance(self) -> np.ndarray:
        if self._m2 is None or self.count < 2:
            raise ZoomLDMError(f"a covariance needs at least 2 feature vectors, got {self.count}")
        return self._m2 / (self.count - 1)

    def finalize(self, meta: dict[str, Any] | None = None) -> FeatureStatistics:
        return FeatureStatistics(self.mean, self.covariance, self.count, dict(meta or {}))


@dataclass
class FeatureStatistics:
    """Gaussian statistics of a feature set and how they were made (``meta``: extractor, resize, files)."""

    mu: np.ndarray
    sigma: np.ndarray
    count: int
    meta: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_features(cls, features: Any, meta: dict[str, Any] | None = None) -> FeatureStatistics:
        stats = RunningStatistics()
        stats.update(features)
        return stats.finalize(meta)

    def frechet_distance(self, other: FeatureStatistics) -> float:
        return frechet_distance(self.mu, self.sigma, other.mu, other.sigma)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write an ``.npz`` with pytorch-fid's keys (``mu``, ``sigma``) plus ``count`` and ``meta`` (JSON).

        Written to a temporary file and renamed, so a crash never leaves a truncated cache.
        """
        path = Path(path)
        with atomic_path(path, suffix=".npz") as tmp, open(tmp, "wb") as handle:
            np.savez(
                handle,
                mu=self.mu,
                sigma=self.sigma,
                count=np.int64(self.count),
                meta=json.dumps(self.meta, default=str),
            )
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> FeatureStatistics:
        """Read our ``.npz`` or one written by pytorch-fid (``--save-stats``: ``mu`` and ``sigma`` only)."""
        path = Path(path)
        if not path.is_file():
            raise ZoomLDMError(f"statistics file not found: {path}")
        with np.load(path, allow_pickle=False) as data:
            if "mu" not in data or "sigma" not in data:
                raise ZoomLDMError(f"{path.name}: expected an .npz with arrays 'mu' and 'sigma'")
            count = int(data["count"]) if "count" in data else 0
            meta = json.loads(str(data["meta"])) if "meta" in data else {"source": "pytorch-fid npz"}
            return cls(data["mu"].astype(np.float64), data["sigma"].astype(np.float64), count, meta)


def embedding_frechet_distance(a: Any, b: Any) -> float:
    """Fréchet distance between two embedding sets ``[N, D]`` / ``[M, D]`` (e.g. real vs CDM tokens).

    Higher-rank inputs are flattened per sample (``[N, 65, 512]`` → ``[N, 33280]``); for tokens it is
    usually more meaningful to compare per-token or pooled embeddings, which the caller chooses.
    """

    def flat(x: Any) -> Any:
        if hasattr(x, "detach"):
            x = x.detach().cpu().double().numpy()
        x = np.asarray(x, dtype=np.float64)
        return x.reshape(x.shape[0], -1)

    return FeatureStatistics.from_features(flat(a)).frechet_distance(FeatureStatistics.from_features(flat(b)))

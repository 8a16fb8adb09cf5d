"""Per-slide feature bags in the TRIDENT / CLAM layout, and slide-level label tables.

One HDF5 file per slide, ``<slide_id>.h5`` (CONVENTIONS.md, "Feature and coordinate files"):

* dataset ``features`` ``(N, dim)`` float32, one row per tile;
* dataset ``coords`` ``(N, 2)`` int64, level-0 ``x, y`` of each tile's top-left corner, same order;
* attributes such as ``patch_size``, ``patch_size_level0``, ``target_magnification``, ``encoder`` (and, for
  ZoomLDM features, the timestep, blocks and fusion used).

HDF5 is the one format: it is what TRIDENT and CLAM write, so features from any encoder (UNI, CONCH, …)
can be compared with ZoomLDM features on equal terms by pointing the MIL tools at another folder.

Labels are a CSV with columns ``slide_id,label`` and optionally ``patient_id``; slides of one patient are
kept on one side of every split (see :mod:`zoomldm.features.mil`).
"""

from __future__ import annotations

import csv
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError, ZoomLDMError
from ..fsutil import atomic_path

#: file suffix of one slide's feature bag
BAG_SUFFIX = ".h5"


@dataclass
class SlideBag:
    """The tiles of one slide: features ``(N, dim)`` float32, coords ``(N, 2)`` int64 and the file's attributes."""

    slide_id: str
    features: np.ndarray
    coords: np.ndarray
    attrs: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.features.shape[0])

    @property
    def dim(self) -> int:
        return int(self.features.shape[1])

    @property
    def patch_size_level0(self) -> int | None:
        """Side of one tile in level-0 pixels, when the file records it."""
        for key in ("patch_size_level0", "patch_size"):
            if key in self.attrs:
                return int(self.attrs[key])
        return None


def _attr_value(value: Any) -> Any:
    """h5py attribute → plain Python (bytes → str, numpy scalars → Python scalars)."""
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


def read_bag(path: str | Path) -> SlideBag:
    """Read one ``<slide_id>.h5`` feature file.

    Raises :class:`ZoomLDMError` when a dataset is missing or the shapes disagree.
    """
    import h5py

    path = Path(path)
    try:
        with h5py.File(path, "r") as f:
            for name in ("features", "coords"):
                if name not in f:
                    raise ZoomLDMError(
                        f"{path}: no dataset {name!r}; expected 'features' (N, dim) and 'coords' (N, 2)"
                    )
            features = np.asarray(f["features"][()], dtype=np.float32)
            coords = np.asarray(f["coords"][()]).astype(np.int64)
            attrs = {k: _attr_value(v) for k, v in f.attrs.items()}
    except OSError as err:
        raise ZoomLDMError(f"{path}: not a readable HDF5 feature file ({err})") from None
    if features.ndim == 3 and features.shape[0] == 1:  # CLAM-style (1, N, dim)
        features = features[0]
    if features.ndim != 2:
        raise ZoomLDMError(f"{path}: 'features' has shape {features.shape}; expected (N, dim)")
    if coords.ndim != 2 or coords.shape[1] != 2 or coords.shape[0] != features.shape[0]:
        raise ZoomLDMError(
            f"{path}: 'coords' has shape {coords.shape} for {features.shape[0]} feature rows; expected (N, 2)"
        )
    if features.shape[0] == 0:
        raise ZoomLDMError(f"{path}: the bag is empty (no tiles)")
    return SlideBag(
        path.name[: -len(BAG_SUFFIX)] if path.name.endswith(BAG_SUFFIX) else path.stem,
        features,
        coords,
        attrs,
    )


def write_bag(
    path: str | Path, features: np.ndarray, coords: np.ndarray, attrs: Mapping[str, Any] | None = None
) -> Path:
    """Write one feature file atomically (temporary file in the same folder, then rename).

    ``attrs`` values must be HDF5-storable scalars or strings; lists/dicts are stored as their ``str``.
    """
    import h5py

    path = Path(path)
    features = np.asarray(features, dtype=np.float32)
    coords = np.asarray(coords, dtype=np.int64)
    if features.ndim != 2 or coords.shape != (features.shape[0], 2):
        raise ZoomLDMError(f"features {features.shape} and coords {coords.shape} must be (N, dim) and (N, 2)")
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.create_dataset("features", data=features)
        f.create_dataset("coords", data=coords)
        for key, value in (attrs or {}).items():
            f.attrs[key] = value if isinstance(value, (str, int, float, bool, np.generic)) else str(value)
    return path


@dataclass(frozen=True)
class LabelTable:
    """Slide-level labels: ``slide_ids[i]`` has class ``classes[targets[i]]`` (and patient ``patients[i]``)."""

    slide_ids: tuple[str, ...]
    labels: tuple[str, ...]
    classes: tuple[str, ...]
    patients: tuple[str, ...] | None = None

    def __len__(self) -> int:
        return len(self.slide_ids)

    @property
    def targets(self) -> np.ndarray:
        """Class index of each slide (classes sorted, as written to the model file)."""
        index = {c: i for i, c in enumerate(self.classes)}
        return np.array([index[label] for label in self.labels], dtype=np.int64)

    @property
    def groups(self) -> np.ndarray:
        """Patient of each slide, or the slide itself when there is no patient column."""
        return np.array(self.patients if self.patients is not None else self.slide_ids)

    def subset(self, slide_ids: Sequence[str]) -> LabelTable:
        """The rows of ``slide_ids`` (same classes, in the given order)."""
        row = {s: i for i, s in enumerate(self.slide_ids)}
        missing = [s for s in slide_ids if s not in row]
        if missing:
            raise ZoomLDMError(f"{len(missing)} slide(s) not in the label table, e.g. {missing[:3]}")
        rows = [row[s] for s in slide_ids]
        patients = tuple(self.patients[i] for i in rows) if self.patients is not None else None
        return LabelTable(tuple(slide_ids), tuple(self.labels[i] for i in rows), self.classes, patients)

    def with_classes(self, classes: Sequence[str]) -> LabelTable:
        """The same rows indexed against ``classes`` (e.g. those a trained model knows)."""
        unknown = sorted(set(self.labels) - set(classes))
        if unknown:
            raise ZoomLDMError(f"labels {unknown} are not classes of the model; it knows {list(classes)}")
        return LabelTable(self.slide_ids, self.labels, tuple(classes), self.patients)


def read_labels(path: str | Path, min_classes: int = 2) -> LabelTable:
    """Read ``slide_id,label[,patient_id]`` from a CSV (header required; extra columns ignored).

    Slide ids may be given with or without the ``.h5`` / slide-file extension; they are matched to
    ``<slide_id>.h5``. Labels are class names (any text); classes are sorted.
    """
    path = Path(path)
    if not path.is_file():
        raise ZoomLDMError(
            f"labels CSV {path} not found; expected a CSV with columns slide_id,label[,patient_id]"
        )
    try:
        return _read_labels(path, min_classes)
    except UnicodeDecodeError as err:  # random bytes, a binary file given as the labels
        raise InputError(
            f"{path}: not a UTF-8 text CSV (undecodable byte at position {err.start}); expected columns "
            "slide_id,label[,patient_id]"
        ) from None
    except csv.Error as err:
        raise InputError(
            f"{path}: malformed CSV ({err}); expected columns slide_id,label[,patient_id]"
        ) from None


def _read_labels(path: Path, min_classes: int) -> LabelTable:
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        columns = [c.strip() for c in (reader.fieldnames or [])]
        for needed in ("slide_id", "label"):
            if needed not in columns:
                raise ZoomLDMError(
                    f"{path}: no column {needed!r} (found {columns}); expected slide_id,label[,patient_id]"
                )
        has_patient = "patient_id" in columns
        slides, labels, patients = [], [], []
        for lineno, row in enumerate(reader, start=2):
            row = {(k or "").strip(): (v or "").strip() for k, v in row.items()}
            slide, label = _slide_id(row["slide_id"]), row["label"]
            if not slide or not label:
                raise ZoomLDMError(f"{path}:{lineno}: empty slide_id or label")
            slides.append(slide)
            labels.append(label)
            if has_patient:
                patients.append(row["patient_id"] or slide)
    if not slides:
        raise ZoomLDMError(f"{path}: no rows; expected one row per slide")
    duplicates = sorted(s for s, n in Counter(slides).items() if n > 1)
    if duplicates:
        raise ZoomLDMError(f"{path}: slide ids appear more than once: {duplicates[:5]}")
    classes = tuple(sorted(set(labels)))
    if len(classes) < min_classes:
        raise ZoomLDMError(
            f"{path}: found {len(classes)} class(es) {list(classes)}; need at least {min_classes}"
        )
    return LabelTable(tuple(slides), tuple(labels), classes, tuple(patients) if has_patient else None)


def _slide_id(name: str) -> str:
    """Strip a feature-file or common slide-file extension from a slide id."""
    for suffix in (BAG_SUFFIX, ".svs", ".tif", ".tiff", ".ndpi", ".mrxs", ".scn", ".vms", ".svslide", ".bif"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def feature_files(features_dir: str | Path) -> dict[str, Path]:
    """``slide_id → path`` of every ``*.h5`` directly in ``features_dir`` (for TRIDENT, its ``features_<encoder>``
    folder)."""
    features_dir = Path(features_dir)
    if not features_dir.is_dir():
        raise ZoomLDMError(
            f"features folder {features_dir} not found; expected a folder of <slide_id>.h5 files"
        )
    return {p.name[: -len(BAG_SUFFIX)]: p for p in sorted(features_dir.glob(f"*{BAG_SUFFIX}"))}


class FeatureBags(Mapping[str, SlideBag]):
    """The bags of the labelled slides of one feature folder, checked up front.

    Opening checks that every labelled slide has a file (or drops and reports those without one when
    ``skip_missing``) and that all files share one feature dimension, reading only dataset shapes.
    Bags are read on access; ``preload`` keeps them in memory (default: when they total under 2 GiB).
    """

    def __init__(
        self,
        features_dir: str | Path,
        slide_ids: Sequence[str],
        skip_missing: bool = False,
        preload: bool | None = None,
    ) -> None:
        import h5py

        files = feature_files(features_dir)
        missing = [s for s in slide_ids if s not in files]
        if missing and not skip_missing:
            raise ZoomLDMError(
                f"{len(missing)} of {len(slide_ids)} labelled slides have no feature file in {features_dir}, "
                f"e.g. {', '.join(missing[:3])} (expected <slide_id>.h5; pass --skip-missing to drop them)"
            )
        self.missing: tuple[str, ...] = tuple(missing)
        self.paths = {s: files[s] for s in slide_ids if s in files}
        if not self.paths:
            raise ZoomLDMError(f"none of the labelled slides has a feature file in {features_dir}")
        dims: dict[int, list[str]] = {}
        total = 0
        for slide, path in self.paths.items():
            try:
                with h5py.File(path, "r") as f:
                    shape = f["features"].shape if "features" in f else None
            except OSError as err:
                raise ZoomLDMError(f"{path}: not a readable HDF5 feature file ({err})") from None
            if shape is None or len(shape) not in (2, 3):
                raise ZoomLDMError(f"{path}: no (N, dim) dataset 'features'")
            dims.setdefault(int(shape[-1]), []).append(slide)
            total += int(np.prod(shape)) * 4
        if len(dims) > 1:
            detail = "; ".join(f"dim {d}: {len(s)} slides (e.g. {s[0]})" for d, s in sorted(dims.items()))
            raise ZoomLDMError(
                f"feature files in {features_dir} have different dimensions ({detail}); use one encoder"
            )
        self.dim = next(iter(dims))
        self._cache: dict[str, SlideBag] | None = None
        if preload if preload is not None else total < 2 * 1024**3:
            self._cache = {s: read_bag(p) for s, p in self.paths.items()}

    def __getitem__(self, slide_id: str) -> SlideBag:
        if self._cache is not None:
            return self._cache[slide_id]
        return read_bag(self.paths[slide_id])

    def __iter__(self) -> Iterator[str]:
        return iter(self.paths)

    def __len__(self) -> int:
        return len(self.paths)

    def attrs(self) -> dict[str, Any]:
        """Attributes of the first file (the encoder and its settings; recorded beside MIL results)."""
        return dict(self[next(iter(self.paths))].attrs)

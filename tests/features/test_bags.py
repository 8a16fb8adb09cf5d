"""Feature files (TRIDENT/CLAM h5 layout) and label tables: round trip and the user errors."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from zoomldm.errors import ZoomLDMError
from zoomldm.features.bags import FeatureBags, read_bag, read_labels, write_bag


def _bag(path, n=5, dim=4, **attrs):
    rng = np.random.default_rng(n * dim)
    coords = np.stack([np.arange(n) * 256, np.zeros(n)], 1)
    return write_bag(
        path, rng.normal(size=(n, dim)), coords, attrs or {"patch_size_level0": 256, "encoder": "x"}
    )


def _labels(tmp_path, text):
    path = tmp_path / "labels.csv"
    path.write_text(text)
    return path


def test_round_trip_keeps_arrays_and_attributes(tmp_path):
    path = _bag(tmp_path / "s1.h5", n=7, dim=3, patch_size_level0=512, encoder="uni_v1", blocks="['mid']")
    bag = read_bag(path)
    assert bag.slide_id == "s1" and len(bag) == 7 and bag.dim == 3
    assert bag.features.dtype == np.float32 and bag.coords.dtype == np.int64
    assert bag.attrs == {"patch_size_level0": 512, "encoder": "uni_v1", "blocks": "['mid']"}
    assert bag.patch_size_level0 == 512
    assert [p.name for p in tmp_path.iterdir()] == ["s1.h5"]  # the temporary file was renamed away


def test_reads_a_trident_style_file(tmp_path):
    # TRIDENT writes bytes attributes and int32 coords; CLAM may write (1, N, dim) features
    with h5py.File(tmp_path / "t.h5", "w") as f:
        f["features"] = np.ones((1, 3, 8), np.float32)
        f["coords"] = np.array([[0, 0], [224, 0], [0, 224]], np.int32)
        f.attrs["encoder"] = np.bytes_(b"conch_v15")
        f.attrs["patch_size"] = np.int64(224)
    bag = read_bag(tmp_path / "t.h5")
    assert bag.features.shape == (3, 8) and bag.coords.dtype == np.int64
    assert bag.attrs["encoder"] == "conch_v15" and bag.patch_size_level0 == 224


def test_bad_files_are_user_errors(tmp_path):
    with h5py.File(tmp_path / "nocoords.h5", "w") as f:
        f["features"] = np.ones((3, 4), np.float32)
    with pytest.raises(ZoomLDMError, match="no dataset 'coords'"):
        read_bag(tmp_path / "nocoords.h5")
    with h5py.File(tmp_path / "mismatch.h5", "w") as f:
        f["features"] = np.ones((3, 4), np.float32)
        f["coords"] = np.ones((2, 2), np.int64)
    with pytest.raises(ZoomLDMError, match="for 3 feature rows"):
        read_bag(tmp_path / "mismatch.h5")
    (tmp_path / "junk.h5").write_bytes(b"not hdf5")
    with pytest.raises(ZoomLDMError, match="not a readable HDF5"):
        read_bag(tmp_path / "junk.h5")


def test_labels_with_and_without_patients(tmp_path):
    table = read_labels(_labels(tmp_path, "slide_id,label,patient_id\na.svs,LumA,p1\nb,LumB,p1\nc,LumA,\n"))
    assert table.slide_ids == ("a", "b", "c")  # slide-file extensions are stripped
    assert table.classes == ("LumA", "LumB") and table.targets.tolist() == [0, 1, 0]
    assert table.patients == ("p1", "p1", "c")  # an empty patient cell is the slide itself
    plain = read_labels(_labels(tmp_path, "label,slide_id,extra\n1,x,?\n0,y,?\n"))
    assert plain.patients is None and plain.groups.tolist() == ["x", "y"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("slide,label\na,1\n", "no column 'slide_id'"),
        ("slide_id,label\na,1\na,0\n", "more than once"),
        ("slide_id,label\na,1\nb,1\n", "need at least 2"),
        ("slide_id,label\na,\n", "empty slide_id or label"),
        ("slide_id,label\n", "no rows"),
    ],
)
def test_bad_label_tables(tmp_path, text, message):
    with pytest.raises(ZoomLDMError, match=message):
        read_labels(_labels(tmp_path, text))


def test_feature_bags_check_slides_and_dimensions(tmp_path):
    for name in ("a", "b"):
        _bag(tmp_path / f"{name}.h5")
    bags = FeatureBags(tmp_path, ["a", "b"])
    assert len(bags) == 2 and bags.dim == 4 and bags["b"].slide_id == "b"
    lazy = FeatureBags(tmp_path, ["a"], preload=False)
    np.testing.assert_array_equal(lazy["a"].features, bags["a"].features)

    with pytest.raises(ZoomLDMError, match="1 of 3 labelled slides have no feature file.*--skip-missing"):
        FeatureBags(tmp_path, ["a", "b", "c"])
    skipped = FeatureBags(tmp_path, ["a", "b", "c"], skip_missing=True)
    assert skipped.missing == ("c",) and list(skipped) == ["a", "b"]

    _bag(tmp_path / "wide.h5", dim=6)
    with pytest.raises(ZoomLDMError, match="different dimensions"):
        FeatureBags(tmp_path, ["a", "wide"])
    with pytest.raises(ZoomLDMError, match="features folder .* not found"):
        FeatureBags(tmp_path / "nope", ["a"])

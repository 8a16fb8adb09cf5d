"""Patient-grouped stratified k-fold splits and their CSV files."""

from __future__ import annotations

from collections import Counter

import pytest

from zoomldm.errors import ZoomLDMError
from zoomldm.features.bags import LabelTable
from zoomldm.features.splits import Split, make_splits, read_split, read_splits, write_split


def _table(n_patients=24, slides=(1, 2, 3), classes=("a", "b", "c"), patients=True) -> LabelTable:
    ids, labels, owners = [], [], []
    for p in range(n_patients):
        for s in range(slides[p % len(slides)]):  # 1-3 slides per patient
            ids.append(f"p{p}_s{s}")
            labels.append(classes[p % len(classes)])
            owners.append(f"p{p}")
    return LabelTable(
        tuple(ids), tuple(labels), tuple(sorted(set(classes))), tuple(owners) if patients else None
    )


def test_patients_never_straddle_and_every_slide_is_tested_once():
    table = _table()
    patient_of = dict(zip(table.slide_ids, table.patients, strict=True))
    splits = make_splits(table, folds=4, val_fraction=0.25, seed=3)
    assert len(splits) == 4
    assert Counter(s for split in splits for s in split.test) == Counter(table.slide_ids)
    for split in splits:
        assert sorted(split.train + split.val + split.test) == sorted(table.slide_ids)
        parts = [{patient_of[s] for s in part} for part in (split.train, split.val, split.test)]
        assert not parts[0] & parts[1] and not parts[0] & parts[2] and not parts[1] & parts[2]
        # stratified: every class in every test fold and every validation set (24 patients, 8 per class)
        label_of = dict(zip(table.slide_ids, table.labels, strict=True))
        assert {label_of[s] for s in split.test} == {"a", "b", "c"}
        assert {label_of[s] for s in split.val} == {"a", "b", "c"}


def test_splits_are_deterministic_under_a_seed():
    table = _table(patients=False)
    assert make_splits(table, 3, seed=5) == make_splits(table, 3, seed=5)
    assert make_splits(table, 3, seed=5) != make_splits(table, 3, seed=6)


def test_csv_round_trip_and_clam_layout(tmp_path):
    split = Split(("a", "b", "c"), ("d",), ("e", "f"))
    write_split(split, tmp_path / "splits_0.csv")
    assert (tmp_path / "splits_0.csv").read_text().splitlines() == ["train,val,test", "a,d,e", "b,,f", "c,,"]
    assert read_split(tmp_path / "splits_0.csv") == split
    # CLAM writes an unnamed index column first
    (tmp_path / "clam").mkdir()
    (tmp_path / "clam" / "splits_1.csv").write_text(",train,val,test\n0,a,d,e\n1,b,,f\n")
    (tmp_path / "clam" / "splits_0.csv").write_text(",train,val,test\n0,x,y,z\n")
    assert read_splits(tmp_path / "clam") == [
        Split(("x",), ("y",), ("z",)),
        Split(("a", "b"), ("d",), ("e", "f")),
    ]


def test_bad_splits_and_settings_are_user_errors(tmp_path):
    (tmp_path / "splits_0.csv").write_text("train,val,test\na,b,a\n")
    with pytest.raises(ZoomLDMError, match="more than one of train/val/test"):
        read_split(tmp_path / "splits_0.csv")
    with pytest.raises(ZoomLDMError, match="no splits_"):
        read_splits(tmp_path / "empty_dir_that_has_none")
    with pytest.raises(ZoomLDMError, match="at least 2"):
        make_splits(_table(), folds=1)
    with pytest.raises(ZoomLDMError, match="validation fraction"):
        make_splits(_table(), folds=3, val_fraction=0.6)
    with pytest.raises(ZoomLDMError, match="fewer patients than --folds 9"):
        make_splits(_table(), folds=9)

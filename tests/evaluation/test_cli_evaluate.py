"""``zoomldm eval`` end to end, and one-line errors for bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from _fixtures import run_cli


def test_eval_fid_with_a_domain_encoder_and_record(crop_dirs, tmp_path, capsys) -> None:
    # (Inception's 2048-d covariances make scipy's sqrtm take minutes on a busy CPU; the Inception
    # extractor itself is tested in test_fid.py, and its missing-weights message below)
    argv = [
        "eval",
        "fid",
        "--real",
        str(crop_dirs["brca_a"]),
        "--generated",
        str(crop_dirs["naip"]),
        "--magnification",
        "2_5x",
        "--extractor",
        "timm:test_vit",
        "--encoder-weights",
        "random",
        "--split",
        "held-out",
        "--out",
        str(tmp_path),
        "--batch-size",
        "12",
        "--device",
        "cpu",
    ]
    code, out, err = run_cli(argv, capsys)
    assert code == 0, err
    assert out.startswith("FID 2.5x: ") and "24 generated vs 24 real" in out
    record = json.loads((tmp_path / "fid_2_5x.json").read_text())
    assert (
        record["split"] == "held-out" and "timm:test_vit" in record["feature_extractor"] and record["fid"] > 0
    )
    assert len(list((tmp_path / "cache").glob("ref_*.npz"))) == 1


def test_eval_fid_errors_are_one_line(crop_dirs, tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setattr("torch.hub.get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.delenv("ZOOMLDM_INCEPTION_WEIGHTS", raising=False)
    base = [
        "eval",
        "fid",
        "--real",
        str(crop_dirs["brca_a"]),
        "--generated",
        str(crop_dirs["naip"]),
        "--out",
        str(tmp_path),
    ]
    code, _, err = run_cli([*base, "--magnification", "5x"], capsys)
    assert code == 2 and "--inception-weights" in err and "Traceback" not in err
    code, _, err = run_cli([*base, "--magnification", "7x"], capsys)
    assert code == 2 and "unknown pathology magnification" in err


def test_eval_constraint_on_a_real_image(data_dir, tmp_path, capsys) -> None:
    with Image.open(data_dir / "lr.jpg") as image:
        high = image.convert("RGB").crop((0, 0, 512, 512))
    high.save(tmp_path / "high.png")
    high.reduce(4).save(tmp_path / "guide.png")  # PIL's box reduce: the area filter, rounded to 8 bits
    code, out, err = run_cli(
        [
            "eval",
            "constraint",
            str(tmp_path / "high.png"),
            str(tmp_path / "guide.png"),
            "--json",
            str(tmp_path / "c.json"),
        ],
        capsys,
    )
    assert code == 0, err and out.startswith("PSNR ")
    record = json.loads((tmp_path / "c.json").read_text())
    assert record["max_abs"] <= 0.5 and record["psnr"] > 55 and record["filter"] == "area"
    code, _, err = run_cli(
        ["eval", "constraint", str(tmp_path / "high.png"), str(tmp_path / "missing.png")], capsys
    )
    assert code == 2 and "image not found" in err


def test_eval_embedding_fd(tmp_path, capsys) -> None:
    tokens = np.random.default_rng(0).normal(size=(100, 65, 2))
    np.save(tmp_path / "a.npy", tokens)
    torch.save(torch.from_numpy(tokens + 1.0), tmp_path / "b.pt")
    code, out, err = run_cli(
        ["eval", "embedding-fd", str(tmp_path / "a.npy"), str(tmp_path / "b.pt")], capsys
    )
    assert code == 0, err
    assert float(out.split(":")[1]) == pytest.approx(130.0, rel=1e-6)  # a shift of 1 in 130 dimensions

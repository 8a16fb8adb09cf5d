"""``zoomldm features`` over a folder with damaged slides, with ``--config tiny`` and no ``--checkpoint``.

``--config tiny`` without ``--checkpoint`` means random tiny weights (and a random encoder of the tiny
model's SSL width), as in ``zoomldm prepare``: it never goes to the hub. Every readable slide gets its
file, the failures are named with a human reason on the console and in ``report_rank0.json``, the exit
status is 3, and a rerun retries only the failed slides. The slides are real pyramidal TIFFs cut from
``brca_001.jpeg``, one copy truncated to half its bytes, and a ``.svs`` of random bytes.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from _fixtures import one_thread, run_cli, write_pyramid_tiff
from zoomldm.features.bags import read_bag

RAW = re.compile(r"Jpeg8Error|TiffFileError|OpenSlideError|Traceback|Empty input file")


@pytest.fixture()
def damaged_folder(tmp_path: Path, brca_image: np.ndarray) -> Path:
    folder = tmp_path / "slides"
    folder.mkdir()
    write_pyramid_tiff(folder / "a.tif", brca_image[:256, :512], mpp=0.5, levels=1)
    whole = write_pyramid_tiff(tmp_path / "whole.tif", brca_image[3072:3584, 512:1024], mpp=0.5, levels=2)
    data = whole.read_bytes()
    (folder / "c_truncated.tif").write_bytes(data[: len(data) // 2])
    (folder / "d_random.svs").write_bytes(np.random.default_rng(0).bytes(4096))
    return folder


def test_features_tiny_config_failures_exit_3_and_retry_only_failed(damaged_folder, tmp_path, capsys):
    out = tmp_path / "feats"
    argv = ["features", str(damaged_folder), str(out), "--config", "tiny", "--tissue-threshold", "0"]
    argv += ["--magnifications", "20x", "--blocks", "mid", "--no-progress", "--device", "cpu"]
    with one_thread():
        code, stdout, stderr = run_cli(argv, capsys)
    assert code == 3, stdout + stderr
    assert "a: 2 tiles" in stdout
    failed = dict(re.findall(r"^failed: (\S+) \(.*?\): (.*)$", stderr, flags=re.M))
    assert set(failed) == {"c_truncated", "d_random"}, stderr
    assert re.search(r"truncated|damaged", failed["c_truncated"])
    assert not RAW.search(stdout + stderr), stderr
    assert "random weights of config 'tiny'" in stderr  # the tiny architecture, not the hub's brca

    bag = read_bag(out / "a.h5")
    assert json.loads(bag.attrs["model"])["config"] == "tiny"
    assert json.loads(bag.attrs["ssl_encoder"])["dim"] == 64  # the tiny Summarizer's width
    report = json.loads((out / "report_rank0.json").read_text())
    errors = {s["id"]: s["error"] for s in report["slides"] if s["status"] == "failed"}
    assert errors == failed

    # rerun: the written slide is not redone, the failed ones are retried
    before = (out / "a.h5").stat().st_mtime_ns
    with one_thread():
        code, stdout, stderr = run_cli(argv, capsys)
    assert code == 3 and "1 already done" in stdout
    assert set(re.findall(r"^failed: (\S+) ", stderr, flags=re.M)) == {"c_truncated", "d_random"}
    assert (out / "a.h5").stat().st_mtime_ns == before

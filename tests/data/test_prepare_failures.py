"""``zoomldm prepare`` over a folder with damaged slides: every readable slide is finished, the failures are
named with a human reason (console and JSON report), the exit status is 3, and a rerun retries only them.

The folder holds two real pyramidal TIFFs cut from ``brca_001.jpeg``, a copy of a third one truncated to
half its bytes (its header and first tiles are intact, later tiles and the second pyramid level are
gone) and a ``.svs`` of random bytes. The models are ``--config tiny`` without ``--checkpoint``: random
tiny weights, and by default a random encoder of the tiny model's 64-d SSL width, so that the store
trains the tiny model of ``configs/train_tiny.yaml``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from _fixtures import one_thread, run_cli, write_pyramid_tiff

#: raw exception classes of the image libraries must not reach the user
RAW = re.compile(r"Jpeg8Error|TiffFileError|OpenSlideError|Traceback|Empty input file")


@pytest.fixture()
def damaged_folder(tmp_path: Path, brca_image: np.ndarray) -> Path:
    folder = tmp_path / "slides"
    folder.mkdir()
    write_pyramid_tiff(folder / "a.tif", brca_image[:512, :512], mpp=0.5, levels=2)
    write_pyramid_tiff(folder / "b.tif", brca_image[1024:1536, 2048:2560], mpp=0.5, levels=2)
    whole = write_pyramid_tiff(tmp_path / "c_whole.tif", brca_image[3072:3584, 512:1024], mpp=0.5, levels=2)
    data = whole.read_bytes()
    (folder / "c_truncated.tif").write_bytes(data[: len(data) // 2])
    (folder / "d_random.svs").write_bytes(np.random.default_rng(0).bytes(4096))
    return folder


def _prepare(folder: Path, store: Path, capsys) -> tuple[int, str, str]:
    argv = ["prepare", str(folder), str(store), "--config", "tiny", "--levels", "10x"]
    argv += ["--tissue-threshold", "0", "--no-progress", "--device", "cpu"]
    with one_thread():
        return run_cli(argv, capsys)


def test_failed_slides_are_named_exit_3_and_only_they_are_retried(
    damaged_folder, tmp_path, capsys, brca_image
):
    store = tmp_path / "out.zarr"
    code, out, err = _prepare(damaged_folder, store, capsys)
    assert code == 3, out + err
    assert "a: 10x 1" in out and "b: 10x 1" in out  # the readable slides are finished
    failed = dict(re.findall(r"^failed: (\S+) \(.*?\): (.*)$", err, flags=re.M))
    assert set(failed) == {"c_truncated", "d_random"}, err
    assert re.search(r"truncated|damaged", failed["c_truncated"])
    assert re.search(r"tile at (pyramid )?level \d", failed["c_truncated"])  # where it broke
    assert "d_random.svs" in failed["d_random"]
    assert not RAW.search(err + out), err
    assert "2 slide(s) failed" in err and "rerun" in err

    # the JSON report names the same failures with the same reasons
    report = json.loads(Path(f"{store}.prepare.json").read_text())["report"]
    statuses = {s["id"]: (s["status"], s["error"]) for s in report["slides"]}
    assert statuses["a"][0] == statuses["b"][0] == "committed"
    assert {k: v[1] for k, v in statuses.items() if v[0] == "failed"} == failed

    # the store fits the tiny model (64-d grids, 8 pathology levels): train_tiny.yaml can use it
    from zoomldm.config import ZoomLDMConfig
    from zoomldm.train.config import check_store

    assert check_store(str(store), ZoomLDMConfig.from_preset("tiny")).ssl_dim == 64

    # rerun: the finished slides are not redone, the failed ones are tried again (and fail again)
    code, out, err = _prepare(damaged_folder, store, capsys)
    assert code == 3
    assert "a:" not in out and "b:" not in out
    assert set(re.findall(r"^failed: (\S+) ", err, flags=re.M)) == {"c_truncated", "d_random"}

    # once the files are fixed, a rerun adds exactly them and succeeds
    write_pyramid_tiff(damaged_folder / "c_truncated.tif", brca_image[3072:3584, 512:1024], mpp=0.5, levels=2)
    (damaged_folder / "d_random.svs").unlink()
    code, out, err = _prepare(damaged_folder, store, capsys)
    assert code == 0, err
    assert "c_truncated: 10x 1" in out and "a:" not in out
    assert "10x 3 samples from 3 slides" in out


def test_exit_status_3_is_documented():
    from typer.testing import CliRunner

    from zoomldm.cli import app

    for command, doc in (("prepare", "data.md"), ("features", "mil.md")):
        text = CliRunner().invoke(app, [command, "--help"], terminal_width=200).output
        assert "3 finished, but some slides failed" in " ".join(text.split()), command
        docs = (Path(__file__).resolve().parents[2] / "docs" / doc).read_text()
        assert "exit status 3: finished, but some slides failed" in " ".join(docs.lower().split()), doc

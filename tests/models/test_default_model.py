"""The default model: one rule (``zoomldm.checkpoints.default_checkpoint``) for every command and for
``ZoomLDMPipeline.from_pretrained()``: a named checkpoint, else ``$ZOOMLDM_CHECKPOINT``, else the published
model when cached or reachable, else the embedded offline model with one line saying so. The hub check is
exercised against servers on the loopback address only."""

from __future__ import annotations

import logging
import socket
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from _fixtures import one_thread, run_cli
from zoomldm import ZoomLDMPipeline
from zoomldm import checkpoints as emb
from zoomldm.checkpoints import default as default_rule  # the module whose published_available the rule calls
from zoomldm.errors import ZoomLDMError


@pytest.fixture
def offline(monkeypatch):
    """No published model reachable (as on the test machines), no $ZOOMLDM_CHECKPOINT."""
    monkeypatch.delenv(emb.CHECKPOINT_ENV, raising=False)
    monkeypatch.setattr(default_rule, "published_available", lambda timeout=emb.HUB_TIMEOUT_S: False)


@pytest.fixture(scope="module")
def embedded_pipe() -> ZoomLDMPipeline:
    return ZoomLDMPipeline.from_pretrained("embedded")


def test_the_rule_in_order(monkeypatch):
    lines: list[str] = []
    monkeypatch.delenv(emb.CHECKPOINT_ENV, raising=False)
    monkeypatch.setattr(default_rule, "published_available", lambda timeout=emb.HUB_TIMEOUT_S: True)
    assert emb.default_checkpoint(None, log=lines.append) == emb.PUBLISHED and not lines
    monkeypatch.setattr(default_rule, "published_available", lambda timeout=emb.HUB_TIMEOUT_S: False)
    assert emb.default_checkpoint(None, log=lines.append) == emb.EMBEDDED
    assert len(lines) == 1 and "embedded offline model" in lines[0] and "\n" not in lines[0]
    # a named checkpoint, then $ZOOMLDM_CHECKPOINT, come first and are never replaced
    assert emb.default_checkpoint("models/mine", log=lines.append) == "models/mine"
    monkeypatch.setenv(emb.CHECKPOINT_ENV, "models/env")
    assert emb.default_checkpoint(None, log=lines.append) == "models/env" and len(lines) == 1
    # prepare / features: no fallback (a store belongs to one model), other domains' published weights
    monkeypatch.delenv(emb.CHECKPOINT_ENV)
    assert emb.default_checkpoint(None, fallback=False) == emb.PUBLISHED
    assert emb.default_checkpoint(None, published="naip") == "naip"


def _serve_once() -> tuple[socket.socket, int]:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    return server, server.getsockname()[1]


def test_hub_check_is_quick_and_answers_what_it_finds(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr("huggingface_hub.try_to_load_from_cache", lambda *a, **k: None)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    server, port = _serve_once()
    try:
        monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{port}")
        assert emb.published_available(timeout=2.0)  # a hub that answers
    finally:
        server.close()
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{port}")  # nothing listens there now
    started = time.perf_counter()
    assert not emb.published_available(timeout=2.0)
    assert time.perf_counter() - started < 2.5
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # HF_HUB_OFFLINE=1: not even tried
    assert not emb.published_available()
    # a cached copy counts whatever the network
    monkeypatch.setattr("huggingface_hub.try_to_load_from_cache", lambda *a, **k: "/cache/brca/weights.ckpt")
    assert emb.published_available()


def test_from_pretrained_embedded_and_default(offline, embedded_pipe, caplog):
    path = emb.embedded_model_path()
    assert Path(embedded_pipe.provenance["checkpoint"]) == path
    assert embedded_pipe.unet.dtype == torch.float32  # stored in float16, loaded as asked (float32)
    assert emb.is_embedded("embedded") and emb.is_embedded(path) and not emb.is_embedded("brca")
    with caplog.at_level(logging.WARNING, logger="zoomldm"):
        default = ZoomLDMPipeline.from_pretrained()
    assert Path(default.provenance["checkpoint"]) == path
    notes = [r.getMessage() for r in caplog.records if r.name == "zoomldm"]
    assert len(notes) == 1 and "embedded offline model" in notes[0]
    with pytest.raises(ZoomLDMError, match="checkpoint not found"):  # a named one is never replaced
        ZoomLDMPipeline.from_pretrained("models/does-not-exist.ckpt")


def test_sample_command_defaults_to_the_embedded_model_offline(offline, tmp_path, data_dir, capsys):
    from zoomldm.io.images import load_image

    region = load_image(data_dir / "brca_001.jpeg")[2048:2304, 2048:2304]
    from PIL import Image

    Image.fromarray(region).save(tmp_path / "region.png")
    args = ["sample", "-m", "20x", "--n", "1", "--steps", "1", "--device", "cpu"]
    with one_thread():
        # no --checkpoint, no --encoder: the embedded model with its own encoder, one note on stderr
        code, out, err = run_cli(
            [*args, "--reference", str(tmp_path / "region.png"), "--out", str(tmp_path / "a")], capsys
        )
        assert code == 0, err
        assert err.count("embedded offline model") == 1 and len(err.strip().splitlines()) == 1, err
        # named: no note
        grid = np.random.default_rng(0).standard_normal((64, 2, 2)).astype("float32")
        np.save(tmp_path / "grid.npy", grid)
        code, out, err = run_cli(
            [
                *args,
                "--checkpoint",
                "embedded",
                "--ssl",
                str(tmp_path / "grid.npy"),
                "--out",
                str(tmp_path / "b"),
            ],
            capsys,
        )
    assert code == 0 and "embedded offline model" not in err, err
    assert (tmp_path / "a" / "patch_0000.png").is_file() and (tmp_path / "b" / "patch_0000.png").is_file()
    # a checkpoint the user names that cannot be loaded is an error (exit 2), not the embedded model
    code, _, err = run_cli(
        [
            *args,
            "--checkpoint",
            str(tmp_path / "missing"),
            "--ssl",
            str(tmp_path / "grid.npy"),
            "--out",
            str(tmp_path / "c"),
        ],
        capsys,
    )
    assert code == 2 and "embedded offline model" not in err and len(err.strip().splitlines()) == 1


def test_prepare_and_features_take_the_embedded_model_by_name(monkeypatch):
    """No silent fallback for stores and features; ``embedded`` names the model and its own encoder."""
    from zoomldm.data.loading import encoder_for_model, load_encoder, load_pipeline
    from zoomldm.sampling.reference import default_encoder

    monkeypatch.delenv(emb.CHECKPOINT_ENV, raising=False)
    pipe = load_pipeline("embedded")
    # one rule for prepare / features (library and CLI) and generate / sample --reference
    assert encoder_for_model(None, pipe) == "embedded" and default_encoder(pipe) == "embedded"
    assert encoder_for_model("uni", pipe) == "uni" and encoder_for_model(None, None) is None
    assert default_encoder("brca") == "uni"
    encoder = load_encoder("embedded", domain="pathology")
    assert encoder.dim == pipe.config.ssl_channels == 64
    monkeypatch.setenv(emb.CHECKPOINT_ENV, "embedded")  # $ZOOMLDM_CHECKPOINT is the default here too
    assert Path(load_pipeline(None).provenance["checkpoint"]) == emb.embedded_model_path()

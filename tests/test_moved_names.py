"""Names moved by the layering (issue 23) keep their old import paths for one release: the same objects,
with a DeprecationWarning (the viewer's are in tests/viewer/test_aliases.py)."""

from __future__ import annotations

import importlib
import sys

import pytest


def test_data_encoders_is_models_encoders_and_warns(monkeypatch: pytest.MonkeyPatch) -> None:
    import zoomldm.models.encoders as new

    monkeypatch.delitem(sys.modules, "zoomldm.data.encoders", raising=False)
    with pytest.warns(DeprecationWarning, match="zoomldm.models.encoders"):
        old = importlib.import_module("zoomldm.data.encoders")
    for name in ("SSLEncoder", "build_encoder", "encode_region_grid", "DOMAIN_ENCODERS", "ENCODERS"):
        assert getattr(old, name) is getattr(new, name), name


def test_load_embedded_moved_to_the_pipeline_and_warns() -> None:
    import zoomldm.models.embedded as embedded
    import zoomldm.pipeline

    with pytest.warns(DeprecationWarning, match="zoomldm.pipeline.load_embedded"):
        assert embedded.load_embedded is zoomldm.pipeline.load_embedded
    with pytest.raises(AttributeError):
        embedded.no_such_name  # noqa: B018


def test_the_default_rule_and_embedded_files_keep_their_old_names() -> None:
    import zoomldm.checkpoints as checkpoints
    import zoomldm.models.embedded as embedded

    for name in ("default_checkpoint", "published_available", "embedded_model_path", "is_embedded", "EMBEDDED",
                 "PUBLISHED", "CHECKPOINT_ENV", "verify_embedded_model", "card_hashes"):  # fmt: skip
        assert getattr(embedded, name) is getattr(checkpoints, name), name


def test_the_pipeline_is_the_model_with_sampling() -> None:
    from zoomldm import ZoomLDMPipeline
    from zoomldm.models.bundle import ZoomLDMModel
    from zoomldm.pipeline import PatchSamplingOutput, to_uint8  # noqa: F401 (old names of zoomldm.pipeline)

    assert issubclass(ZoomLDMPipeline, ZoomLDMModel)
    pipe = ZoomLDMPipeline.from_config("tiny")
    assert type(pipe) is ZoomLDMPipeline and type(ZoomLDMModel.from_config("tiny")) is ZoomLDMModel

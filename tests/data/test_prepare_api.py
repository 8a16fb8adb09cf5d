"""One public function per data command (``zoomldm.prepare``, ``zoomldm.extract_features``,
``zoomldm.train_mil``): exported lazily from ``zoomldm``, typed and documented, taking names or paths as
well as ready objects; the CLI modules only parse options, call them and print."""

from __future__ import annotations

import inspect
import subprocess
import sys
from pathlib import Path

import pytest

import zoomldm

SRC = Path(zoomldm.__file__).resolve().parent


def test_exported_lazily_from_the_package():
    code = (
        "import sys, zoomldm\n"
        "assert {'prepare', 'extract_features', 'train_mil'} <= set(zoomldm.__all__)\n"
        "assert 'torch' not in sys.modules, 'import zoomldm must stay light'\n"
        "print(zoomldm.prepare.__module__, zoomldm.extract_features.__module__, zoomldm.train_mil.__module__)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["zoomldm.data.prepare", "zoomldm.features.extract", "zoomldm.features.mil"]


@pytest.mark.parametrize("name", ["prepare", "extract_features", "train_mil"])
def test_typed_and_documented(name):
    function = getattr(zoomldm, name)
    signature = inspect.signature(function)
    doc = inspect.getdoc(function) or ""
    assert "Args:" in doc
    for parameter in signature.parameters.values():
        assert parameter.annotation is not inspect.Parameter.empty, f"{name}({parameter.name}) has no type"
        assert parameter.name in doc, f"{name}: {parameter.name} is not documented"


def test_prepare_takes_ready_model_objects(small_slides, tmp_path, tiny_encoder, tiny_vae):
    lines: list[str] = []
    report = zoomldm.prepare(
        small_slides,
        tmp_path / "store.zarr",
        checkpoint=tiny_vae,  # a VQModel object instead of a checkpoint path
        encoder=tiny_encoder,  # an SSLEncoder object instead of a name
        levels=["10x"],
        tissue_threshold=0.0,
        device="cpu",
        progress=False,
        log=lines.append,
    )
    assert report.totals == {"10x": 3} and not report.failed
    assert [line.split(":")[0] for line in lines] == ["s1", "s2", "s3"]


def test_random_tiny_weights_with_a_given_encoder_of_another_width_say_so(
    small_slides, tmp_path, tiny_encoder
):
    lines: list[str] = []
    report = zoomldm.prepare(
        [s for s in _sources(small_slides) if s.id == "s1"],
        tmp_path / "store.zarr",
        config="tiny",  # random tiny weights: its Summarizer takes 64-d grids
        encoder=tiny_encoder,  # 32-d
        levels=["10x"],
        tissue_threshold=0.0,
        device="cpu",
        progress=False,
        log=lines.append,
    )
    assert report.totals == {"10x": 1}
    notes = [line for line in lines if line.startswith("note:")]
    assert any("random weights of config 'tiny'" in n for n in notes)
    assert any("32-d embeddings but the Summarizer of tiny takes 64" in n for n in notes), notes


def _sources(folder):
    from zoomldm.data.slides import find_slides

    return find_slides(folder)


@pytest.mark.parametrize(
    ("module", "moved"),
    [
        ("prepare.py", ("build_encoder", "ZoomLDMPipeline", "prepare_dataset", "PrepareSettings")),
        ("features.py", ("build_encoder", "ZoomLDMPipeline", "find_slides", "apply_speed_settings")),
        ("mil.py", ("cross_validate", "MILConfig")),
    ],
)
def test_cli_modules_only_parse_call_and_print(module, moved):
    source = (SRC / "cli" / module).read_text()
    for name in moved:
        assert name not in source, f"cli/{module} still does the library's work ({name})"

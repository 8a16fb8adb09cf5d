"""The viewer's old import paths (``zoomldm.io.viewer``, ``zoomldm.io.explorer``, ``zoomldm.io.serve``) keep
working until 0.2: the same objects as in :mod:`zoomldm.viewer`, with a DeprecationWarning."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

import zoomldm.viewer
import zoomldm.viewer.explorer
import zoomldm.viewer.server

VIEWER_NAMES = ["STATIC_DIR", "ExplorerSource", "SlideSource", "ViewerServer", "open_image", "serve"]
EXPLORER_NAMES = [
    "FORMAT_VERSION",
    "TILE_SIZE",
    "BlockError",
    "Explorer",
    "Geometry",
    "block_seed",
    "downsample2",
    "feather",
    "load_model",
    "model_digest",
    "psnr",
    "seam_statistics",
]


def _fresh_import(name: str, monkeypatch: pytest.MonkeyPatch):
    """Import ``name`` anew (the warning is given once, when the module first runs)."""
    monkeypatch.delitem(sys.modules, name, raising=False)
    return importlib.import_module(name)


@pytest.mark.parametrize(
    ("old", "new", "names"),
    [
        ("zoomldm.io.viewer", zoomldm.viewer.server, VIEWER_NAMES),
        ("zoomldm.io.explorer", zoomldm.viewer.explorer, EXPLORER_NAMES),
    ],
)
def test_old_modules_warn_and_give_the_same_objects(old, new, names, monkeypatch) -> None:
    with pytest.warns(DeprecationWarning, match=rf"{old} moved to zoomldm\.viewer.*0\.2"):
        module = _fresh_import(old, monkeypatch)
    for name in names:
        assert getattr(module, name) is getattr(new, name), name


@pytest.mark.parametrize("name", ["serve", "ViewerServer"])
def test_io_package_names_warn_and_give_the_same_objects(name) -> None:
    import zoomldm.io

    with pytest.warns(DeprecationWarning, match=rf"zoomldm\.io\.{name} moved to zoomldm\.viewer"):
        found = getattr(zoomldm.io, name)
    assert found is getattr(zoomldm.viewer.server, name) is getattr(zoomldm.viewer, name)
    namespace: dict[str, object] = {}
    with pytest.warns(DeprecationWarning):
        exec(f"from zoomldm.io import {name} as again", namespace)
    assert namespace["again"] is found


def test_io_package_other_names_are_still_attribute_errors() -> None:
    import zoomldm.io

    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        zoomldm.io.nothing  # noqa: B018


def test_importing_zoomldm_io_neither_warns_nor_loads_the_viewer() -> None:
    code = (
        "import sys, warnings\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    import zoomldm.io\n"
        "    from zoomldm.io import *\n"
        "assert 'zoomldm.viewer' not in sys.modules, 'zoomldm.io loaded the viewer'\n"
        "moved = [str(w.message) for w in caught if 'moved' in str(w.message)]\n"
        "assert not moved, moved\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]

"""The pyramidal TIFF writer streams: resident memory O(width), not O(image); BigTIFF when the file could
pass 4 GiB; a BigTIFF opens in tifffile, OpenSlide and the viewer."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request

import numpy as np
import pytest
import tifffile

from zoomldm.io import write_tiff
from zoomldm.io.tiff import (
    CLASSIC_TIFF_LIMIT,
    PyramidalTiffWriter,
    estimated_tiff_bytes,
    needs_bigtiff,
    tiff_size_bound,
)
from zoomldm.viewer import serve

#: a child process writes a width × height gradient in 64-row chunks and reports how much its resident
#: memory (VmRSS, sampled after every chunk) grew over the writer's lifetime
_CHILD = r"""
import json, re, sys
import numpy as np
from zoomldm.io.tiff import PyramidalTiffWriter

def rss():
    return int(re.search(r"VmRSS:\s+(\d+)", open("/proc/self/status").read()).group(1)) * 1024

width, height, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
row = (np.arange(width) % 251).astype(np.uint8)[None, :, None]
chunk = np.empty((64, width, 3), np.uint8)
base = peak = rss()
with PyramidalTiffWriter(out, height, width, mpp=0.5, compression="none") as writer:
    for y in range(0, height, 64):
        chunk[:] = row + np.uint8(y % 256)
        writer.write_rows(y, chunk)
        peak = max(peak, rss())
print(json.dumps({"growth": peak - base}))
"""


def _growth(tmp_path, width: int, height: int) -> int:
    out = tmp_path / f"g{height}.tif"
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, str(width), str(height), str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    with tifffile.TiffFile(out) as tif:
        assert tif.pages.first.shape == (height, width, 3)
    out.unlink()
    return json.loads(done.stdout.splitlines()[-1])["growth"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_resident_memory_is_bounded_by_the_width_not_the_height(tmp_path):
    """4× the rows, same resident memory: the rows of tiles are the working set (a memory-mapped spool of
    the reduced levels grew the resident set with the image before: +312 MiB for 16384²)."""
    width = 8192
    band = 256 * width * 3  # one row of tiles
    short = _growth(tmp_path, width, 1024)
    tall = _growth(tmp_path, width, 4096)  # the reduced levels alone are 24 MiB more here
    assert tall <= short + band, (short, tall)
    assert tall <= 12 * band, (tall, band)


def test_bigtiff_decision():
    assert not needs_bigtiff(16384, 16384)
    assert needs_bigtiff(32768, 32768)  # 4.3 GB uncompressed pyramid: could pass the classic limit
    assert needs_bigtiff(131072, 131072)
    assert tiff_size_bound(32768, 32768) >= CLASSIC_TIFF_LIMIT > tiff_size_bound(30000, 30000)
    for compression in ("jpeg", "zlib", "none"):
        assert estimated_tiff_bytes(8192, 8192, compression) <= tiff_size_bound(8192, 8192)
    assert estimated_tiff_bytes(8192, 8192, "jpeg") < estimated_tiff_bytes(8192, 8192, "none")
    # 4/3 for the pyramid: a 1024² image stores 1024² + 512² + 256² pixels
    assert estimated_tiff_bytes(1024, 1024, "none") == int((1024**2 + 512**2 + 256**2) * 3 * 1.01) + 2**16


def test_writer_decides_by_the_bound(tmp_path):
    small = PyramidalTiffWriter(tmp_path / "s.tif", 512, 512)
    assert small.bigtiff is False
    small.abort()


def test_forced_bigtiff_opens_everywhere(tmp_path, brca_image):
    openslide = pytest.importorskip("openslide")
    path = write_tiff(tmp_path / "big.tif", brca_image[:1024, :1024], mpp=0.5, bigtiff=True)
    with tifffile.TiffFile(path) as tif:
        assert tif.is_bigtiff and len(tif.series[0].levels) == 3
        np.testing.assert_allclose(tif.pages.first.asarray().mean(), brca_image[:1024, :1024].mean(), atol=2)
    slide = openslide.OpenSlide(str(path))
    assert slide.dimensions == (1024, 1024) and float(slide.properties["openslide.mpp-x"]) == pytest.approx(
        0.5
    )
    slide.close()
    with serve(path, port=0) as server:
        with urllib.request.urlopen(server.url + "slide.dzi", timeout=30) as response:
            assert response.status == 200 and b'Width="1024"' in response.read()

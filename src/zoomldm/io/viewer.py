"""A local deep-zoom viewer: OpenSeadragon (vendored, no CDN) over Deep Zoom tiles made on the fly.

``serve(path)`` opens a pyramidal TIFF (or any image OpenSlide's ``open_slide`` reads, PNG/JPEG included)
and serves, on localhost by default:

* ``/`` — the viewer page (``?zoom=Z`` zooms to Z× on load, ``&x=..&y=..`` centres on a point given in
  fractions of the image width/height);
* ``/slide.dzi`` and ``/slide_files/{level}/{col}_{row}.jpeg`` — Deep Zoom, from openslide-python's
  ``DeepZoomGenerator``;
* ``/info.json`` — size, µm/px and the provenance record of the file;
* ``/static/{name}`` — the vendored OpenSeadragon files (``viewer_static/``).

Why our own small handler rather than openslide-python's Flask example: it adds no dependency and stays
bounded (fixed routes, whitelisted static files, numbers range-checked before any pixel is read).
"""

from __future__ import annotations

import html
import io
import json
import os
import re
import threading
from collections import deque
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ..errors import ZoomLDMError

STATIC_DIR = Path(__file__).with_name("viewer_static")
_TILE = re.compile(r"^/slide_files/(\d{1,3})/(\d{1,7})_(\d{1,7})\.jpeg$")
_TYPES = {
    ".js": "text/javascript",
    ".png": "image/png",
    ".txt": "text/plain; charset=utf-8",
    ".md": "text/plain",
}

_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{title} — zoomldm viewer</title>
<style>
  html, body {{ margin: 0; height: 100%; background: #222; color: #ddd; font: 13px sans-serif; }}
  #viewer {{ position: absolute; inset: 0 0 22px 0; }}
  #caption {{ position: absolute; left: 0; right: 0; bottom: 0; height: 22px; line-height: 22px;
              padding: 0 8px; overflow: hidden; white-space: nowrap; }}
</style>
<script src="static/openseadragon.min.js"></script>
</head>
<body>
<div id="viewer"></div>
<div id="caption">{caption}</div>
<script>
  const params = new URLSearchParams(window.location.search);
  const viewer = OpenSeadragon({{
    id: "viewer",
    prefixUrl: "static/",
    tileSources: "slide.dzi",
    showNavigator: true,
    maxZoomPixelRatio: 4,
    animationTime: 0.5,
  }});
  viewer.addOnceHandler("open", () => {{
    const zoom = parseFloat(params.get("zoom"));
    if (zoom > 0) {{
      const size = viewer.world.getItemAt(0).getContentSize();
      const x = parseFloat(params.get("x") ?? "0.5"), y = parseFloat(params.get("y") ?? "0.5");
      const point = new OpenSeadragon.Point(x, y * size.y / size.x);  // viewport units: width = 1
      viewer.viewport.zoomTo(zoom, null, true);
      viewer.viewport.panTo(point, true);
    }}
  }});
</script>
</body>
</html>
"""


def open_image(path: str | os.PathLike[str]) -> Any:
    """Open ``path`` with OpenSlide (pyramidal TIFF and slide formats) or, for plain images, ``ImageSlide``."""
    import openslide

    path = Path(path)
    if not path.is_file():
        raise ZoomLDMError(f"{path}: no such file; expected a TIFF or PNG written by zoomldm")
    try:
        return openslide.open_slide(str(path))
    except (openslide.OpenSlideError, OSError, ValueError) as err:
        raise ZoomLDMError(f"{path}: cannot be opened as a slide or image ({err})") from err


def _caption(slide: Any, path: Path) -> tuple[str, dict[str, Any]]:
    import openslide

    width, height = slide.dimensions
    mpp = slide.properties.get(openslide.PROPERTY_NAME_MPP_X)
    info: dict[str, Any] = {"name": path.name, "width": width, "height": height, "levels": slide.level_count}
    info["mpp"] = float(mpp) if mpp else None
    info["provenance"] = _tiff_provenance(path)
    text = f"{path.name} — {width}×{height} px, {slide.level_count} levels"
    if info["mpp"]:
        text += f", {info['mpp']:.4g} µm/px"
    return html.escape(text), info


def _tiff_provenance(path: Path) -> dict[str, Any] | None:
    """The provenance record of a zoomldm TIFF (XMP packet, or the older JSON ImageDescription), else None.

    Read with :func:`zoomldm.io.tiff.read_provenance`: since the provenance left the ImageDescription
    (tifffile took that JSON for its own series metadata), OpenSlide's ``tiff.ImageDescription`` no longer
    holds it."""
    from .tiff import read_provenance

    if path.suffix.lower() not in (".tif", ".tiff"):
        return None
    try:
        return read_provenance(path)
    except ZoomLDMError:  # the slide opened, so the pixels are fine; a caption without provenance will do
        return None


class ViewerServer(ThreadingHTTPServer):
    """HTTP server for one image; ``url`` is its address, ``requested`` the paths it served (last 10,000)."""

    daemon_threads = True

    def __init__(self, path: str | os.PathLike[str], host: str = "127.0.0.1", port: int = 8000) -> None:
        import openslide
        from openslide.deepzoom import DeepZoomGenerator

        self.image_path = Path(path)
        self.slide = open_image(self.image_path)
        self.deepzoom = DeepZoomGenerator(self.slide, tile_size=254, overlap=1, limit_bounds=False)
        caption, self.info = _caption(self.slide, self.image_path)
        self.page = _PAGE.format(title=html.escape(self.image_path.name), caption=caption).encode()
        self.dzi = self.deepzoom.get_dzi("jpeg").encode()
        self.static = {p.name: p for p in STATIC_DIR.iterdir() if p.is_file()}
        # OpenSlide itself is thread-safe; ImageSlide (PIL) is not, so plain images are read under a lock
        self.tile_lock = threading.Lock() if isinstance(self.slide, openslide.ImageSlide) else None
        self.requested: deque[str] = deque(maxlen=10_000)
        self._thread: threading.Thread | None = None
        try:
            super().__init__((host, port), _Handler)
        except OSError as err:
            self.slide.close()
            raise ZoomLDMError(
                f"cannot listen on {host}:{port} ({err.strerror}); pass another --port"
            ) from err

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/"

    def start(self) -> ViewerServer:
        """Serve in a background (daemon) thread and return at once."""
        self._thread = threading.Thread(target=self.serve_forever, name="zoomldm-viewer", daemon=True)
        self._thread.start()
        return self

    def wait(self) -> None:
        """Block until the server is shut down (Ctrl-C in the CLI)."""
        while self._thread is not None and self._thread.is_alive():
            self._thread.join(timeout=0.5)

    def close(self) -> None:
        """Stop serving and release the image."""
        if self._thread is not None and self._thread.is_alive():
            self.shutdown()
        self.server_close()
        self.slide.close()

    def __enter__(self) -> ViewerServer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def tile(self, level: int, col: int, row: int) -> bytes | None:
        """One Deep Zoom tile as JPEG bytes, or None when the address is outside the pyramid."""
        if level >= self.deepzoom.level_count:
            return None
        cols, rows = self.deepzoom.level_tiles[level]
        if col >= cols or row >= rows:
            return None
        if self.tile_lock is not None:
            with self.tile_lock:
                image = self.deepzoom.get_tile(level, (col, row))
        else:
            image = self.deepzoom.get_tile(level, (col, row))
        buffer = io.BytesIO()
        image.convert("RGB").save(buffer, format="JPEG", quality=85)
        return buffer.getvalue()


class _Handler(BaseHTTPRequestHandler):
    server: ViewerServer
    server_version = "zoomldm-viewer"

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self._respond(send_body=True)

    def do_HEAD(self) -> None:  # noqa: N802
        self._respond(send_body=False)

    def log_message(self, format: str, *args: Any) -> None:  # quiet: one line per tile is noise
        pass

    def _respond(self, send_body: bool) -> None:
        path = urlsplit(self.path).path
        self.server.requested.append(path)
        body, ctype, cache = self._route(path)
        if body is None:
            self.send_error(HTTPStatus.NOT_FOUND)
            return
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", cache)
        self.end_headers()
        if send_body:
            self.wfile.write(body)

    def _route(self, path: str) -> tuple[bytes | None, str, str]:
        server = self.server
        if path in ("/", "/index.html"):
            return server.page, "text/html; charset=utf-8", "no-cache"
        if path == "/slide.dzi":
            return server.dzi, "application/xml", "no-cache"
        if path == "/info.json":
            return json.dumps(server.info).encode(), "application/json", "no-cache"
        match = _TILE.match(path)
        if match:
            level, col, row = (int(g) for g in match.groups())
            return server.tile(level, col, row), "image/jpeg", "max-age=3600"
        if path.startswith("/static/"):
            file = server.static.get(path[len("/static/") :])
            if file is not None:
                return file.read_bytes(), _TYPES.get(file.suffix, "application/octet-stream"), "max-age=86400"
        return None, "", ""


def serve(path: str | os.PathLike[str], host: str = "127.0.0.1", port: int = 8000) -> ViewerServer:
    """Start serving ``path`` at ``http://host:port/`` in a background thread; returns the server.

    ``port=0`` picks a free port (see ``server.url``). Stop it with ``server.close()``.
    """
    return ViewerServer(path, host, port).start()

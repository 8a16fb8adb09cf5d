"""A local deep-zoom viewer: OpenSeadragon (vendored, no CDN) over Deep Zoom tiles made on the fly.

``serve(path)`` opens a pyramidal TIFF (or any image OpenSlide's ``open_slide`` reads, PNG/JPEG included)
and serves, on localhost by default:

* ``/`` — the viewer page (``?zoom=Z`` zooms to Z× on load, ``&x=..&y=..`` centres on a point given in
  fractions of the image width/height);
* ``/slide.dzi`` and ``/slide_files/{level}/{col}_{row}.jpeg`` — Deep Zoom, from openslide-python's
  ``DeepZoomGenerator``;
* ``/info.json`` — size, µm/px and the provenance record of the file;
* ``/static/{name}`` — the vendored OpenSeadragon files (``static/``).

With ``generate=True`` (``zoomldm view IMAGE --generate --from 5x``) it serves the *zoom explorer*
instead: the image at ``--from`` continued by the finer magnifications, generated where the user zooms in
(:mod:`zoomldm.viewer.explorer` owns the pixels, the cache and the model worker):

* ``/image.dzi`` and ``/image_files/{level}/{col}_{row}.png`` — Deep Zoom (tile 256, overlap 0, PNG:
  lossless, the cached pixels exactly); a tile whose blocks are generating waits up to ``tile_wait``
  seconds, then answers 503 with ``Retry-After`` (the page retries; meanwhile it shows the coarser level
  scaled up and a progress line);
* ``/progress.json`` — the worker: pending blocks, the running one, mean seconds per block, errors.

A tile outside the pyramid (level, column or row out of range, another format, junk) is a 404.

The page is :mod:`zoomldm.viewer.page`, the tile sources :mod:`zoomldm.viewer.sources`.

Why our own small handler rather than openslide-python's Flask example: it adds no dependency and stays
bounded (fixed routes, whitelisted static files, numbers range-checked before any pixel is read).
"""

from __future__ import annotations

import html
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
from .page import _EXPLORER_BODY, _EXPLORER_OPTIONS, _EXPLORER_SCRIPT, _PAGE
from .sources import ExplorerSource, SlideSource, open_image

__all__ = ["STATIC_DIR", "ExplorerSource", "SlideSource", "ViewerServer", "open_image", "serve"]

STATIC_DIR = Path(__file__).with_name("static")
_TILE = re.compile(r"^/(slide|image)_files/(\d{1,3})/(\d{1,7})_(\d{1,7})\.(jpeg|png)$")
_TYPES = {
    ".js": "text/javascript",
    ".png": "image/png",
    ".txt": "text/plain; charset=utf-8",
    ".md": "text/plain",
}


class ViewerServer(ThreadingHTTPServer):
    """HTTP server for one image; ``url`` is its address, ``requested`` the paths it served (last 10,000).

    ``path`` is served as it is (:class:`SlideSource`); ``source=`` serves another tile source instead
    (:class:`ExplorerSource`: the zoom explorer)."""

    daemon_threads = True

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        host: str = "127.0.0.1",
        port: int = 8000,
        *,
        source: SlideSource | ExplorerSource | None = None,
    ) -> None:
        if source is None:
            if path is None:
                raise ZoomLDMError("ViewerServer needs an image path or a source=")
            source = SlideSource(path)
        self.source = source
        self.info = source.info
        explorer = isinstance(source, ExplorerSource)
        title = html.escape(str(self.info.get("name", "image")))
        self.page = _PAGE.format(
            title=title,
            caption=source.caption,
            dzi=f"{source.name}.dzi",
            options=_EXPLORER_OPTIONS if explorer else "",
            body=_EXPLORER_BODY if explorer else "",
            script=_EXPLORER_SCRIPT if explorer else "",
        ).encode()
        self.dzi = source.dzi
        self.static = {p.name: p for p in STATIC_DIR.iterdir() if p.is_file()}
        self.requested: deque[str] = deque(maxlen=10_000)
        self._thread: threading.Thread | None = None
        try:
            super().__init__((host, port), _Handler)
        except OSError as err:
            source.close()
            raise ZoomLDMError(
                f"cannot listen on {host}:{port} ({err.strerror}); pass another --port"
            ) from err

    # the image served by ``zoomldm view`` without --generate (kept for callers of the plain viewer)
    @property
    def slide(self) -> Any:
        return getattr(self.source, "slide", None)

    @property
    def deepzoom(self) -> Any:
        return getattr(self.source, "deepzoom", None)

    @property
    def image_path(self) -> Path | None:
        return getattr(self.source, "image_path", None)

    @property
    def explorer(self) -> Any:
        """The :class:`~zoomldm.viewer.explorer.Explorer` served (None for a plain image)."""
        return getattr(self.source, "explorer", None)

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
        """Stop serving and release the image (and the explorer's worker)."""
        if self._thread is not None and self._thread.is_alive():
            self.shutdown()
        self.server_close()
        self.source.close()

    def __enter__(self) -> ViewerServer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def tile(self, level: int, col: int, row: int) -> bytes | None:
        """One Deep Zoom tile's bytes, or None when the address is outside the pyramid."""
        return self.source.tile(level, col, row)


class _Handler(BaseHTTPRequestHandler):
    server: ViewerServer
    server_version = "zoomldm-viewer"

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        try:
            self._respond(send_body=True)
        except (BrokenPipeError, ConnectionResetError):  # the browser left (e.g. closed) while we waited
            self.close_connection = True

    def do_HEAD(self) -> None:  # noqa: N802
        try:
            self._respond(send_body=False)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def log_message(self, format: str, *args: Any) -> None:  # quiet: one line per tile is noise
        pass

    def _respond(self, send_body: bool) -> None:
        from .explorer import BlockError

        path = urlsplit(self.path).path
        self.server.requested.append(path)
        try:
            body, ctype, cache = self._route(path)
        except TimeoutError:  # the tile's blocks are generating: the page asks again
            self.send_response(HTTPStatus.SERVICE_UNAVAILABLE)
            self.send_header("Retry-After", "1")
            self.send_header("Cache-Control", "no-store")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        except BlockError as err:
            self.send_error(HTTPStatus.INTERNAL_SERVER_ERROR, explain=str(err))
            return
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
        source = server.source
        if path == f"/{source.name}.dzi":
            return server.dzi, "application/xml", "no-cache"
        if path == "/info.json":
            return json.dumps(server.info).encode(), "application/json", "no-cache"
        if path == "/progress.json" and server.explorer is not None:
            return json.dumps(server.explorer.progress()).encode(), "application/json", "no-store"
        match = _TILE.match(path)
        if match and match.group(1) == source.name and match.group(5) == source.format:
            level, col, row = (int(g) for g in match.groups()[1:4])
            return server.tile(level, col, row), f"image/{source.format}", "max-age=3600"
        if path.startswith("/static/"):
            file = server.static.get(path[len("/static/") :])
            if file is not None:
                return file.read_bytes(), _TYPES.get(file.suffix, "application/octet-stream"), "max-age=86400"
        return None, "", ""


def serve(
    path: str | os.PathLike[str] | Any,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    generate: bool = False,
    source: str | int | None = None,
    to: str | int | None = None,
    pipe: Any = None,
    checkpoint: str | os.PathLike[str] | None = None,
    config: str | None = None,
    device: str = "cpu",
    cache: str | os.PathLike[str] | None = None,
    seed: int = 0,
    tile_wait: float = 20.0,
    **options: Any,
) -> ViewerServer:
    """Start serving ``path`` at ``http://host:port/`` in a background thread; returns the server.

    ``port=0`` picks a free port (see ``server.url``). Stop it with ``server.close()``.

    With ``generate=True``: the zoom explorer (``zoomldm view IMAGE --generate``). ``path`` (a file or a
    uint8 ``[H, W, 3]`` array, then ``cache`` is required) is at magnification ``source`` (e.g. ``"5x"``);
    the finer levels down to ``to`` (default the model's finest) are generated on request by ``pipe``, or
    the model loaded from ``checkpoint``/``config`` on ``device``, or else the package's default model
    (:func:`zoomldm.checkpoints.default_checkpoint`; ``server.explorer.note`` is its one line when that is
    the embedded offline model). ``cache``: block folder (default ``<image>.explore``); ``seed``;
    ``tile_wait``: seconds a tile request waits for its blocks before answering 503; ``options``: the
    explorer's geometry (``window_patches``, ``ring``, ``tile_size``, ``blend``) and the super-resolution settings by
    CLI name (``t0``, ``stride``, ``inner_steps``, ``inversion_steps``, ``no_postprocess``, …).
    """
    if not generate:
        if options or source is not None or to is not None or pipe is not None or checkpoint is not None:
            raise ZoomLDMError("source=, to=, pipe=, checkpoint= and settings need generate=True")
        return ViewerServer(path, host, port).start()
    from .explorer import Explorer, load_model

    if source is None:
        raise ZoomLDMError("--from: the magnification of the image is required with --generate (e.g. 5x)")
    from ..sampling.reference import read_image

    note, name = None, None
    if isinstance(path, str | os.PathLike):  # read (and checked) before the model is loaded
        path = Path(path)
        name = path.name
        if cache is None:
            cache = path.with_name(path.name + ".explore")
        path = read_image(path, what="image")
    elif cache is None:
        raise ZoomLDMError("cache=: a folder for the generated blocks is required when the image is an array")
    if pipe is None:
        pipe, note = load_model(checkpoint, config=config, device=device)
    explorer = Explorer(pipe, path, source, to, cache=cache, seed=seed, name=name, **options)
    explorer.note = note
    try:
        server = ViewerServer(host=host, port=port, source=ExplorerSource(explorer, tile_wait))
    except BaseException:
        explorer.close()
        raise
    return server.start()

"""The web applications: the deep-zoom viewer (``zoomldm view``) and the zoom explorer (``--generate``).

:mod:`.server` is the HTTP/Deep Zoom server (:func:`serve`, :class:`ViewerServer`), :mod:`.explorer` the
explorer's tile source (finer magnifications generated on request); the vendored OpenSeadragon files are in
``static/``.
"""

from .server import ViewerServer, serve

__all__ = ["ViewerServer", "serve"]

"""``zoomldm view OUTPUT``: browse a large output (pyramidal TIFF or PNG) in a local deep-zoom page."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    """Add the ``view`` command to ``app``."""

    @app.command("view")
    def view(
        output: Path = typer.Argument(..., help="A pyramidal TIFF (or PNG/JPEG) written by zoomldm."),
        port: int = typer.Option(8000, "--port", "-p", help="Port to listen on (0: any free port)."),
        host: str = typer.Option(
            "127.0.0.1", help="Address to bind; the default is reachable from this machine only."
        ),
        browser: bool = typer.Option(
            True, "--browser/--no-browser", help="Open the page in the default browser."
        ),
        zoom: float | None = typer.Option(None, help="Open the page zoomed in this many times (e.g. 4)."),
    ) -> None:
        """Serve OUTPUT as a deep-zoom web page (OpenSeadragon, bundled; no internet needed). Ctrl-C stops."""
        import webbrowser

        from ..errors import ZoomLDMError
        from ..io.viewer import serve

        if port < 0 or port > 65535:
            raise ZoomLDMError(f"--port must be 0-65535, got {port}")
        if zoom is not None and not zoom > 0:
            raise ZoomLDMError(f"--zoom must be > 0, got {zoom}")
        server = serve(output, host=host, port=port)
        url = server.url + (f"?zoom={zoom:g}" if zoom else "")
        if host not in ("127.0.0.1", "localhost", "::1"):
            typer.secho(
                f"warning: serving on {host}: other machines on the network can see this image", err=True
            )
        info = server.info
        typer.echo(f"{output.name}: {info['width']}x{info['height']} px, {info['levels']} levels")
        typer.echo(f"serving {url}  (Ctrl-C to stop)", err=False)
        if browser:
            webbrowser.open(url)
        try:
            server.wait()
        except KeyboardInterrupt:
            typer.echo("stopped")
        finally:
            server.close()

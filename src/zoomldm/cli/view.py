"""``zoomldm view OUTPUT``: browse a large output (pyramidal TIFF or PNG) in a local deep-zoom page.

``zoomldm view IMAGE --generate --from 5x``: the zoom explorer — IMAGE at 5x, and the finer magnifications
generated where the user zooms in (:mod:`zoomldm.viewer.explorer`).
"""

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
        generate: bool = typer.Option(
            False,
            "--generate",
            help="Zoom explorer: generate the finer magnifications of OUTPUT (at --from) where you zoom in.",
        ),
        source: str | None = typer.Option(
            None, "--from", help="With --generate: the magnification of OUTPUT, e.g. 5x."
        ),
        target: str | None = typer.Option(
            None, "--to", help="With --generate: the finest magnification to generate (default: 20x / 1x)."
        ),
        checkpoint: str | None = typer.Option(
            None,
            "--checkpoint",
            help="With --generate: model dir, official file or hub id (default: $ZOOMLDM_CHECKPOINT, else the "
            "published model when cached or reachable, else the embedded offline model, said in one line).",
        ),
        config: str | None = typer.Option(
            None, "--config", "-c", help="preset or yaml for an official checkpoint"
        ),
        device: str = typer.Option("auto", "--device", help="auto (cuda when available), cpu, cuda, …"),
        cache: Path | None = typer.Option(
            None, "--cache", help="With --generate: block cache folder (default: OUTPUT.explore beside it)."
        ),
        seed: int = typer.Option(0, "--seed", help="With --generate: sampling seed (same seed, same tiles)."),
        t0: int | None = typer.Option(None, "--t0", help="first timestep of constrained sampling"),
        stride: int | None = typer.Option(None, "--stride", help="timestep stride"),
        inner_steps: int | None = typer.Option(None, "--inner-steps", help="Newton iterations per step"),
        inversion_steps: int | None = typer.Option(
            None, "--inversion-steps", help="condition-inversion Adam steps"
        ),
        no_postprocess: bool = typer.Option(False, "--no-postprocess", help="skip seam removal in a block"),
        decode_stride: int | None = typer.Option(
            None, "--decode-stride", help="VQ decode window stride in latent px (default: the official 16)"
        ),
        schedule: str | None = typer.Option(
            None, "--schedule", help="sampling schedule preset: official (default) or fast"
        ),
    ) -> None:
        """Serve OUTPUT as a deep-zoom web page (OpenSeadragon, bundled; no internet needed). Ctrl-C stops.

        With --generate --from MAG, levels finer than OUTPUT's pixels are generated on request by
        super-resolution of what the page shows, cached on disk (OUTPUT.explore/) and reused next time.
        """
        import webbrowser

        from ..errors import ZoomLDMError
        from ..viewer.server import serve

        if port < 0 or port > 65535:
            raise ZoomLDMError(f"--port must be 0-65535, got {port}")
        if zoom is not None and not zoom > 0:
            raise ZoomLDMError(f"--zoom must be > 0, got {zoom}")
        settings = {
            "t0": t0,
            "stride": stride,
            "inner_steps": inner_steps,
            "inversion_steps": inversion_steps,
            "decode_stride": decode_stride,
            "schedule": schedule,
        }
        settings = {k: v for k, v in settings.items() if v is not None}
        if no_postprocess:
            settings["no_postprocess"] = True
        given = [name for name, value in (("--from", source), ("--to", target), ("--checkpoint", checkpoint),
                                          ("--cache", cache), ("--config", config)) if value is not None]  # fmt: skip
        if not generate:
            if given or settings:
                raise ZoomLDMError(f"{', '.join(given + sorted(settings))}: only with --generate")
            server = serve(output, host=host, port=port)
            info = server.info
            typer.echo(f"{output.name}: {info['width']}x{info['height']} px, {info['levels']} levels")
        else:
            from ..devices import resolve_device

            if source is None:
                raise ZoomLDMError(
                    "--from: the magnification of OUTPUT is required with --generate (e.g. 5x)"
                )
            if not output.is_file():
                raise ZoomLDMError(f"{output}: no such file; expected an image at --from {source}")
            server = serve(
                output,
                host=host,
                port=port,
                generate=True,
                source=source,
                to=target,
                checkpoint=checkpoint,
                config=config,
                device=resolve_device(device),
                cache=cache,
                seed=seed,
                **settings,
            )
            explorer = server.explorer
            if explorer.note:
                typer.echo(explorer.note, err=True)
            info = server.info
            typer.echo(
                f"{output.name}: {info['image']['width']}x{info['image']['height']} px at {info['levels'][0]}, "
                f"generated on zoom to {info['levels'][-1]} ({info['width']}x{info['height']} px); "
                f"cache {explorer.cache_dir}"
            )
        url = server.url + (f"?zoom={zoom:g}" if zoom else "")
        if host not in ("127.0.0.1", "localhost", "::1"):
            typer.secho(
                f"warning: serving on {host}: other machines on the network can see this image", err=True
            )
        typer.echo(f"serving {url}  (Ctrl-C to stop)", err=False)
        if browser:
            webbrowser.open(url)
        try:
            server.wait()
        except KeyboardInterrupt:
            typer.echo("stopped")
        finally:
            server.close()

"""The viewer's HTML page: OpenSeadragon over ``{name}.dzi``, and the zoom explorer's additions to it.

:class:`~zoomldm.viewer.server.ViewerServer` fills ``_PAGE`` in; with the explorer it adds the tile retry
options, the progress line and the script that polls ``/progress.json``.
"""

from __future__ import annotations

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
<div id="caption">{caption}</div>{body}
<script>
  const params = new URLSearchParams(window.location.search);
  const viewer = OpenSeadragon({{
    id: "viewer",
    prefixUrl: "static/",
    tileSources: "{dzi}",
    showNavigator: true,
    maxZoomPixelRatio: 4,
    animationTime: 0.5,{options}
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
  }});{script}
</script>
</body>
</html>
"""

_EXPLORER_OPTIONS = """
    tileRetryMax: 100000,  // a generating tile answers 503 + Retry-After: ask again
    tileRetryDelay: 1000,
    timeout: 600000,"""

_EXPLORER_BODY = """
<div id="progress" style="position:absolute; left:8px; bottom:30px; padding:4px 8px; background:#000c;
     border-radius:4px; display:none"></div>"""

_EXPLORER_SCRIPT = """
  const progress = document.getElementById("progress");
  async function poll() {
    try {
      const p = await (await fetch("progress.json", {cache: "no-store"})).json();
      let text = "";
      if (p.running) {
        text = `generating ${p.running.level} block ${p.running.block.join(",")}: ${p.running.elapsed_s.toFixed(1)} s`;
        if (p.mean_block_s) text += ` (≈ ${p.mean_block_s.toFixed(1)} s per block)`;
        if (p.pending > 1) text += `, ${p.pending - 1} more queued`;
      } else if (p.pending > 0) {
        text = `${p.pending} block(s) queued`;
      }
      if (p.errors.length) text += ` — error: ${p.errors[p.errors.length - 1]}`;
      progress.textContent = text;
      progress.style.display = text ? "block" : "none";
      document.body.dataset.generating = p.pending > 0 ? "yes" : "no";
    } catch (err) { /* server stopped */ }
    setTimeout(poll, 700);
  }
  poll();"""

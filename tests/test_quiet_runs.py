"""A normal run prints only our own lines (issue 23, item 4).

``sample``, ``generate``, ``superres`` and ``demo`` run in one fresh interpreter (small sizes, the embedded
model, ``--dtype bfloat16`` where the command takes it: the path that printed two diffusers warnings per
run), and ``view --generate`` as its own process serving one generated tile. Every stderr line must be one
of ours: the one-line notes and warnings of the package (``note: …``, ``warning: …``). A library's
warning, a deprecation notice or a traceback fails the test with the lines.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

#: the lines a run of ours may print on stderr
OURS = re.compile(r"^(note|warning): \S")
MARK = "=== zoomldm "

#: CPU-seconds settings (by CLI name) of the README's offline example
FAST = [
    "--t0", "1000", "--stride", "500", "--inner-steps", "1", "--post-t0", "50", "--post-stride", "50",
    "--post-window-stride", "64", "--decode-stride", "64",
]  # fmt: skip

DRIVER = r"""
import sys, json
import zoomldm.demo
from zoomldm.cli import main

zoomldm.demo.CPU_LARGE_IMAGE = json.loads(sys.argv[1])  # a small schedule: the lines, not the image, matter
for argv in json.loads(sys.argv[2]):
    print("=== zoomldm " + argv[0], file=sys.stderr, flush=True)
    try:
        main(argv)
    except SystemExit as done:
        if done.code not in (0, None):
            print(f"exit {done.code}", file=sys.stderr)
            raise
"""


def _env() -> dict[str, str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="2", PYTHONWARNINGS="default")
    env.pop("ZOOMLDM_CHECKPOINT", None)
    return env


def _foreign(stderr: str) -> list[str]:
    return [
        line
        for line in stderr.splitlines()
        if line.strip() and not line.startswith(MARK) and not OURS.match(line)
    ]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from importlib import resources

    from PIL import Image

    root = tmp_path_factory.mktemp("quiet")
    with resources.files("zoomldm.assets").joinpath("brca_20x_1024.jpg").open("rb") as f:
        region = Image.open(f).convert("RGB")
    region.crop((0, 0, 512, 512)).save(root / "ref512.png")
    region.crop((0, 0, 512, 512)).reduce(2).save(root / "lr256.png")
    return root


@pytest.mark.slow
def test_sample_generate_superres_and_demo_print_only_our_lines(inputs: Path) -> None:
    out = inputs / "out"
    commands = [
        ["sample", "--checkpoint", "embedded", "-m", "20x", "--unconditional", "--cdm-steps", "5", "--n", "1",
         "--steps", "2", "--dtype", "bfloat16", "--out", str(out / "sample")],
        ["generate", "--checkpoint", "embedded", "--reference", str(inputs / "ref512.png"), "--guide", "10x",
         *FAST, "--dtype", "bfloat16", "--out", str(out / "large.tif")],
        ["superres", str(inputs / "lr256.png"), "--from", "10x", "--checkpoint", "embedded",
         "--inversion-steps", "2", *FAST, "--dtype", "bfloat16", "--out", str(out / "sr.tif")],
        # no --checkpoint: the offline default rule, whose one note line is ours
        ["demo", "--out", str(out / "demo"), "--steps", "2"],
    ]  # fmt: skip
    small = dict(t0=1000, stride=500, inner_steps=1, no_postprocess=True, decode_stride=64)
    done = subprocess.run(
        [sys.executable, "-c", DRIVER, json.dumps(small), json.dumps(commands)],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert [line[len(MARK) :] for line in done.stderr.splitlines() if line.startswith(MARK)] == [
        c[0] for c in commands
    ]
    assert not _foreign(done.stderr), "lines not ours on stderr:\n" + done.stderr[-3000:]
    # the demo's one line about the offline model (on stdout), and no other note
    assert (done.stdout + done.stderr).count("embedded offline model") == 1, done.stdout[-2000:]
    assert (out / "large.tif").is_file() and (out / "sr.tif").is_file() and (out / "demo").is_dir()


@pytest.mark.slow
def test_view_generate_prints_only_our_lines(inputs: Path) -> None:
    server = subprocess.Popen(
        [sys.executable, "-m", "zoomldm", "view", str(inputs / "lr256.png"), "--generate", "--from", "10x",
         "--checkpoint", "embedded", "--no-browser", "--port", "0", "--cache", str(inputs / "cache"),
         *FAST[:6], "--inversion-steps", "2", "--no-postprocess", "--decode-stride", "64"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )  # fmt: skip
    try:
        url = None
        deadline = time.monotonic() + 120
        while url is None and time.monotonic() < deadline:
            line = server.stdout.readline()
            if not line:
                break
            found = re.search(r"http://[\w.:\[\]-]+/", line)
            url = found.group(0) if found else None
        assert url is not None, "the viewer did not print its address"
        dzi = urllib.request.urlopen(url + "image.dzi", timeout=60).read().decode()
        size = int(re.search(r'Width="(\d+)"', dzi).group(1))
        top = max(size - 1, 1).bit_length()  # the finest Deep Zoom level: generated (20x from 10x pixels)
        tile = b""
        while not tile and time.monotonic() < deadline + 600:  # 503 + Retry-After while it generates
            try:
                tile = urllib.request.urlopen(url + f"image_files/{top}/0_0.png", timeout=120).read()
            except urllib.error.HTTPError as err:
                assert err.code == 503, err
                time.sleep(1)
        assert tile[:8] == b"\x89PNG\r\n\x1a\n"
    finally:
        server.terminate()
        try:
            _, stderr = server.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            _, stderr = server.communicate()
    assert not _foreign(stderr), "lines not ours on stderr:\n" + stderr[-3000:]

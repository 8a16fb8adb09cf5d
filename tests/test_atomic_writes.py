"""Nothing is lost (issue 12, item 5): an interrupted or failed write never leaves a file under its final
name that looks complete, and outputs get the permissions the user's umask gives.

Only the final names matter: temporary files are dot-prefixed (``.patch_0000.png.xxxx.tmp``) and a rerun
replaces them. The kill test really kills a ``zoomldm sample`` process with SIGKILL in the middle of
writing a PNG (no ``finally`` runs); the other tests make a writer fail half-way in-process.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from _fixtures import run_cli
from zoomldm.errors import OutputError
from zoomldm.fsutil import atomic_path, check_output, replace_dir


def _final_names(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))


def _fully_readable_png(path: Path) -> bool:
    try:
        with Image.open(path) as image:
            image.load()
        return True
    except OSError:
        return False


@pytest.fixture
def umask():
    """Set the process umask for one test (restored afterwards)."""
    before = os.umask(0o022)
    os.umask(before)

    def set_(value: int) -> None:
        os.umask(value)

    yield set_
    os.umask(before)


# -- atomic_path -----------------------------------------------------------------------------------------
def test_a_failed_write_leaves_neither_the_file_nor_its_temporary(tmp_path):
    target = tmp_path / "sub" / "result.json"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text('{"half": ')
        raise RuntimeError("killed mid-write")
    assert not target.exists() and list(target.parent.iterdir()) == []


def test_a_failed_rewrite_keeps_the_previous_file_whole(tmp_path):
    target = tmp_path / "result.json"
    target.write_text('{"run": 1}')
    with pytest.raises(OSError), atomic_path(target) as tmp:
        tmp.write_text('{"run": 2, "trunc')
        raise OSError(errno.ENOSPC, "No space left on device")
    assert json.loads(target.read_text()) == {"run": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]


# -- a real SIGKILL in the middle of `zoomldm sample` writing its PNGs ------------------------------------
KILL_ON_SAVE = r"""
import io, os, signal, sys
from PIL import Image

kill_at = int(os.environ["KILL_AT_SAVE"])
calls = [0]
original = Image.Image.save

def save(self, fp, format=None, **params):
    calls[0] += 1
    if calls[0] < kill_at:
        return original(self, fp, format=format, **params)
    buffer = io.BytesIO()
    original(self, buffer, format=format or "PNG", **params)
    data = buffer.getvalue()
    with open(fp, "wb") as handle:  # half of the PNG reaches the disk, then the process dies
        handle.write(data[: len(data) // 2])
        handle.flush()
        os.fsync(handle.fileno())
    os.kill(os.getpid(), signal.SIGKILL)

Image.Image.save = save
from zoomldm.cli import main
main(sys.argv[1:])
"""


def test_sigkill_while_writing_leaves_no_truncated_output(tmp_path, small_checkpoint, small_config):
    grid = tmp_path / "grid.npy"
    np.save(grid, np.random.default_rng(0).standard_normal((32, 2, 2)).astype("float32"))
    out = tmp_path / "samples"
    argv = [
        "sample", "--checkpoint", str(small_checkpoint), "--config", str(small_config), "-m", "5x",
        "--ssl", str(grid), "--n", "2", "--steps", "1", "--device", "cpu", "--out", str(out),
    ]  # fmt: skip
    kill_at = 2  # the first patch is written whole, the process dies in the middle of the second
    env = dict(os.environ, KILL_AT_SAVE=str(kill_at), OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-c", KILL_ON_SAVE, *argv], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    finals = _final_names(out)
    # the patches saved before the kill are whole; the one being written is not there under its name
    assert [p.name for p in finals] == [f"patch_{i:04d}.png" for i in range(kill_at - 1)]
    assert all(_fully_readable_png(p) for p in finals)
    assert len([p for p in out.iterdir() if p.name.startswith(".")]) == 1  # the half-written temporary


# -- a writer that fails half-way (disk full) inside the commands -----------------------------------------
def test_disk_full_while_writing_a_large_tiff_leaves_no_tiff(
    tmp_path, small_checkpoint, small_config, capsys, monkeypatch
):
    import tifffile

    calls = []

    def write(self, *args, **kwargs):
        calls.append(1)
        raise OSError(errno.ENOSPC, "No space left on device")  # the disk is full as the page is written

    monkeypatch.setattr(tifffile.TiffWriter, "write", write)
    grid = tmp_path / "grid.npy"
    np.save(grid, np.random.default_rng(0).standard_normal((32, 2, 2)).astype("float32"))
    out = tmp_path / "large.tif"
    code, stdout, err = run_cli(
        [
            "generate", "--checkpoint", str(small_checkpoint), "--config", str(small_config), "--reference",
            str(grid), "--guide", "10x", "--out", str(out), "--t0", "50", "--inner-steps", "1", "--post-t0", "50",
            "--device", "cpu", "--no-resume",
        ],
        capsys,
    )  # fmt: skip
    assert calls, "the TIFF writer was never reached"
    assert code == 2 and "Traceback" not in stdout + err, err
    assert "No space left on device" in err and len(err.strip().splitlines()) <= 2, err
    assert not out.exists()
    assert not [p for p in _final_names(tmp_path) if p.suffix == ".tif"]


def test_disk_full_is_one_line_not_a_traceback(tmp_path, capsys, monkeypatch, data_dir):
    """The CLI's safety net: an OSError of the environment (ENOSPC) that reaches the top is one line."""
    import zoomldm.cli.evaluate as evaluate

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    image = tmp_path / "a.png"
    Image.new("RGB", (64, 64), (200, 100, 50)).save(image)
    monkeypatch.setattr(evaluate.json, "dumps", full)
    code, stdout, err = run_cli(
        ["eval", "constraint", str(image), str(image), "--json", str(tmp_path / "m.json")], capsys
    )
    assert code == 2 and err.startswith("error: No space left on device (free some disk space"), err
    assert "Traceback" not in stdout + err and not (tmp_path / "m.json").exists()


def test_an_oserror_without_a_path_or_an_environment_errno_is_a_bug_and_propagates(monkeypatch, tmp_path):
    from zoomldm.cli import main

    def bug(*args, **kwargs):
        raise OSError("some internal failure")

    image = tmp_path / "a.png"
    Image.new("RGB", (64, 64)).save(image)
    monkeypatch.setattr("zoomldm.evaluation.constraints.constraint_metrics", bug)
    with pytest.raises(OSError, match="some internal failure"):
        main(["eval", "constraint", str(image), str(image)])


def _unidentified(message: str) -> OSError:
    from PIL import UnidentifiedImageError

    return UnidentifiedImageError(message)


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (
            PermissionError(errno.EACCES, "Permission denied", "/data/out.tif"),
            "/data/out.tif: Permission denied (check",
        ),
        (
            IsADirectoryError(errno.EISDIR, "Is a directory", "/data/out"),
            "/data/out: Is a directory (a folder is in the way",
        ),
        (
            NotADirectoryError(errno.ENOTDIR, "Not a directory", "f.txt/out.tif"),
            "f.txt/out.tif: Not a directory (a part of",
        ),
        (FileExistsError(errno.EEXIST, "File exists", "/data/x"), "/data/x: File exists (remove it"),
        (
            OSError(errno.ENOSPC, "No space left on device", "/data/x.tif"),
            "/data/x.tif: No space left on device (free",
        ),
        (
            _unidentified("cannot identify image file '/d/x.png'"),
            "cannot identify image file '/d/x.png' (not an",
        ),
    ],
)
def test_environment_errors_reaching_the_top_are_one_line(error, expected, capsys, monkeypatch):
    import zoomldm.cli as cli

    def raising(*args, **kwargs):
        raise error

    monkeypatch.setattr(cli, "app", raising)
    code, stdout, err = run_cli(["view", "x"], capsys)
    assert code == 2 and err.startswith(f"error: {expected}"), err
    assert len(err.strip().splitlines()) == 1


@settings(max_examples=200, deadline=None, derandomize=True, database=None)
@given(
    st.one_of(st.none(), st.sampled_from(sorted(errno.errorcode)), st.integers(-5, 200)),
    st.one_of(st.none(), st.text(max_size=30)),
    st.one_of(st.none(), st.text(max_size=30)),
)
def test_environment_error_message_is_one_line_or_none(code, strerror, filename) -> None:
    from zoomldm.cli import environment_error_message

    err = OSError(code, strerror, filename) if code is not None else OSError(strerror or "x")
    named = code is not None and bool(filename)
    message = environment_error_message(err)
    if not named and code not in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EMFILE):
        assert message is None  # no path, no environment condition: a bug, it keeps its traceback
    else:
        assert message is not None and len(message.splitlines()) == 1, message


# -- umask -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("mask", "file_mode", "dir_mode"), [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700)])
def test_outputs_honour_the_umask(
    mask, file_mode, dir_mode, umask, tmp_path, small_checkpoint, small_config, capsys
):
    from zoomldm.io.images import save_png
    from zoomldm.io.tiff import write_tiff

    umask(mask)
    image = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    png = save_png(tmp_path / "p.png", image, {"seed": 0})
    tif = tmp_path / "t.tif"
    write_tiff(tif, image)
    with atomic_path(tmp_path / "r.json") as tmp:
        tmp.write_text("{}")
    staging = tmp_path / "staging"
    (staging / "sub").mkdir(parents=True)
    (staging / "sub" / "w.bin").write_bytes(b"1")
    os.chmod(staging, 0o700)
    os.chmod(staging / "sub" / "w.bin", 0o600)
    moved = replace_dir(staging, tmp_path / "model")
    record = tmp_path / "m.json"
    code, _, err = run_cli(["eval", "constraint", str(png), str(png), "--json", str(record)], capsys)
    assert code == 0, err
    for path in (png, tif, tmp_path / "r.json", moved / "sub" / "w.bin", record):
        assert path.stat().st_mode & 0o777 == file_mode, (path.name, oct(path.stat().st_mode))
    for path in (moved, moved / "sub"):
        assert path.stat().st_mode & 0o777 == dir_mode, (path.name, oct(path.stat().st_mode))


# -- the output check the commands run before any work ----------------------------------------------------
def test_check_output_names_the_option(tmp_path):
    plain = tmp_path / "notes.txt"
    plain.write_text("x")
    with pytest.raises(OutputError, match=r"^--out .*notes.txt/a/b.tif: .*notes.txt is a file, not a folder"):
        check_output(plain / "a" / "b.tif", "--out")
    with pytest.raises(OutputError, match=r"--json .*: is a folder; give a file name"):
        check_output(tmp_path, "--json")
    with pytest.raises(OutputError, match=r"already exists \(pass --overwrite"):
        check_output(plain, "--out", overwrite=False)
    with pytest.raises(OutputError, match=r"is a file, not a folder"):
        check_output(plain, "--out", kind="dir")
    assert check_output(tmp_path / "new" / "x.png", "--out") == tmp_path / "new" / "x.png"
    assert not (tmp_path / "new").exists()  # checks, creates nothing


def test_ctrl_c_exits_130_without_a_traceback(tmp_path, capsys, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    image = tmp_path / "a.png"
    Image.new("RGB", (64, 64)).save(image)
    monkeypatch.setattr("zoomldm.evaluation.constraints.constraint_metrics", interrupted)
    code, stdout, err = run_cli(
        ["eval", "constraint", str(image), str(image), "--json", str(tmp_path / "m.json")], capsys
    )
    assert code == 130 and "Traceback" not in stdout + err
    assert not (tmp_path / "m.json").exists()


# -- the audit, kept: every result file is written through a temporary ------------------------------------
def _direct_writes() -> list[str]:
    """Calls in src/zoomldm that write a file whose target names no temporary (``tmp``…) or staging folder:
    ``X.write_text/write_bytes``, ``open(X, "w…")`` / ``X.open("w…")``, ``save_file(…, X)``, ``np.save(X…)``,
    ``torch.save(…, X)``. Such a write is seen half-done by a reader, and a crash leaves it truncated."""
    import ast

    root = Path(__file__).resolve().parents[1] / "src" / "zoomldm"
    found = []
    for source in sorted(root.rglob("*.py")):
        tree = ast.parse(source.read_text(), filename=str(source))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            func, target = node.func, None
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            mode = next(
                (a for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)), None
            )
            writes = mode is not None and mode.value[:1] in ("w", "a", "x")
            if name in ("write_text", "write_bytes") and isinstance(func, ast.Attribute):
                target = func.value
            elif name == "open" and isinstance(func, ast.Attribute) and writes and node.args[0] is mode:
                target = func.value  # Path.open("w")
            elif name == "open" and isinstance(func, ast.Name) and len(node.args) > 1 and writes:
                target = node.args[0]
            elif name == "save_file" and len(node.args) > 1:
                target = node.args[1]
            elif name == "save" and ast.unparse(func) in ("np.save", "numpy.save") and node.args:
                target = node.args[0]
            elif name == "save" and ast.unparse(func) == "torch.save" and len(node.args) > 1:
                target = node.args[1]
            if target is not None and not any(w in ast.unparse(target).lower() for w in ("tmp", "staging")):
                found.append(f"{source.relative_to(root)}:{node.lineno}: {ast.unparse(node)[:80]}")
    return found


def test_every_result_file_is_written_through_a_temporary():
    assert _direct_writes() == []

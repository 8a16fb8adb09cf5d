"""Crash safety, corrupt inputs, settings checks and scale-out: every way of running gives the same store.

The reference is one uninterrupted single-process run over a folder of three real 512² slides and one
corrupt file. Interrupted-and-resumed, two-rank and two-worker runs must reproduce it bit for bit.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
import zarr

from zoomldm.data.prepare import PrepareSettings, prepare_dataset, settings_path
from zoomldm.data.store import PARTS, open_store
from zoomldm.errors import ZoomLDMError

SETTINGS = dict(domain="pathology", levels=(0, 1), tissue_threshold=0.0, batch_size=8)
SLIDES = ["s1", "s2", "s3"]
BROKEN = "s1x_broken"  # sorts between s1 and s2: with 2 ranks it lands on rank 1


@pytest.fixture(scope="module")
def slides(tmp_path_factory, small_slides):
    folder = tmp_path_factory.mktemp("with_broken")
    for path in small_slides.iterdir():
        shutil.copy(path, folder / path.name)
    (folder / f"{BROKEN}.svs").write_bytes(b"II*\x00" + b"\x17" * 4000)  # a TIFF header, then garbage
    return folder


@pytest.fixture(scope="module")
def reference(tmp_path_factory, slides, tiny_encoder, tiny_vae):
    store = tmp_path_factory.mktemp("ref") / "ref.zarr"
    report = prepare_dataset(
        slides, store, tiny_encoder, tiny_vae, PrepareSettings(**SETTINGS), progress=False
    )
    return store, report


def snapshot(store) -> dict:
    """Every array (except work in progress) and the attributes that describe the data."""
    root = open_store(store)
    arrays = {
        path: np.asarray(node[...])
        for path, node in root.members(max_depth=None)
        if isinstance(node, zarr.Array) and not path.startswith(PARTS)
    }
    attrs = {k: v for k, v in root.attrs.asdict().items() if k not in ("run", "settings")}
    return {"arrays": arrays, "attrs": attrs}


def assert_same_store(a, b, rtol: float = 0.0) -> None:
    """Bitwise equality; with ``rtol``, model outputs (latents, grids) may differ by float rounding."""
    sa, sb = snapshot(a), snapshot(b)
    assert sa["attrs"] == sb["attrs"]
    assert sorted(sa["arrays"]) == sorted(sb["arrays"])
    for path, value in sa["arrays"].items():
        other = sb["arrays"][path]
        assert value.shape == other.shape, path
        if rtol and path.endswith(("/latents", "/ssl")):
            scale = float(np.abs(value.astype(np.float32)).max())
            np.testing.assert_allclose(
                value.astype(np.float32), other.astype(np.float32), atol=rtol * scale, rtol=0
            )
        else:
            assert np.array_equal(value, other), path


def test_reference_run_reports_the_corrupt_file_by_name_and_keeps_going(reference, slides):
    store, report = reference
    status = {s.id: s.status for s in report.slides}
    assert status == {"s1": "committed", BROKEN: "failed", "s2": "committed", "s3": "committed"}
    (failed,) = report.failed
    assert failed.path.endswith(f"{BROKEN}.svs") and f"{BROKEN}.svs" in failed.error
    assert report.totals == {"20x": 12, "10x": 3}
    root = open_store(store)
    assert [str(s) for s in root["slides/id"][:]] == SLIDES  # slide order = sorted ids
    np.testing.assert_array_equal(root["20x"]["slide"][:], np.repeat([0, 1, 2], 4))
    assert root[PARTS][BROKEN].attrs["status"] == "failed"  # the failure stays visible in the store
    written = json.loads(Path(settings_path(store)).read_text())  # settings + report beside the store
    assert written["identity"]["levels"] == ["20x", "10x"]
    assert {s["id"]: s["status"] for s in written["report"]["slides"]}[BROKEN] == "failed"


def test_resume_after_a_crash_gives_the_identical_store(tmp_path, reference, slides, tiny_encoder, tiny_vae):
    store = tmp_path / "crash.zarr"

    def crash_after_first(report):
        raise KeyboardInterrupt  # Ctrl-C right after the first slide is committed

    with pytest.raises(KeyboardInterrupt):
        prepare_dataset(
            slides, store, tiny_encoder, tiny_vae, PrepareSettings(**SETTINGS), progress=False,
            on_slide_done=crash_after_first,
        )  # fmt: skip
    root = open_store(store, "r+")
    assert root.attrs["committed"]["slides"] == 1
    # make the crash worse: a half-written part of s2, samples appended past the commit point, and s1's
    # part left behind after its commit
    part = root[PARTS].create_group("s2", attributes={"status": "writing"})
    part.create_array("junk", data=np.ones(5, np.float32))
    latents = root["20x"]["latents"]
    latents.resize((7, 3, 64, 64))
    latents[4:7] = np.full((3, 3, 64, 64), 9, np.float16)
    root["slides/id"].resize((2,))
    root[PARTS].create_group("s1", attributes={"status": "complete"})  # crash between commit and clean-up

    seen = []
    report = prepare_dataset(
        slides, store, tiny_encoder, tiny_vae, PrepareSettings(**SETTINGS), progress=False,
        on_slide_done=lambda r: seen.append((r.id, r.status)),
    )  # fmt: skip
    assert seen == [(BROKEN, "failed"), ("s2", "committed"), ("s3", "committed")]  # s1 was not redone
    assert {s.id: s.status for s in report.slides}["s1"] == "done"
    assert_same_store(store, reference[0])
    assert sorted(open_store(store)[PARTS].group_keys()) == [BROKEN]  # no leftover work in progress


def test_two_ranks_give_the_identical_store(tmp_path, reference, slides, tiny_encoder, tiny_vae):
    """Rank 1 runs concurrently in a thread; setup is ordered rank 0 first, as accelerate's
    ``main_process_first`` does; rank 0 commits rank 1's parts (and its failure) in slide order."""
    store = tmp_path / "ranks.zarr"
    barrier = threading.Barrier(2, timeout=120)

    def first(rank):
        @contextlib.contextmanager
        def ctx():
            if rank != 0:
                barrier.wait()
            yield
            if rank == 0:
                barrier.wait()

        return ctx

    results, errors = {}, []

    def run(rank):
        try:
            results[rank] = prepare_dataset(
                slides, store, tiny_encoder, tiny_vae, PrepareSettings(**SETTINGS), rank=rank, world_size=2,
                sync=first(rank), progress=False, poll_seconds=0.05,
            )  # fmt: skip
        except BaseException as err:  # re-raised in the main thread
            errors.append(err)

    other = threading.Thread(target=run, args=(1,))
    other.start()
    run(0)
    other.join(timeout=300)
    assert not errors, errors
    assert {s.id: s.status for s in results[1].slides if s.status != "pending"} == {
        BROKEN: "failed",
        "s3": "processed",
    }
    assert {s.id: s.status for s in results[0].slides}[BROKEN] == "failed"
    assert_same_store(store, reference[0])


@pytest.mark.slow
def test_worker_processes_give_the_identical_store(tmp_path, reference, slides, tiny_encoder, tiny_vae):
    store = tmp_path / "workers.zarr"
    report = prepare_dataset(
        slides, store, tiny_encoder, tiny_vae, PrepareSettings(**SETTINGS, workers=2), progress=False
    )
    assert [s.id for s in report.failed] == [BROKEN]
    # a worker runs torch with fewer threads than this process: same samples, same order, model outputs
    # equal up to float32 summation order (then float16 rounding)
    assert_same_store(store, reference[0], rtol=2e-3)


def test_failed_slide_is_retried_and_added_once_fixed(tmp_path, slides, small_slides, tiny_encoder, tiny_vae):
    folder = tmp_path / "slides"
    folder.mkdir()
    shutil.copy(small_slides / "s1.tif", folder / "a.tif")
    (folder / "b.tif").write_bytes(b"not a tiff at all")
    store = tmp_path / "retry.zarr"

    def run():
        return prepare_dataset(
            folder, store, tiny_encoder, tiny_vae, PrepareSettings(**SETTINGS), progress=False
        )

    assert [s.id for s in run().failed] == ["b"]
    assert [s.id for s in run().failed] == ["b"]  # retried, still broken, still reported
    shutil.copy(small_slides / "s2.tif", folder / "b.tif")
    report = run()
    assert {s.id: s.status for s in report.slides} == {"a": "done", "b": "committed"}
    assert report.totals == {"20x": 8, "10x": 2}


def test_other_settings_are_refused_on_an_existing_store(reference, slides, tiny_encoder, tiny_vae):
    store, _ = reference
    other = PrepareSettings(**{**SETTINGS, "levels": (0, 1, 2)})
    with pytest.raises(ZoomLDMError, match=r"identity\.levels"):
        prepare_dataset(slides, store, tiny_encoder, tiny_vae, other, progress=False)


def test_missing_resolution_fails_the_slide_with_the_override_named(
    tmp_path, brca_image, tiny_encoder, tiny_vae
):
    from PIL import Image

    folder = tmp_path / "png"
    folder.mkdir()
    Image.fromarray(brca_image[:512, :512]).save(folder / "crop.png")
    report = prepare_dataset(
        folder, tmp_path / "p.zarr", tiny_encoder, tiny_vae, PrepareSettings(**SETTINGS), progress=False
    )
    (failed,) = report.failed
    assert "--mpp" in failed.error and "crop.png" in failed.error
    report = prepare_dataset(
        folder,
        tmp_path / "p.zarr",
        tiny_encoder,
        tiny_vae,
        PrepareSettings(**SETTINGS, mpp=0.5),
        progress=False,
    )
    assert not report.failed and report.totals == {"20x": 4, "10x": 1}


def test_object_storage_url(small_slides, tiny_encoder, tiny_vae):
    """fsspec URLs work end to end (memory:// stands in for s3:// or gs://)."""
    import fsspec

    from zoomldm.data.dataset import MultiScaleDataset
    from zoomldm.data.extract import SlideSource

    url = "memory://zoomldm-test/store.zarr"
    source = SlideSource("s1", str(small_slides / "s1.tif"))
    report = prepare_dataset(
        [source], url, tiny_encoder, tiny_vae, PrepareSettings(**SETTINGS), progress=False
    )
    assert report.totals == {"20x": 4, "10x": 1}
    ds = MultiScaleDataset(url)
    assert len(ds) == 5 and ds[4]["ssl"].shape == (32, 2, 2)
    with fsspec.open(settings_path(url)) as f:
        assert b'"domain": "pathology"' in f.read()
    fsspec.filesystem("memory").rm("zoomldm-test", recursive=True)

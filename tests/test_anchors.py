"""The benchmark anchors and the loader benchmark run on a tiny synthetic set (speed is not asserted)."""

from __future__ import annotations

import pytest
import torch

from benchmarks import anchors, loader as loader_bench
from facekit.api import Normalization
from facekit.data.index import index_dataset
from facekit.data.loaders import available_backends
from facekit.data.synth import make_synthetic_dataset

HAS_DALI = "dali" in available_backends()
NORM = Normalization((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FACEKIT_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = make_synthetic_dataset(tmp_path_factory.mktemp("anchors") / "ds", identities=2, per_identity=5, size=48, fmt="jpg")
    return root, index_dataset(root, cache=False)


def _epoch(loader):
    images, labels = zip(*loader)
    return torch.cat(images), torch.cat(labels)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["imagefolder", pytest.param("dali_reference", marks=pytest.mark.skipif(not HAS_DALI, reason="needs DALI"))])
def test_each_anchor_yields_every_image_once_per_epoch(tiny, name):
    _, index = tiny
    build = anchors.anchor_loaders(index.paths(), index.labels, size=32, batch_size=4, rotate=15.0, norm=NORM, device="cpu")[name]
    loader = build()
    for _ in range(2):  # the second epoch too: DALI's iterator resets itself, workers persist
        images, labels = _epoch(loader)
        assert images.shape == (10, 3, 32, 32) and images.dtype == torch.float32
        assert sorted(labels.tolist()) == sorted(index.labels.tolist())
        # Normalized with NORM: black (rotation fill) is -2, white +2.
        assert -2.01 <= float(images.min()) and float(images.max()) <= 2.01


def test_anchors_feed_the_engine_training_step(tiny):
    root, index = tiny
    files, labels = anchors.repeated_files(index, 12)
    assert files[10:] == index.paths()[:2]  # repeats from the start
    setup = anchors.training_setup("baseline", index.num_classes, data=root, batch_size=4, input_size=64, device="cpu", finetune=False)
    row = anchors.bench_anchors(setup, files, labels, norm=NORM, rounds=1)
    expected = {"imagefolder_alone", "imagefolder_train"} | ({"dali_reference_alone", "dali_reference_train"} if HAS_DALI else set())
    assert set(row) == expected and all(rate > 0 for rate in row.values())


@pytest.mark.slow
def test_loader_benchmark_leaves_the_docs_alone_unless_asked(tiny, tmp_path, monkeypatch):
    root, _ = tiny
    before = loader_bench.DOC.read_bytes()
    report = loader_bench.main(["--data", str(root), "--out", str(tmp_path / "loader.json"), "--input-size", "32",
                                "--batch-size", "4", "--limit", "8"])  # fmt: skip
    assert loader_bench.DOC.read_bytes() == before
    assert (tmp_path / "loader.json").is_file() and report["loaders"][loader_bench.BASELINE]["vs_baseline"] == 1.0
    assert {"facekit torch", "facekit torch + cache"} <= set(report["loaders"])
    page = tmp_path / "page.md"
    page.write_text(f"# Page\n\n{loader_bench.TABLE_START}\nSTALE TABLE\n{loader_bench.TABLE_END}\n\nafter\n")
    loader_bench.update_doc(report, page)
    text = page.read_text()
    assert "STALE TABLE" not in text and "| facekit torch |" in text and text.endswith("after\n")

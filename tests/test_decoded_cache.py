"""The disk-backed decoded-image cache: written once, shared by processes, damage rebuilt; the cache policy.

The cache stores whatever a decoder produced; these tests use a stand-in decoder (bytes derived
from each file's content) so they run in a second and need no image library.
"""

from __future__ import annotations

import errno
import hashlib
import json
import multiprocessing
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from facekit.config import TrainConfig
from facekit.data import decoded_cache
from facekit.data.decoded_cache import (
    MISSING,
    UNDECODABLE,
    WRITTEN,
    DiskImageCache,
    cache_bytes,
    cache_choice,
    cache_key,
    choose_cache,
)
from facekit.errors import FacekitError, UsageError

SIZE = 16
GB = 10**9


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FACEKIT_CACHE_DIR", str(tmp_path / "cache"))


def make_files(folder: Path, count: int, big: int = 0) -> list[str]:
    """``count`` files with distinct contents; the first ``big`` are 200 KiB (past the hashed head and tail)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"{i:04d}.jpg"
        body = f"image {i}\n".encode() * (20_000 if i < big else 3)
        path.write_bytes(body)
        paths.append(str(path))
    return paths


def fake_decode(path: str) -> np.ndarray:
    """A deterministic stand-in for decoding: (3, SIZE, SIZE) uint8 from the file's bytes."""
    seed = hashlib.sha256(Path(path).read_bytes()).digest()
    return np.random.default_rng(list(seed[:8])).integers(0, 256, (3, SIZE, SIZE), dtype=np.uint8)


def fill(cache: DiskImageCache, files: list[str], order: np.ndarray, batch: int = 7) -> int:
    """Decode the files ``cache`` lacks, in ``order``, a batch at a time; returns how many were decoded."""
    decoded = 0
    for start in range(0, len(order), batch):
        rows = order[start : start + batch]
        rows = rows[cache.state[rows] == MISSING]
        if len(rows):
            cache.put(rows, np.stack([fake_decode(files[r]) for r in rows]))
            decoded += len(rows)
            cache.commit()
    return decoded


def _child_fill(cache_dir: str, files: list[str], seed: int, barrier, results) -> None:
    """Another process (spawned): open the cache, fill it in its own order, report what it decoded."""
    os.environ["FACEKIT_CACHE_DIR"] = cache_dir
    with DiskImageCache.open(files, SIZE, decoder="fake") as cache:
        if barrier is not None:
            barrier.wait()  # both processes fill at the same time
        order = np.random.default_rng(seed).permutation(len(files)) if seed >= 0 else np.arange(len(files))
        results.put(fill(cache, files, order, batch=3))


def run_processes(files: list[str], seeds: list[int]) -> list[int]:
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(len(seeds)) if len(seeds) > 1 else None
    results = context.Queue()
    workers = [
        context.Process(target=_child_fill, args=(os.environ["FACEKIT_CACHE_DIR"], files, seed, barrier, results))
        for seed in seeds
    ]
    for worker in workers:
        worker.start()
    counts = [results.get(timeout=120) for _ in workers]
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0
    return counts


def expected_images(files: list[str]) -> np.ndarray:
    return np.stack([fake_decode(f) for f in files])


# ----------------------------------------------------------------------------- reuse
@pytest.mark.slow
def test_written_once_then_read_by_another_process_without_decoding(tmp_path):
    files = make_files(tmp_path / "data", 20)
    with DiskImageCache.open(files, SIZE, decoder="fake") as cache:
        assert cache.notes == [] and not cache.complete
        assert fill(cache, files, np.arange(len(files))) == 20
        assert cache.complete
        folder = cache.folder
    assert folder.parent == tmp_path / "cache" / "decoded"
    assert (folder / "images.u8").stat().st_size == cache_bytes(20, SIZE) == 20 * 3 * SIZE * SIZE

    assert run_processes(files, [-1]) == [0]  # another process: nothing left to decode
    with DiskImageCache.open(files, SIZE, decoder="fake") as again:
        assert again.folder == folder and again.complete
        assert np.array_equal(again.images, expected_images(files))
        assert (again.state == WRITTEN).all()


def test_entries_are_marked_only_when_committed(tmp_path):
    files = make_files(tmp_path / "data", 6)
    writer = DiskImageCache.open(files, SIZE, decoder="fake")
    writer.put(np.array([4, 1]), np.stack([fake_decode(files[4]), fake_decode(files[1])]))
    reader = DiskImageCache.open(files, SIZE, decoder="fake")
    assert (reader.state == MISSING).all()  # written but not flushed: nobody may rely on it yet
    writer.commit()
    assert reader.state.tolist() == [MISSING, WRITTEN, MISSING, MISSING, WRITTEN, MISSING]
    assert np.array_equal(reader.images[4], fake_decode(files[4]))  # another writer's bytes, through the map
    writer.put_undecodable(np.array([0, 2, 3, 5]))
    assert not reader.complete
    writer.close()
    assert reader.complete and reader.state.tolist() == [UNDECODABLE, WRITTEN, UNDECODABLE, UNDECODABLE, WRITTEN, UNDECODABLE]
    reader.close()


@pytest.mark.slow
def test_two_processes_filling_at_once_give_one_complete_correct_cache(tmp_path):
    files = make_files(tmp_path / "data", 120)
    decoded = run_processes(files, [1, 2])
    assert sum(decoded) >= 120  # together they covered everything; overlaps are decoded twice, harmlessly
    with DiskImageCache.open(files, SIZE, decoder="fake") as cache:
        assert cache.notes == [] and cache.complete
        assert (cache.state == WRITTEN).all()
        assert np.array_equal(cache.images, expected_images(files))


# ----------------------------------------------------------------------------- damage
def _truncate_images(folder: Path) -> None:
    with open(folder / "images.u8", "r+b") as handle:
        handle.truncate(100)


def _garble_manifest(folder: Path) -> None:
    (folder / "manifest.json").write_text('{"format": 1, "key"')


def _other_shape(folder: Path) -> None:
    manifest = json.loads((folder / "manifest.json").read_text())
    (folder / "manifest.json").write_text(json.dumps(manifest | {"input_size": SIZE * 2}))


def _bad_state(folder: Path) -> None:
    with open(folder / "state.u8", "r+b") as handle:
        handle.seek(3)
        handle.write(b"\x07")


def _no_state(folder: Path) -> None:
    (folder / "state.u8").unlink()


@pytest.mark.parametrize(
    "damage, problem",
    [
        (_truncate_images, "images.u8 has 100 bytes"),
        (_garble_manifest, "unreadable manifest.json"),
        (_other_shape, "manifest.json does not match"),
        (_bad_state, "state.u8 holds values that are not entry states"),
        (_no_state, "state.u8 is missing"),
    ],
)
def test_a_damaged_cache_is_detected_and_rebuilt(tmp_path, damage, problem):
    files = make_files(tmp_path / "data", 10)
    with DiskImageCache.open(files, SIZE, decoder="fake") as cache:
        fill(cache, files, np.arange(10))
        folder = cache.folder
    damage(folder)
    with DiskImageCache.open(files, SIZE, decoder="fake") as rebuilt:
        assert len(rebuilt.notes) == 1 and problem in rebuilt.notes[0] and "rebuilding" in rebuilt.notes[0]
        assert not rebuilt.complete and (rebuilt.state == MISSING).all()
        assert fill(rebuilt, files, np.arange(10)) == 10
        assert np.array_equal(rebuilt.images, expected_images(files))
    with DiskImageCache.open(files, SIZE, decoder="fake") as healthy:
        assert healthy.notes == [] and healthy.complete


def test_a_process_still_mapping_the_old_files_survives_a_rebuild(tmp_path):
    files = make_files(tmp_path / "data", 4)
    old = DiskImageCache.open(files, SIZE, decoder="fake")
    fill(old, files, np.arange(4))
    _garble_manifest(old.folder)
    new = DiskImageCache.open(files, SIZE, decoder="fake")
    assert np.array_equal(old.images, expected_images(files))  # its map still reads the old file
    fill(old, files, np.arange(4))  # and its writes go there, not into the new one
    assert (new.state == MISSING).all()
    old.close()
    new.close()


# ----------------------------------------------------------------------------- the key
def test_the_key_follows_content_size_and_decoder_not_paths(tmp_path):
    files = make_files(tmp_path / "data", 5, big=2)
    key = cache_key(files, SIZE, "torch")
    copy = tmp_path / "copy"
    shutil.copytree(tmp_path / "data", copy)  # new paths and modification times, same bytes
    copied = [str(copy / Path(f).name) for f in files]
    assert cache_key(copied, SIZE, "torch") == key
    assert cache_key(files, SIZE + 1, "torch") != key
    assert cache_key(files, SIZE, "dali") != key
    assert cache_key(list(reversed(files)), SIZE, "torch") != key  # rows follow the file order

    body = bytearray(Path(copied[0]).read_bytes())  # 200 KiB: change a byte in the hashed tail
    body[-10] ^= 1
    Path(copied[0]).write_bytes(body)
    assert cache_key(copied, SIZE, "torch") != key


def test_the_content_digest_is_memoized_by_path_size_and_mtime(tmp_path, monkeypatch):
    files = make_files(tmp_path / "data", 5)
    key = cache_key(files, SIZE, "torch")
    reads = []
    real = decoded_cache._file_identity
    monkeypatch.setattr(decoded_cache, "_file_identity", lambda path: reads.append(path) or real(path))
    assert cache_key(files, 2 * SIZE, "torch") != key and reads == []  # memo hit: no file is read
    os.utime(files[3], ns=(1, 1))
    assert cache_key(files, SIZE, "torch") == key and len(reads) == 5  # stat changed: re-read, same content


def test_an_unreadable_file_is_named(tmp_path):
    files = make_files(tmp_path / "data", 3)
    os.unlink(files[1])
    with pytest.raises(FacekitError, match=rf"{files[1]}: cannot read it"):
        cache_key(files, SIZE, "torch")


# ----------------------------------------------------------------------------- space
def test_the_free_space_check_refuses_with_a_clear_message(tmp_path, monkeypatch):
    files = make_files(tmp_path / "data", 8)
    monkeypatch.setattr(decoded_cache, "free_disk_bytes", lambda folder: 10**6)
    with pytest.raises(FacekitError) as caught:
        DiskImageCache.open(files, SIZE, decoder="fake")
    message = str(caught.value)
    assert "the decoded-image cache needs" in message and "1.0 MB free" in message
    assert "FACEKIT_CACHE_DIR" in message and "--cache off" in message
    folder = Path(message.split(" at ")[1].split(" but ")[0])
    assert not (folder / "manifest.json").exists() and not (folder / "images.u8").exists()


def test_a_full_disk_while_filling_stops_caching_with_a_warning(tmp_path, monkeypatch):
    files = make_files(tmp_path / "data", 6)
    cache = DiskImageCache.open(files, SIZE, decoder="fake")
    fill(cache, files, np.arange(2))

    def full(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(decoded_cache.os, "pwrite", full)
    with pytest.warns(RuntimeWarning, match="cannot write \\(the disk is full\\); images it lacks are decoded"):
        cache.put(np.array([2]), fake_decode(files[2])[None])
    cache.put(np.array([3]), fake_decode(files[3])[None])  # no second warning, nothing written
    cache.close()
    assert cache.state.tolist() == [WRITTEN, WRITTEN, MISSING, MISSING, MISSING, MISSING]


# ----------------------------------------------------------------------------- the policy
@pytest.fixture
def memory(monkeypatch):
    """Set the free bytes the policy sees: ``memory(cuda=..., cpu=..., disk=...)``."""

    def set_free(cuda=None, cpu=None, disk=10**15):
        free = {"cuda": cuda, "cpu": cpu}
        monkeypatch.setattr(decoded_cache, "available_memory", lambda device: free[str(device).split(":")[0]])
        monkeypatch.setattr(decoded_cache, "free_disk_bytes", lambda folder: disk)

    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    return set_free


CASIA = 494_414  # images; at 224 px: 74.4 GB


@pytest.mark.parametrize(
    "device, free, auto, memory_choice",
    [
        ("cuda:0", dict(cuda=160 * GB, cpu=10 * GB), "device", "device"),
        ("cuda:0", dict(cuda=80 * GB, cpu=200 * GB), "ram", "ram"),  # fits the GPU, but not within half
        ("cuda:0", dict(cuda=80 * GB, cpu=100 * GB), "disk", None),
        ("cpu", dict(cpu=150 * GB), "ram", "ram"),
        ("cpu", dict(cpu=140 * GB), "disk", None),
        ("cpu", dict(cpu=None), "disk", None),  # memory unknown: never gamble on it
        ("cpu", dict(cpu=10 * GB, disk=70 * GB), "off", None),  # no room anywhere
    ],
)
def test_the_policy_puts_the_images_where_they_fit(memory, device, free, auto, memory_choice):
    memory(**free)
    assert cache_bytes(CASIA, 224) == 74_423_150_592
    assert choose_cache(CASIA, 224, device, "auto") == auto
    assert choose_cache(CASIA, 224, device, "disk") == "disk"
    assert choose_cache(CASIA, 224, device, "off") == "off"
    if memory_choice is not None:
        assert choose_cache(CASIA, 224, device, "memory") == memory_choice
    else:
        with pytest.raises(UsageError, match=r"--cache memory: 494,414 decoded images at 224 px take 74.4 GB.*use --cache disk"):
            choose_cache(CASIA, 224, device, "memory")


def test_the_policy_counts_one_ram_copy_per_local_process(memory, monkeypatch):
    memory(cpu=200 * GB)
    assert choose_cache(CASIA, 224, "cpu", "auto") == "ram"
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert choose_cache(CASIA, 224, "cpu", "auto") == "disk"


def test_the_policy_rejects_unknown_values_and_skips_empty_sets(memory):
    memory(cpu=GB)
    with pytest.raises(UsageError, match="--cache sometimes: choose one of auto, memory, disk, off"):
        TrainConfig(data=Path("faces"), cache="sometimes").validated()  # the run's settings check it, once
    assert choose_cache(0, 224, "cpu", "disk") == "off"
    assert (cache_choice(True), cache_choice(False), cache_choice("Disk")) == ("auto", "off", "disk")  # the old flag


def test_available_memory_reads_this_machine():
    free = decoded_cache.available_memory("cpu")
    assert free is not None and 0 < free < os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


# ----------------------------------------------------------------------------- in the loader
# torch and the loaders are imported inside these tests: the processes spawned above import
# this module, and stay quick without them.
PIXELS = dict(mean=(0.0, 0.0, 0.0), std=(1 / 255, 1 / 255, 1 / 255))


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    from facekit.data.index import index_dataset
    from facekit.data.synth import make_synthetic_dataset

    root = make_synthetic_dataset(tmp_path_factory.mktemp("data") / "ds", identities=4, per_identity=5, size=48, fmt="jpg")
    index = index_dataset(root, cache=False)
    return index.paths(), index.labels


@pytest.fixture
def decodes(monkeypatch):
    """The files the torch loader decodes (one worker-free process, so every decode is seen here)."""
    from facekit.data.loaders import torch_loader

    seen: list[str] = []
    real = torch_loader.decode_resized
    monkeypatch.setattr(torch_loader, "decode_resized", lambda path, size: seen.append(path) or real(path, size))
    return seen


def _loader(files, labels, cache, **kw):
    from facekit.api import Normalization
    from facekit.data.loaders import make_loader

    options = dict(batch_size=6, input_size=32, normalization=Normalization(**PIXELS), train=True, rotate=10.0,
                   seed=4, backend="torch", num_workers=0, cache=cache)  # fmt: skip
    return make_loader(files, labels, **(options | kw))


def _epoch(loader, epoch):
    import torch

    loader.set_epoch(epoch)
    images, labels = zip(*loader)
    return torch.cat(images), torch.cat(labels)


def test_a_loader_fills_the_disk_cache_once_and_a_new_loader_reads_it_without_decoding(faces, decodes):
    import torch

    files, labels = faces
    plain = _loader(files, labels, "off")
    expected = [_epoch(plain, epoch) for epoch in range(3)]
    decodes.clear()

    first = _loader(files, labels, "disk")
    assert first.cache_in_use.startswith("disk, 0.1 MB at ") and str(decoded_cache.cache_dir()) in first.cache_in_use
    for epoch in range(2):
        images, got = _epoch(first, epoch)
        assert torch.equal(got, expected[epoch][1]) and torch.equal(images, expected[epoch][0])
    assert len(decodes) == len(files)  # the first epoch decoded every image, the second none
    first.close()

    second = _loader(files, labels, "disk")
    images, got = _epoch(second, 2)
    assert len(decodes) == len(files)  # a new loader (a new run) decodes nothing
    assert torch.equal(got, expected[2][1]) and torch.equal(images, expected[2][0])
    second.close()


def test_every_split_of_a_data_set_shares_one_disk_cache(faces, decodes):
    files, labels = faces
    train, val = list(range(0, 20, 2)), list(range(1, 20, 2))
    for part in (train, val):
        loader = _loader([files[i] for i in part], labels[part], "disk", cache_files=files)
        _epoch(loader, 0)
        _epoch(loader, 1)
        loader.close()
    assert sorted(decodes) == sorted(files)  # each image once, by the split that reads it
    whole = _loader(files, labels, "disk")
    _epoch(whole, 0)
    whole.close()
    assert len(decodes) == len(files)


def test_a_file_that_does_not_decode_stays_skipped_in_later_runs(faces, decodes, tmp_path):
    files, labels = faces
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    some, some_labels = [*files[:7], str(broken)], [*labels[:7], 0]
    first = _loader(some, some_labels, "disk")
    with pytest.warns(RuntimeWarning, match="broken.jpg"):
        assert len(_epoch(first, 0)[1]) == 7
    first.close()
    again = _loader(some, some_labels, "disk")
    decodes.clear()
    assert len(_epoch(again, 1)[1]) == 7 and decodes == []  # read from the cache, the broken file skipped
    assert again._store.state.tolist() == [WRITTEN] * 7 + [UNDECODABLE]
    again.close()


@pytest.mark.parametrize("cache, kind", [("disk", "disk, "), ("auto", "ram, ")])
def test_a_host_cache_feeds_a_gpu(faces, monkeypatch, cache, kind):
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    monkeypatch.setattr(decoded_cache, "available_memory", lambda device: 0 if "cuda" in str(device) else 10**12)
    files, labels = faces
    expected = _epoch(_loader(files, labels, "off", device="cuda"), 1)
    loader = _loader(files, labels, cache, device="cuda")
    assert loader.cache_in_use.startswith(kind)
    for _ in range(2):  # fills the cache, then gathers from it into pinned memory and copies over
        images, got = _epoch(loader, 1)
        assert images.device.type == "cuda" and torch.equal(got, expected[1])
        assert (images - expected[0]).abs().max() < 1e-3
    loader.close()


@pytest.mark.parametrize("cache, kind", [("auto", "ram, "), (True, "ram, "), ("memory", "ram, "), (False, "off"), ("off", "off")])
def test_the_loader_says_which_cache_it_uses(faces, cache, kind):
    files, labels = faces
    loader = _loader(files, labels, cache)
    assert loader.cache_in_use.startswith(kind)
    loader.close()


@pytest.mark.slow
def test_a_run_records_its_cache(synthetic_dataset, tmp_path):
    from facekit.engine import SilentProgress, Trainer, TrainConfig

    class Messages(SilentProgress):
        def __init__(self):
            self.lines = []

        def message(self, text):
            self.lines.append(text)

    progress = Messages()
    config = TrainConfig(data=synthetic_dataset, out=tmp_path / "run", input_size=64, epochs=2, batch_size=8, rotate=0.0,
                         loader="torch", workers=0, test_size=0.25, val_size=0.25, seed=3, cache="disk")  # fmt: skip
    run_dir = Trainer(config, progress).train()
    history = json.loads((run_dir / "history.json").read_text())
    used = {row["cache"] for row in history}
    assert len(used) == 1 and used.pop() == f"disk, 0.4 MB at {next((tmp_path / 'cache' / 'decoded').glob('*/images.u8')).parent}"
    assert f"decoded-image cache: {history[0]['cache']}" in progress.lines
    assert json.loads((run_dir / "config.json").read_text())["cache"] == "disk"


@pytest.mark.parametrize(
    "args, cache",
    [(["--cache"], "auto"), (["--cache", "--epochs", "1"], "auto"), (["--cache", "disk"], "disk"),
     (["--cache=memory"], "memory"), (["--no-cache"], "off"), ([], "off")],
)  # fmt: skip
def test_the_cache_option(monkeypatch, args, cache):
    from typer.testing import CliRunner

    from facekit import engine
    from facekit.cli import app

    seen = []

    def stop(config, progress=None):
        seen.append(config.cache)
        raise UsageError("stopped here")

    monkeypatch.setattr(engine, "Trainer", stop)
    result = CliRunner().invoke(app, ["train", "--data", "faces", *args])
    assert result.exit_code == 2 and "stopped here" in result.output and seen == [cache]


def test_an_unknown_cache_value_is_one_usage_line(synthetic_dataset):
    from typer.testing import CliRunner

    from facekit.cli import app

    result = CliRunner().invoke(app, ["train", "--data", str(synthetic_dataset), "--cache", "sometimes"])
    assert result.exit_code == 2 and "--cache sometimes: choose one of auto, memory, disk, off" in result.output


# ----------------------------------------------------------------------------- damage on disk, links
def test_flipped_bytes_in_an_entry_are_found_and_the_entry_rebuilt(tmp_path):
    files = make_files(tmp_path / "data", 6)
    with DiskImageCache.open(files, SIZE, decoder="fake") as cache:
        fill(cache, files, np.arange(6))
        folder = cache.folder
    row_bytes = 3 * SIZE * SIZE
    with open(folder / "images.u8", "r+b") as handle:  # one flipped bit in entry 4
        handle.seek(4 * row_bytes + 17)
        byte = handle.read(1)[0]
        handle.seek(4 * row_bytes + 17)
        handle.write(bytes([byte ^ 0x10]))
    decoded_cache._VERIFIED.clear()  # as a new process sees it
    with DiskImageCache.open(files, SIZE, decoder="fake") as cache:
        assert cache.verify(np.arange(6)).tolist() == [4]
        assert cache.state[4] == MISSING and (cache.state[[0, 1, 2, 3, 5]] == WRITTEN).all()
        assert fill(cache, files, np.arange(6)) == 1  # only the damaged entry is decoded again
        assert np.array_equal(cache.images, expected_images(files))
    decoded_cache._VERIFIED.clear()
    with DiskImageCache.open(files, SIZE, decoder="fake") as cache:
        assert len(cache.verify(np.arange(6))) == 0 and cache.complete


def test_a_loader_rebuilds_a_damaged_entry_and_says_so(faces, decodes):
    import torch

    files, labels = faces
    expected = _epoch(_loader(files, labels, "off"), 1)
    first = _loader(files, labels, "disk")
    _epoch(first, 0)
    folder = first._store.cache.folder
    first.close()
    row_bytes = 3 * 32 * 32
    with open(folder / "images.u8", "r+b") as handle:
        handle.seek(2 * row_bytes)
        handle.write(b"\xff" * 64)
    decoded_cache._VERIFIED.clear()
    decodes.clear()
    second = _loader(files, labels, "disk")
    with pytest.warns(RuntimeWarning, match="1 entries fail their checksum .*decoding those images again"):
        images, got = _epoch(second, 1)
    second.close()
    assert torch.equal(images, expected[0]) and torch.equal(got, expected[1])  # the damaged bytes were never used
    assert len(decodes) == len(files)  # one epoch decoded again, writing only the damaged entry


@pytest.mark.parametrize("name", ["images.u8", "state.u8", "checks.u32", "manifest.json", ".lock", "FOLDER"])
def test_a_cache_file_or_folder_that_is_a_link_is_never_written_through(tmp_path, name):
    files = make_files(tmp_path / "data", 5)
    with DiskImageCache.open(files, SIZE, decoder="fake") as cache:
        folder = cache.folder
        size = (folder / name).stat().st_size if name != "FOLDER" else 0
    victim = tmp_path / "victim"
    if name == "FOLDER":
        victim.mkdir()
        (victim / "precious.txt").write_text("keep me")
        shutil.rmtree(folder)
        folder.symlink_to(victim)
    else:
        victim.write_bytes(b"\x01" * size)  # the very size the cache expects
        (folder / name).unlink()
        (folder / name).symlink_to(victim)
    before = {p.name: p.read_bytes() for p in victim.iterdir()} if victim.is_dir() else victim.read_bytes()
    with DiskImageCache.open(files, SIZE, decoder="fake") as cache:
        if name not in (".lock",):
            assert any("symbolic link" in note for note in cache.notes), cache.notes
        fill(cache, files, np.arange(5))
        assert np.array_equal(cache.images, expected_images(files))
    after = {p.name: p.read_bytes() for p in victim.iterdir()} if victim.is_dir() else victim.read_bytes()
    assert after == before
    assert not folder.is_symlink() and not any(p.is_symlink() for p in folder.iterdir())

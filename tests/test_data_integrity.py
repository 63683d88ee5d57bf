"""No silently wrong numbers from the data: each image is read once, as 8-bit RGB, the same by
every decoder; what is left out or suspicious is said, by file name.

- links: loops, links back into the set, aliases of an identity, file links, broken links;
- facekit's own folders in the data (run folders, its cache) are no identity;
- image modes: 16-bit, palette, alpha, grey + alpha, CMYK, 1-bit, EXIF orientation;
- content that does not match its name (a GIF named .png), odd PGM depths;
- identical images across identities or split parts (leakage);
- `predict` on a folder reads what the index would (no `._x.png`, no dot-folders).
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from facekit.data.check import check_dataset
from facekit.data.index import image_files_under, index_dataset, inspect_image
from facekit.data.loaders import available_backends
from facekit.data.loaders._common import read_rgb
from facekit.data.stats import channel_sums, normalization_from_sums
from facekit.data.synth import make_synthetic_dataset

HAS_DALI = "dali" in available_backends()
needs_dali = pytest.mark.skipif(not HAS_DALI, reason="NVIDIA DALI is not installed or does not work here")


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FACEKIT_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture
def faces(tmp_path) -> Path:
    return make_synthetic_dataset(tmp_path / "faces", identities=3, per_identity=4, size=32)


def write_png16(path: Path, pixels: np.ndarray) -> None:
    """A 16-bit PNG (grey for 2-D ``pixels``, RGB for 3-D), written by hand: PIL cannot write 16-bit RGB."""
    values = np.asarray(pixels, dtype=">u2")
    height, width = values.shape[:2]
    raw = b"".join(b"\x00" + values[y].tobytes() for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 16, 2 if values.ndim == 3 else 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


# ----------------------------------------------------------------------------------- links
def test_a_symlink_loop_is_no_identity_and_no_image_counts_twice(faces):
    plain = index_dataset(faces, cache=False)
    (faces / "loop").symlink_to(".")  # ln -s . faces/loop
    (faces / "person_00" / "up").symlink_to("..")
    (faces / "alias").symlink_to(faces / "person_01")  # sorts before person_01: must not take its images
    (faces / "person_02" / "twin.png").symlink_to(faces / "person_02" / "000.png")
    (faces / "person_02" / "gone.png").symlink_to(faces / "nowhere.png")
    index = index_dataset(faces, cache=False)
    assert index.classes == plain.classes and index.files == plain.files
    reasons = {s.path: s.reason for s in index.skipped}
    assert "a loop" in reasons["loop/"] and "a loop" in reasons["person_00/up/"]
    assert "person_01/ inside the data folder" in reasons["alias/"]
    assert "the same file as person_02/000.png" in reasons["person_02/twin.png"]
    assert "broken symbolic link" in reasons["person_02/gone.png"]
    again = index_dataset(faces)  # from the cache: the same, and it still says what was skipped
    assert again.files == plain.files and {s.path for s in again.skipped} == set(reasons)


def test_a_link_to_a_folder_outside_the_set_is_followed_once(faces, tmp_path):
    elsewhere = make_synthetic_dataset(tmp_path / "elsewhere", identities=1, per_identity=3, size=32, seed=5)
    (faces / "zed").symlink_to(elsewhere / "person_00")
    (faces / "zed2").symlink_to(elsewhere / "person_00")  # the same folder again
    index = index_dataset(faces, cache=False)
    assert index.counts[index.classes.index("zed")] == 3 and "zed2" not in index.classes
    assert any(s.path == "zed2/" and "already indexed as zed/" in s.reason for s in index.skipped)


def test_what_facekit_wrote_into_the_data_folder_is_no_identity(faces, facekit_run, monkeypatch):
    import shutil

    plain = index_dataset(faces, cache=False)
    shutil.copytree(facekit_run, faces / "runs" / "20261204-101500-baseline-plain")
    (faces / "runs" / "20261204-101500-baseline-plain" / "plot.png").write_bytes((faces / "person_00" / "000.png").read_bytes())
    shutil.copytree(facekit_run, faces / "person_01" / "my-run")  # a run folder nested in an identity
    (faces / "person_01" / "my-run" / "kernels.png").write_bytes((faces / "person_00" / "001.png").read_bytes())
    (faces / "report").mkdir()  # `facekit report RUN --out faces/report`
    for name in ("report.md", "loss_curves.png", "confusion_matrix.png"):
        (faces / "report" / name).write_bytes((faces / "person_00" / "002.png").read_bytes())
    monkeypatch.setenv("FACEKIT_CACHE_DIR", str(faces / "cache"))
    (faces / "cache" / "stats").mkdir(parents=True)
    index = index_dataset(faces)
    assert index.classes == plain.classes and index.files == plain.files
    reasons = {s.path: s.reason for s in index.skipped}
    assert "run folder" in reasons["runs/20261204-101500-baseline-plain/"]
    assert "run folder" in reasons["person_01/my-run/"] and "cache folder" in reasons["cache/"]
    assert "report files" in reasons["report/"]
    assert "no problems found" not in _check_output(faces)


def _check_output(root: Path) -> str:
    from facekit.cli.data_cmd import app

    result = CliRunner().invoke(app, ["check", str(root)])
    assert result.exit_code == 0, result.output
    return result.output


def test_predict_on_a_folder_reads_only_what_the_index_would(faces):
    (faces / "person_00" / "._000.png").write_bytes(b"\x00\x05\x16\x07AppleDouble")  # macOS metadata
    (faces / ".thumbs").mkdir()
    (faces / ".thumbs" / "a.png").write_bytes((faces / "person_00" / "000.png").read_bytes())
    (faces / "loop").symlink_to(".")
    files, skipped = image_files_under(faces)
    index = index_dataset(faces, cache=False)
    assert [f.relative_to(faces.resolve()).as_posix() for f in files] == sorted(index.files)
    assert any(s.path == "loop/" for s in skipped)


def test_predict_ignores_hidden_files_end_to_end(facekit_run, faces):
    from facekit.predict import predict

    (faces / "person_00" / "._000.png").write_bytes(b"\x00\x05\x16\x07AppleDouble")
    (faces / ".cache").mkdir()
    (faces / ".cache" / "junk.png").write_text("not an image")
    results = predict(facekit_run, [faces / "person_00"], top_k=1, device="cpu")
    assert [Path(r["file"]).name for r in results] == ["000.png", "001.png", "002.png", "003.png"]


# ----------------------------------------------------------------------------------- image modes
def _modes(folder: Path) -> dict[str, np.ndarray]:
    """The same 40 x 48 picture in many modes; returns each file's expected 8-bit RGB pixels."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
    rgb[:, :20] = (200, 120, 40)
    grey = rgb[..., 0]
    write_png16(folder / "rgb16.png", rgb.astype(np.uint16) * 257)
    write_png16(folder / "grey16.png", grey.astype(np.uint16) * 257)
    Image.fromarray(grey.astype(np.uint16) * 257).save(folder / "grey16.pgm")
    Image.fromarray(rgb).convert("RGBA").save(folder / "rgba.png")
    Image.fromarray(grey).convert("LA").save(folder / "grey_alpha.png")
    palette = Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE)
    palette.save(folder / "palette.png")
    Image.fromarray(rgb).convert("CMYK").save(folder / "cmyk.jpg", quality=100)
    Image.fromarray(grey > 128).save(folder / "bits.png")
    upright = np.zeros((40, 48, 3), np.uint8)
    upright[:, -8:] = 255  # after turning, a white band on the right
    turned = Image.fromarray(np.rot90(upright, 1).copy())  # stored on its side, EXIF says turn it back
    exif = turned.getexif()
    exif[0x0112] = 6
    turned.save(folder / "exif.png", exif=exif)
    with Image.open(folder / "cmyk.jpg") as cmyk:
        cmyk_rgb = np.asarray(cmyk.convert("RGB"))
    return {
        "rgb16.png": rgb, "grey16.png": np.repeat(grey[..., None], 3, 2), "grey16.pgm": np.repeat(grey[..., None], 3, 2),
        "rgba.png": rgb, "grey_alpha.png": np.repeat(grey[..., None], 3, 2),
        "palette.png": np.asarray(palette.convert("RGB")), "cmyk.jpg": cmyk_rgb,
        "bits.png": np.repeat(np.where(grey > 128, 255, 0).astype(np.uint8)[..., None], 3, 2),
        "exif.png": np.rot90(np.rot90(upright, 1), -1),
    }  # fmt: skip


def test_every_mode_is_read_as_its_8bit_rgb_pixels(tmp_path):
    expected = _modes(tmp_path / "modes")
    for name, pixels in expected.items():
        got = read_rgb(tmp_path / "modes" / name).permute(1, 2, 0).numpy()
        assert got.shape == pixels.shape, name
        assert np.abs(got.astype(int) - pixels.astype(int)).max() <= 1, name
        assert inspect_image(tmp_path / "modes" / name).problem is None, name


def test_16bit_images_give_the_normalization_of_their_8bit_versions(tmp_path):
    eight = make_synthetic_dataset(tmp_path / "eight", identities=2, per_identity=3, size=32)
    sixteen = []
    for path in sorted(eight.rglob("*.png")):
        pixels = np.asarray(Image.open(path).convert("RGB")).astype(np.uint16) * 257
        target = tmp_path / "sixteen" / path.relative_to(eight)
        target.parent.mkdir(parents=True, exist_ok=True)
        write_png16(target, pixels)
        sixteen.append(target)
    paths8 = sorted(eight.rglob("*.png"))
    norm8 = normalization_from_sums(channel_sums(paths8, 32), range(len(paths8)), 32 * 32)
    norm16 = normalization_from_sums(channel_sums(sixteen, 32), range(len(sixteen)), 32 * 32)
    assert all(0.05 < m < 0.95 for m in norm16.mean) and all(0.01 < s < 0.5 for s in norm16.std)
    assert np.allclose(norm8.mean, norm16.mean, atol=1e-6) and np.allclose(norm8.std, norm16.std, atol=1e-6)


@needs_dali
def test_dali_and_torch_read_every_mode_alike(tmp_path):
    from facekit.api import Normalization
    from facekit.data.loaders import make_loader

    expected = _modes(tmp_path / "modes")
    files = [str(tmp_path / "modes" / name) for name in expected]
    pixels = Normalization((0.0, 0.0, 0.0), (1 / 255, 1 / 255, 1 / 255))
    batches = {}
    for backend in ("dali", "torch"):
        loader = make_loader(files, [0] * len(files), batch_size=4, input_size=32, normalization=pixels,
                             train=False, rotate=0.0, backend=backend, num_workers=1)  # fmt: skip
        batches[backend] = torch.cat([images for images, _ in loader])
        loader.close()
    diff = (batches["dali"] - batches["torch"]).abs()
    assert diff.mean() <= 0.5 and diff.max() <= 16, (diff.mean(), diff.amax(dim=(1, 2, 3)))


def test_a_file_whose_content_does_not_match_its_name(faces):
    rgb = np.asarray(Image.open(faces / "person_00" / "000.png").convert("RGB"))
    Image.fromarray(rgb).save(faces / "person_00" / "gif.png", format="GIF")
    Image.fromarray(rgb).save(faces / "person_00" / "webp.jpg", format="WEBP")
    Image.fromarray(rgb).save(faces / "person_01" / "jpeg.png", format="JPEG")
    (faces / "person_02" / "deep.pgm").write_bytes(b"P5\n4 4\n1023\n" + bytes(32))
    report = check_dataset(faces)
    bad = {b.path: b.reason for b in report.bad}
    assert "GIF image named .png: convert it to PNG or JPEG" in bad["person_00/gif.png"]
    assert "WEBP image named .jpg" in bad["person_00/webp.jpg"]
    assert "1023-level PGM/PPM" in bad["person_02/deep.pgm"]
    notes = {n.path: n.reason for n in report.notes}
    assert "JPEG data in a .png file" in notes["person_01/jpeg.png"]
    assert "person_01/jpeg.png" in index_dataset(faces).files  # used: every decoder reads it by content
    output = _check_output(faces)
    assert "gif.png" in output and "no problems found" not in output
    import json

    from facekit.cli.data_cmd import app

    reported = json.loads(CliRunner().invoke(app, ["check", str(faces), "--json"]).stdout)
    assert {"path": "person_01/jpeg.png", "reason": notes["person_01/jpeg.png"]} in reported["notes"]
    assert reported["leaks"] == [] and reported["skipped"] == []


# ----------------------------------------------------------------------------------- leakage
def test_identical_images_across_identities_and_split_parts_are_named(faces):
    import shutil

    shutil.copy(faces / "person_00" / "000.png", faces / "person_01" / "copy.png")
    Image.open(faces / "person_02" / "001.png").save(faces / "person_02" / "again.bmp")  # same pixels, other bytes
    report = check_dataset(faces, test_size=0.3, val_size=0.3)
    found = {tuple(leak["files"]): leak["where"] for leak in report.leaks}
    assert found[("person_00/000.png", "person_01/copy.png")] == "2 identities (person_00, person_01)"
    group = ("person_02/001.png", "person_02/again.bmp")
    if group in found:  # where the split put the two copies decides whether this one leaks
        assert "parts" in found[group]
    assert "identical files" in _check_output(faces)


def test_a_duplicate_split_across_test_and_training_is_a_leak():
    from types import SimpleNamespace

    from facekit.data.leakage import find_leaks

    files = ["a/1.png", "a/2.png", "a/3.png", "b/1.png"]
    labels = np.array([0, 0, 0, 1])
    hashes = dict(zip(files, ["x", "x", "y", "z"]))
    fold = SimpleNamespace(train=np.array([0, 2]), val=np.array([3]))
    leaks = find_leaks(files, labels, ["a", "b"], hashes, SimpleNamespace(test=np.array([1]), folds=[fold]))
    assert [(leak.files, leak.where) for leak in leaks] == [(["a/1.png", "a/2.png"], "the test and training parts of the split")]
    fold = SimpleNamespace(train=np.array([0, 2]), val=np.array([1]))
    leaks = find_leaks(files, labels, ["a", "b"], hashes, SimpleNamespace(test=np.array([3]), folds=[fold]))
    assert leaks[0].where == "the training and validation parts"
    fold = SimpleNamespace(train=np.array([0, 1]), val=np.array([2]))
    assert find_leaks(files, labels, ["a", "b"], hashes, SimpleNamespace(test=np.array([3]), folds=[fold])) == []


def test_a_fifo_named_like_an_image_is_left_out_not_read_forever(faces):
    import os

    os.mkfifo(faces / "person_00" / "pipe.png")
    index = index_dataset(faces, cache=False)
    assert "person_00/pipe.png" not in index.files
    assert any(s.path == "person_00/pipe.png" and "not a regular file" in s.reason for s in index.skipped)


@needs_dali
def test_a_file_name_that_is_not_utf8_is_read_by_both_loaders(faces):
    import os

    from facekit.api import Normalization
    from facekit.data.loaders import make_loader

    odd = os.fsdecode(bytes(faces / "person_00") + b"/caf\xe9.png")  # Latin-1 bytes: not UTF-8
    Path(odd).write_bytes((faces / "person_00" / "000.png").read_bytes())
    index = index_dataset(faces, cache=False)
    assert any(name.endswith(os.fsdecode(b"caf\xe9.png")) for name in index.files)
    pixels = Normalization((0.0, 0.0, 0.0), (1 / 255, 1 / 255, 1 / 255))
    batches = []
    for backend in ("dali", "torch"):
        loader = make_loader([odd], [0], batch_size=1, input_size=32, normalization=pixels, train=False, rotate=0.0,
                             backend=backend, num_workers=1)  # fmt: skip
        batches.append(torch.cat([images for images, _ in loader]))
        loader.close()
    assert (batches[0] - batches[1]).abs().mean() <= 0.5

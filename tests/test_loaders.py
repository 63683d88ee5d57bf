"""Loaders: DALI (CPU here) and torchvision give the same batches; epochs, rotation, cache, bad files.

Parity tolerance (rotation off): both decode identically; resizing differs slightly (DALI's and
torchvision's antialiasing filters are not the same code), so we allow a mean absolute difference
of 0.5 grey levels and at most 16 grey levels at any pixel (reached only on sharp edges when
shrinking about 4x). See docs/data.md.
"""

from __future__ import annotations

import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from facekit.api import Normalization
from facekit.data.augment import AugmentPipeline
from facekit.data.index import index_dataset
from facekit.data.loaders import LoaderOptions, available_backends, make_loader
from facekit.data.loaders import _native
from facekit.data.loaders.options import available_cores, default_workers
from facekit.data.loaders._common import RotateNormalize, plan_epoch
from facekit.data.stats import channel_sums, normalization_from_sums
from facekit.data.synth import make_synthetic_dataset
from facekit.errors import UsageError
from facekit.plugins import augmentations

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
LFW_TINY = SHARED / "lfw_tiny20"
ORL = SHARED / "orl_att_faces"
HAS_DALI = "dali" in available_backends()
needs_dali = pytest.mark.skipif(not HAS_DALI, reason="NVIDIA DALI is not installed or does not work here")
PIXELS = Normalization((0.0, 0.0, 0.0), (1 / 255, 1 / 255, 1 / 255))  # output in grey levels
MEAN_TOLERANCE, MAX_TOLERANCE = 0.5, 16.0
ROTATE_15 = AugmentPipeline.from_args(["rotate:15"], augmentations())


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FACEKIT_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = make_synthetic_dataset(tmp_path_factory.mktemp("data") / "ds", identities=4, per_identity=5, size=48, fmt="jpg")
    index = index_dataset(root, cache=False)
    return index.paths(), index.labels


def _epoch(loader):
    images, labels = zip(*loader)
    return torch.cat(images), torch.cat(labels)


def _loader(files, labels, backend, **kw):
    options = dict(batch_size=6, input_size=32, normalization=PIXELS, train=False, rotate=0.0, backend=backend)
    return make_loader(files, labels, **(options | kw))


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["torch", pytest.param("dali", marks=needs_dali)])
def test_validation_sees_every_image_once_with_a_partial_last_batch(synth, backend):
    files, labels = synth
    loader = _loader(files, labels, backend)
    assert loader.backend == backend and loader.num_samples == 20 and len(loader) == 4
    for _ in range(2):
        batches = list(loader)
        assert [len(b[1]) for b in batches] == [6, 6, 6, 2]
        images, got = _epoch(batches)
        assert images.shape == (20, 3, 32, 32) and images.dtype == torch.float32 and got.dtype == torch.int64
        assert got.tolist() == labels.tolist()
    loader.close()


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["torch", pytest.param("dali", marks=needs_dali)])
def test_training_reshuffles_by_seed_and_epoch(synth, backend):
    files, _ = synth
    ids = np.arange(len(files))  # the label is the file's position: shows the order
    loader = _loader(files, ids, backend, train=True, seed=4)
    first, second = _epoch(loader)[1], _epoch(loader)[1]
    assert sorted(first.tolist()) == list(range(20)) and first.tolist() != second.tolist()
    loader.set_epoch(1)
    assert _epoch(loader)[1].tolist() == second.tolist()
    assert first.tolist() == plan_epoch(20, epoch=0, seed=4, train=True, augment=AugmentPipeline(), shard_id=0, num_shards=1).indices.tolist()


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["torch", pytest.param("dali", marks=needs_dali)])
def test_shards_split_an_epoch(synth, backend):
    files, labels = synth
    seen = [_epoch(_loader(files, np.arange(20), backend, shard_id=s, num_shards=3))[1] for s in range(3)]
    assert sorted(torch.cat(seen).tolist()) == list(range(20))
    train = [_loader(files, labels, backend, train=True, shard_id=s, num_shards=3) for s in range(3)]
    assert {t.num_samples for t in train} == {7}


@pytest.mark.slow
@needs_dali
@pytest.mark.parametrize("rotate", [0.0, 15.0])
def test_dali_and_torch_agree(synth, rotate):
    files, labels = synth
    kw = dict(train=rotate > 0, rotate=rotate, seed=2)
    dali = _epoch(_loader(files, labels, "dali", **kw))
    torch_ = _epoch(_loader(files, labels, "torch", **kw))
    assert torch.equal(dali[1], torch_[1])
    diff = (dali[0] - torch_[0]).abs()
    assert diff.mean() <= MEAN_TOLERANCE and diff.max() <= MAX_TOLERANCE * (1 if rotate == 0 else 2)


@pytest.mark.skipif(not (HAS_DALI and ORL.is_dir()), reason="needs DALI and the shared orl_att_faces set")
def test_grey_pgm_parity_on_orl():
    files = sorted(str(p) for p in ORL.glob("s1*/*.pgm"))[:12]
    dali = _epoch(_loader(files, [0] * 12, "dali", input_size=48))[0]
    torch_ = _epoch(_loader(files, [0] * 12, "torch", input_size=48))[0]
    assert torch.equal(dali[:, 0], dali[:, 1])  # grey became RGB
    diff = (dali - torch_).abs()
    assert diff.mean() <= MEAN_TOLERANCE and diff.max() <= MAX_TOLERANCE


def _bar_images(folder: Path, count: int) -> list[str]:
    folder.mkdir()
    paths = []
    for i in range(count):
        pixels = np.zeros((64, 64, 3), np.uint8)
        pixels[29:35, 6:58] = 255  # a horizontal bright bar through the centre
        paths.append(str(folder / f"bar{i}.png"))
        Image.fromarray(pixels).save(paths[-1])
    return paths


def _orientation(image: torch.Tensor) -> tuple[float, float, float]:
    """Angle (degrees, counter-clockwise on screen) and centroid of the bright pixels."""
    weight = image.mean(0).clamp(min=0).numpy()
    h, w = weight.shape
    ys, xs = np.mgrid[0:h, 0:w]
    xs, up = xs - (w - 1) / 2, (h - 1) / 2 - ys
    total = weight.sum()
    cx, cy = (weight * xs).sum() / total, (weight * up).sum() / total
    c20, c02 = (weight * (xs - cx) ** 2).sum(), (weight * (up - cy) ** 2).sum()
    c11 = (weight * (xs - cx) * (up - cy)).sum()
    return float(np.degrees(0.5 * np.arctan2(2 * c11, c20 - c02))), float(cx), float(cy)


@pytest.mark.slow
@pytest.mark.parametrize(
    "backend,cache", [("torch", False), ("torch", True), pytest.param("dali", False, marks=needs_dali)]
)
def test_rotation_is_about_the_centre_by_an_angle_in_range(tmp_path, backend, cache):
    files = _bar_images(tmp_path / "bars", 10)
    loader = make_loader(
        files, list(range(10)), batch_size=5, input_size=64, normalization=PIXELS, train=True,
        rotate=15.0, seed=9, backend=backend, cache=cache,
    )
    for epoch in range(2):
        plan = plan_epoch(10, epoch=epoch, seed=9, train=True, augment=ROTATE_15, shard_id=0, num_shards=1)
        images, positions = _epoch(loader)
        assert positions.tolist() == plan.indices.tolist()
        for image, expected in zip(images / 255, plan.samples[0][:, 0]):
            angle, cx, cy = _orientation(image)
            assert -15 <= expected <= 15
            assert abs(angle - expected) < 0.5 and abs(cx) < 0.3 and abs(cy) < 0.3


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["torch", pytest.param("dali", marks=needs_dali)])
def test_cache_gives_the_same_batches(synth, backend):
    files, labels = synth
    plain = _epoch(_loader(files, labels, backend))
    cached_loader = _loader(files, labels, backend, cache=True)
    for _ in range(2):  # the first epoch fills the cache, the second reads it
        cached = _epoch(cached_loader)
        assert torch.equal(cached[1], plain[1])
        assert (cached[0] - plain[0]).abs().max() < 1e-3


def test_a_file_that_breaks_mid_epoch_is_skipped_with_a_warning(synth, tmp_path):
    files, labels = synth
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    loader = _loader([*files[:5], str(broken)], [*labels[:5], 0], "torch")
    with pytest.warns(RuntimeWarning, match="broken.jpg"):
        images, got = _epoch(loader)
    assert len(got) == 5


def test_normalization_equals_numpy_over_the_training_images(synth):
    files, _ = synth
    sums = channel_sums(files, 32)
    train = np.array([0, 3, 4, 9, 15, 19])
    norm = normalization_from_sums(sums, train, 32 * 32)
    from facekit.data.loaders._common import decode_resized

    pixels = np.stack([decode_resized(files[i], 32).numpy() for i in train]).astype(np.float64) / 255
    assert np.allclose(norm.mean, pixels.mean(axis=(0, 2, 3)), atol=1e-9)
    assert np.allclose(norm.std, pixels.std(axis=(0, 2, 3)), atol=1e-9)
    # And the loader applies it: the training images come out with mean 0, std 1 per channel.
    out = _epoch(_loader([files[i] for i in train], [0] * 6, "torch", input_size=32, normalization=norm))[0]
    assert torch.allclose(out.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-4)
    assert torch.allclose(out.std(dim=(0, 2, 3), unbiased=False), torch.ones(3), atol=1e-4)


def test_unknown_backend_and_bad_options_are_usage_errors_of_the_run_settings(synth, tmp_path):
    """The loader receives checked values: a bad --loader or --rotate is refused once, with the run's settings."""
    from facekit.config import TrainConfig

    with pytest.raises(UsageError, match="auto, dali, torch"):
        TrainConfig(data=tmp_path, loader="opencv").validated()
    with pytest.raises(UsageError, match="--rotate"):
        TrainConfig(data=tmp_path, rotate=-1).validated()


@pytest.mark.skipif(not LFW_TINY.is_dir(), reason=f"shared data set {LFW_TINY} is absent")
def test_lfw_tiny20_loads_through_auto():
    index = index_dataset(LFW_TINY)
    files, labels = index.paths()[:40], index.labels[:40]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loader = make_loader(files, labels, batch_size=16, input_size=32, normalization=PIXELS, train=True)
        images, got = _epoch(loader)
    assert images.shape == (40, 3, 32, 32) and sorted(got.tolist()) == sorted(labels.tolist())


@pytest.mark.skipif(_native.kernel() is None, reason="no C compiler here: the CPU kernel falls back to grid_sample")
@pytest.mark.parametrize("shape", [(3, 64, 64), (3, 40, 56)])
def test_native_rotate_normalize_equals_grid_sample(shape):
    generator = torch.Generator().manual_seed(0)
    store = torch.randint(0, 256, (9, *shape), dtype=torch.uint8, generator=generator)
    index = torch.tensor([4, 0, 8, 4, 2, 7])
    angles = torch.tensor([0.0, 15.0, -14.2, 3.3, 90.0, -180.0])
    norm = Normalization((0.5, 0.4, 0.3), (0.25, 0.2, 0.3))
    native = RotateNormalize(norm, torch.device("cpu"))
    reference = RotateNormalize(norm, torch.device("cpu"))
    reference.native = False
    assert native.native
    expected = reference(store[index].contiguous(), angles)
    got = native(store, angles, index=index)
    assert got.shape == expected.shape and (got - expected).abs().max() < 1e-3  # float rounding only
    # Output buffers are reused only once nobody holds them: a kept batch is never overwritten.
    kept = got.clone()
    again = native(store, angles.flip(0), index=index)
    assert torch.equal(got, kept) and got.data_ptr() != again.data_ptr()
    assert torch.allclose(native(store[:2], torch.zeros(2)), reference(store[:2], torch.zeros(2)), atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["torch", pytest.param("dali", marks=needs_dali)])
def test_every_shard_and_epoch_follows_the_shared_plan(synth, backend):
    files, _ = synth
    ids = np.arange(len(files))  # the label is the file's position: shows the order
    for shard in range(3):
        loader = _loader(files, ids, backend, train=True, rotate=15.0, seed=5, shard_id=shard, num_shards=3)
        for epoch in (0, 1, 3):
            loader.set_epoch(epoch)
            plan = plan_epoch(20, epoch=epoch, seed=5, train=True, augment=ROTATE_15, shard_id=shard, num_shards=3)
            assert _epoch(loader)[1].tolist() == plan.indices.tolist() == loader.plan(epoch).indices.tolist()
            assert len(plan.indices) == 7  # 20 over 3 shards, padded by wrapping: no duplicates appended by a reader
        loader.close()


@pytest.mark.parametrize("backend", ["torch", pytest.param("dali", marks=needs_dali)])
def test_an_epoch_left_early_does_not_leak_into_the_next(synth, backend):
    files, _ = synth
    loader = _loader(files, np.arange(20), backend, train=True, seed=3)
    next(iter(loader))  # abandoned after one batch: prefetched batches of epoch 0 must not reappear
    assert _epoch(loader)[1].tolist() == loader.plan(1).indices.tolist()
    loader.close()


@pytest.mark.slow
def test_options_object_and_keywords_give_the_same_loader(synth):
    files, labels = synth
    options = LoaderOptions(batch_size=6, input_size=32, normalization=PIXELS, train=True, rotate=10.0, seed=1, backend="torch")
    by_object = make_loader(files, labels, options=options)
    by_keywords = make_loader(files, labels, batch_size=6, input_size=32, normalization=PIXELS, train=True, rotate=10.0,
                              seed=1, backend="torch")  # fmt: skip
    assert by_object.options == by_keywords.options == options.validate()
    assert torch.equal(_epoch(by_object)[0], _epoch(by_keywords)[0])
    assert options.validate().num_workers == default_workers() == min(available_cores(), 8)
    with pytest.raises(TypeError, match="num_threads"):
        make_loader(files, labels, batch_size=6, input_size=32, normalization=PIXELS, train=True, num_threads=2)
    with pytest.raises(TypeError, match="not both"):
        make_loader(files, labels, options=options, seed=2)


@pytest.mark.parametrize(
    "change,message",
    [
        (dict(shard_id=3, num_shards=3), "shard 3 of 3"),
        (dict(output_dtype=torch.int8), "output dtype"),
        (dict(hw_decoder_load=1.5), "hw_decoder_load 1.5: give a share between 0 and 1"),
    ],
)
def test_each_bad_option_is_one_usage_error(change, message):
    options = LoaderOptions(batch_size=6, input_size=32, normalization=PIXELS, train=True)
    with pytest.raises(UsageError, match=message):
        replace(options, **change).validate()


@pytest.mark.parametrize("native", [True, False])
def test_bf16_channels_last_output_equals_float32_to_bf16_rounding(native):
    if native and _native.kernel() is None:
        pytest.skip("no C compiler here")
    generator = torch.Generator().manual_seed(1)
    store = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8, generator=generator)
    angles = torch.tensor([0.0, 12.0, -7.5, 15.0])
    index = torch.tensor([3, 0, 4, 1])
    norm = Normalization((0.5, 0.4, 0.3), (0.25, 0.2, 0.3))
    plain, fast = RotateNormalize(norm, torch.device("cpu")), RotateNormalize(norm, torch.device("cpu"))
    plain.native = fast.native = native
    fast.configure(dtype=torch.bfloat16, channels_last=True)
    expected, got = plain(store, angles, index=index), fast(store, angles, index=index)
    assert got.dtype == torch.bfloat16 and got.is_contiguous(memory_format=torch.channels_last)
    # bf16 keeps 8 significant bits: relative rounding at most 2^-8.
    assert ((got.float() - expected).abs() <= expected.abs() * 2**-8 + 1e-6).all()


def test_channels_last_uint8_batches_normalize_like_contiguous_ones():
    # DALI on a GPU hands over HWC batches as channels-last NCHW views; the GPU path (grid_sample
    # + addcmul, run here on the CPU) must read them by their strides.
    generator = torch.Generator().manual_seed(2)
    batch = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8, generator=generator)
    hwc_view = batch.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)
    assert hwc_view.is_contiguous(memory_format=torch.channels_last) and not hwc_view.is_contiguous()
    augment = RotateNormalize(Normalization((0.5, 0.4, 0.3), (0.25, 0.2, 0.3)), torch.device("cpu"))
    augment.native = False
    for angles in (torch.zeros(4), torch.tensor([0.0, 10.0, -3.0, 15.0])):
        assert torch.equal(augment(hwc_view, angles), augment(batch, angles))

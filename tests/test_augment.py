"""Augmentation pipelines: parsing, deterministic draws, what each step does, torch/DALI parity.

Parity tolerance (torch path vs the DALI CPU graph, same uint8 images and the same draws):
both resample bilinearly with the same pixel-centre convention, so the only difference is
that every DALI step writes uint8 (rounded) while torch stays in float. One step therefore
differs by at most 0.5 grey levels, plus up to 0.3 for color (DALI's YIQ round trip puts
luma weights off the BT.601 ones by < 0.3%); we allow 1.0. The five-step pipeline rounds
after each of four steps and color scales that rounding by up to 1.4 x 1.4, so we allow 4
grey levels at any pixel and 0.5 on average. The images are smooth (bicubic from a coarse
grid, like faces) and uint8 from the start, so no decoding or resizing difference enters.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from facekit.api import Normalization
from facekit.data.augment import DEFAULT_AUGMENT, AugmentPipeline
from facekit.data.loaders import available_backends
from facekit.data.loaders._common import RotateNormalize
from facekit.errors import UsageError
from facekit.plugins import augmentations
from _testutil import INVERT_PLUGIN

PIXELS = Normalization((0.0, 0.0, 0.0), (1 / 255, 1 / 255, 1 / 255))  # output in grey levels
needs_dali = pytest.mark.skipif("dali" not in available_backends(), reason="NVIDIA DALI is not installed or does not work here")
BUILTINS = ["rotate:15", "flip", "crop:0.3,0.5,2", "color:0.4", "erase:0.8"]
EVERYTHING = ["erase:0.7", "color:0.4", "rotate:20", "flip", "crop:0.5"]


def _pipeline(*args: str) -> AugmentPipeline:
    return AugmentPipeline.from_args(list(args), augmentations())


def _smooth_images(n: int, size: int, seed: int = 0, width: int | None = None) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, 6, 6, generator=generator) * 255
    resized = F.interpolate(coarse, size=(size, width or size), mode="bicubic", align_corners=False)
    return resized.clamp(0, 255).round().to(torch.uint8)


def _draws(pipeline: AugmentPipeline, n: int, seed: int = 3, epoch: int = 1):
    return pipeline.sample(seed, epoch, n).take(np.arange(n))


def _augment(pipeline: AugmentPipeline, images: torch.Tensor, samples) -> torch.Tensor:
    return pipeline.apply(images, samples, PIXELS)


# --- parsing and order ------------------------------------------------------------------------


def test_builtins_are_registered_with_defaults():
    assert {"rotate", "flip", "crop", "color", "erase"} <= set(augmentations().names())
    steps = {step.spec.name: step.params for step in _pipeline("rotate", "flip", "crop", "color", "erase").steps}
    assert steps == {"rotate": 15.0, "flip": 0.5, "crop": (0.5, 0.75, 4 / 3), "color": (0.4, 0.4, 0.4), "erase": 0.5}
    assert _pipeline("color:0.2").steps[0].params == (0.2, 0.2, 0.2)  # one number sets all three
    assert _pipeline("color:0.1,0.2,0.3").steps[0].params == (0.1, 0.2, 0.3)
    assert _pipeline("crop:0.8").steps[0].params == (0.8, 0.75, 4 / 3)
    assert _pipeline(*DEFAULT_AUGMENT).to_args() == ["rotate:15"]


@pytest.mark.parametrize(
    "arg,match",
    [
        ("crop:abc", "--augment crop:abc"),
        ("crop:0", "--augment crop:0"),
        ("crop:0.5,2,1", "RATIO_MIN <= RATIO_MAX"),
        ("rotate:-3", "--augment rotate:-3"),
        ("rotate:500", "from 0 to 180"),
        ("flip:1.5", "--augment flip:1.5"),
        ("color:0.1,0.2,0.3,0.4", "--augment color:0.1,0.2,0.3,0.4"),
        ("erase:nan", "--augment erase:nan"),
        ("blur", "--augment 'blur' is not known; choose one of: color, crop, erase, flip, rotate"),
        ("rotat:10", "Did you mean 'rotate'"),
    ],
)
def test_bad_arguments_are_usage_errors_naming_the_option(arg, match):
    with pytest.raises(UsageError, match=match):
        _pipeline(arg)


def test_geometric_steps_run_first_in_the_order_given():
    assert _pipeline(*EVERYTHING).to_args() == ["rotate:20", "flip", "crop:0.5", "erase:0.7", "color:0.4"]


# --- draws ------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed,epoch,n", [(0, 0, 10), (7, 3, 101), (123, 40, 1)])
def test_default_pipeline_draws_exactly_the_pre_plugin_order_and_angles(seed, epoch, n):
    # What the loaders drew before augmentations were plugins: resumed and old runs reproduce.
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(n)
    angles = rng.uniform(-15, 15, n).astype(np.float32)
    draws = _pipeline(*DEFAULT_AUGMENT).sample(seed, epoch, n)
    assert np.array_equal(draws.order, order)
    assert draws.samples[0].dtype == np.float32 and np.array_equal(draws.samples[0][:, 0], angles)
    assert np.array_equal(_pipeline("rotate:15", "color").sample(seed, epoch, n).samples[0][:, 0], angles)


def test_draws_depend_on_seed_epoch_and_position_only():
    pipeline = _pipeline(*EVERYTHING)
    whole = pipeline.sample(5, 2, 30)
    again = pipeline.sample(5, 2, 30)
    assert all(np.array_equal(a, b) for a, b in zip(whole.samples, again.samples))
    # A shard's draws are the whole epoch's at its positions, whatever the split.
    positions = np.resize(np.arange(30), 32)[1::2]
    assert all(np.array_equal(part, full[positions]) for part, full in zip(whole.take(positions), whole.samples))
    other = pipeline.sample(5, 3, 30)
    assert not np.array_equal(whole.samples[0], other.samples[0])


def test_draws_stay_in_their_ranges():
    n = 4000
    rotate, flip, crop, erase, color = pipeline_samples = _pipeline(*EVERYTHING).sample(1, 0, n).samples
    assert [s.shape for s in pipeline_samples] == [(n, 1), (n, 1), (n, 4), (n, 5), (n, 3)]
    assert np.abs(rotate).max() <= 20 and np.abs(rotate).max() > 19
    assert set(np.unique(flip)) == {0.0, 1.0} and abs(flip.mean() - 0.5) < 0.05
    top, left, height, width = crop.T
    assert (top >= 0).all() and (left >= 0).all() and (top + height <= 1 + 1e-6).all() and (left + width <= 1 + 1e-6).all()
    area = height * width
    assert area.min() >= 0.5 - 1e-6 and area.max() <= 1 + 1e-6
    assert abs(erase[:, 0].mean() - 0.7) < 0.05
    assert (color >= 0.6 - 1e-6).all() and (color <= 1.4 + 1e-6).all()


# --- what each step does ----------------------------------------------------------------------


def test_rotate_only_equals_the_loaders_rotate_normalize():
    images = torch.randint(0, 256, (6, 3, 40, 40), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    norm = Normalization((0.5, 0.4, 0.3), (0.25, 0.2, 0.3))
    pipeline = _pipeline("rotate:30")
    (angles,) = _draws(pipeline, 6)
    reference = RotateNormalize(norm, torch.device("cpu"))
    expected = reference(images, angles[:, 0])  # the fused C kernel where it builds, else grid_sample
    got = pipeline.apply(images, (angles,), norm)
    assert (got - expected).abs().max() < 1e-3  # float rounding only


def test_flip_mirrors_exactly_the_chosen_images():
    images = _smooth_images(4, 16)
    got = _augment(_pipeline("flip"), images, (np.array([[1], [0], [1], [0]], np.float32),))
    assert torch.equal(got[[0, 2]], images[[0, 2]].flip(-1).float())
    assert torch.equal(got[[1, 3]], images[[1, 3]].float())


def test_crop_stretches_the_box_back_to_the_input_size():
    images = _smooth_images(2, 32)
    whole_and_left_half = np.array([[0, 0, 1, 1], [0, 0, 1, 0.5]], np.float32)
    got = _augment(_pipeline("crop"), images, (whole_and_left_half,))
    assert (got[0] - images[0].float()).abs().max() < 1e-3
    left = images[1:, :, :, :16].float()
    stretched = F.interpolate(left, size=(32, 32), mode="bilinear", align_corners=False)
    # The last column samples between input columns 15 and 16: the box is part of a larger
    # picture, while the reference was cut at column 15 and repeats its edge.
    assert (got[1:, ..., :31] - stretched[..., :31]).abs().max() < 1e-3


def test_color_scales_brightness_contrast_and_saturation():
    images = _smooth_images(1, 16).expand(4, -1, -1, -1)
    factors = np.array([[1, 1, 1], [0.5, 1, 1], [1, 0.5, 1], [1, 1, 0]], np.float32)
    same, darker, flatter, grey = _augment(_pipeline("color"), images, (factors,))
    original = images[0].float()
    assert torch.allclose(same, original, atol=1e-4)
    assert torch.allclose(darker, original * 0.5, atol=1e-4)
    assert torch.allclose(flatter, 0.5 * original + 64, atol=1e-4)  # halfway to mid-grey 128
    luma = (original * torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)).sum(0)
    assert torch.allclose(grey, luma.expand(3, -1, -1), atol=1e-3)


def test_erase_blackens_the_box_of_chosen_images_only():
    images = torch.full((2, 3, 20, 20), 200, dtype=torch.uint8)
    box = np.array([[1, 0.25, 0.5, 0.5, 0.25], [0, 0.25, 0.5, 0.5, 0.25]], np.float32)  # rows 5-14, cols 10-14
    chosen, skipped = _augment(_pipeline("erase"), images, (box,))
    expected = torch.full((3, 20, 20), 200.0)
    expected[:, 5:15, 10:15] = 0
    assert torch.equal(chosen, expected) and torch.equal(skipped, images[1].float())


def test_rotate_turns_a_bar_counter_clockwise():
    image = torch.zeros(1, 3, 41, 41, dtype=torch.uint8)
    image[:, :, 18:23, 4:37] = 255  # horizontal bar through the centre
    (upright,) = _augment(_pipeline("rotate:90"), image, (np.array([[90.0]], np.float32),))
    assert torch.allclose(upright, image[0].float().transpose(1, 2), atol=1e-2)  # now vertical


def test_augmentation_runs_on_the_batch_device_and_normalizes():
    images = _smooth_images(3, 24)
    norm = Normalization((0.5, 0.4, 0.3), (0.25, 0.2, 0.3))
    got = _pipeline().apply(images, (), norm)  # the evaluation pipeline: normalize only
    mean, std = torch.tensor(norm.mean).view(1, 3, 1, 1), torch.tensor(norm.std).view(1, 3, 1, 1)
    assert got.dtype == torch.float32 and torch.allclose(got, (images / 255 - mean) / std, atol=1e-5)


# --- torch / DALI parity ----------------------------------------------------------------------


def _run_dali(pipeline: AugmentPipeline, images: torch.Tensor, samples) -> torch.Tensor:
    from nvidia.dali import fn, pipeline_def

    hwc = [np.ascontiguousarray(image.permute(1, 2, 0).numpy()) for image in images]
    per_step = [[np.ascontiguousarray(row) for row in drawn] for drawn in samples]

    @pipeline_def(batch_size=len(hwc), num_threads=1, device_id=None, seed=0)
    def graph():
        nodes = fn.external_source(
            source=lambda: (hwc, *per_step), num_outputs=1 + len(per_step), batch=True, layout=["HWC"] + [None] * len(per_step)
        )
        return pipeline.dali_graph(nodes[0], nodes[1:])

    built = graph()
    built.build()
    (out,) = built.run()
    return torch.from_numpy(np.stack([out.at(i) for i in range(len(hwc))])).permute(0, 3, 1, 2).float()


@needs_dali
@pytest.mark.parametrize("width", [40, 56])  # the loaders' square images, and non-square ones
@pytest.mark.parametrize("arg", BUILTINS)
def test_each_builtin_agrees_with_its_dali_graph(arg, width):
    pipeline = _pipeline(arg)
    images = _smooth_images(16, 40, width=width)
    samples = _draws(pipeline, 16)
    torch_ = _augment(pipeline, images, samples)
    dali = _run_dali(pipeline, images, samples)
    assert dali.shape == torch_.shape
    assert (torch_ - dali).abs().max() <= 1.0
    assert not torch.equal(torch_, images.float()) or arg == "flip" and not samples[0].any()


@needs_dali
def test_the_whole_pipeline_agrees_with_its_dali_graph():
    pipeline = _pipeline(*EVERYTHING)
    images = _smooth_images(16, 48, seed=1)
    samples = _draws(pipeline, 16)
    diff = (_augment(pipeline, images, samples) - _run_dali(pipeline, images, samples)).abs()
    assert diff.mean() <= 0.5 and diff.max() <= 4.0


# --- plugins ----------------------------------------------------------------------------------



def test_a_plugin_augmentation_joins_the_pipeline_without_dali(facekit_plugin):
    plugin_set = facekit_plugin(INVERT_PLUGIN, package="facekit-invert")
    registry = plugin_set.registries["augmentations"]
    assert registry.owner["invert"] == "facekit-invert"
    pipeline = AugmentPipeline.from_args(["invert:1", "flip:1"], registry)
    assert pipeline.to_args() == ["flip:1", "invert:1"] and not pipeline.runs_in_dali
    assert _pipeline(*BUILTINS).runs_in_dali
    images = _smooth_images(2, 8)
    got = pipeline.apply(images, _draws(pipeline, 2), PIXELS)
    assert torch.allclose(got, 255 - images.flip(-1).float(), atol=1e-4)

"""facekit.imaging gives, without torch, exactly the pixels of the torch loader (what a bundle sees)."""

from pathlib import Path

import numpy as np
import pytest
import torch

from facekit import imaging
from facekit.data.loaders._common import decode_resized, read_rgb, resize_square

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def _torch_resize(image: np.ndarray, size: int) -> np.ndarray:
    return resize_square(torch.from_numpy(image).permute(2, 0, 1).contiguous(), size).permute(1, 2, 0).numpy()


@pytest.mark.parametrize("size", [17, 48, 64, 150, 224, 333])
def test_resize_is_pixel_for_pixel_the_torch_loaders(size):
    rng = np.random.default_rng(size)
    for _ in range(12):  # shrinking, enlarging, one side kept, odd shapes
        height, width = (int(v) for v in rng.integers(3, 420, 2))
        image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        np.testing.assert_array_equal(imaging.resize_square(image, size), _torch_resize(image, size))
    same = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    np.testing.assert_array_equal(imaging.resize_square(same, size), same)


def test_decoding_and_resizing_real_faces_match_the_torch_loader(synthetic_dataset):
    files = sorted(synthetic_dataset.rglob("*.png"))[:6]
    for folder, pattern in (("lfw_tiny20", "*/*.jpg"), ("orl_att_faces", "*/*.pgm")):
        files += sorted((SHARED / folder).glob(pattern))[:8]  # real JPEG and PGM faces where the shared data is
    for file in files:
        np.testing.assert_array_equal(imaging.read_rgb(file), read_rgb(file).permute(1, 2, 0).numpy())
        for size in (48, 150, 224):
            np.testing.assert_array_equal(imaging.load_resized(file, size), decode_resized(file, size).permute(1, 2, 0).numpy())


def test_grey_and_alpha_images_become_rgb(tmp_path):
    from PIL import Image

    Image.fromarray(np.full((20, 30), 77, np.uint8)).save(tmp_path / "grey.png")
    Image.fromarray(np.full((20, 30, 4), 200, np.uint8), "RGBA").save(tmp_path / "alpha.png")
    for name in ("grey.png", "alpha.png"):
        image = imaging.read_rgb(tmp_path / name)
        assert image.shape == (20, 30, 3) and image.dtype == np.uint8
        np.testing.assert_array_equal(image, read_rgb(tmp_path / name).permute(1, 2, 0).numpy())

"""GPU checks (skipped without CUDA): the DALI "mixed" pipeline and a short GPU training run."""

import numpy as np
import pytest
import torch

from facekit.api import Normalization
from facekit.data.index import index_dataset
from facekit.data.loaders import available_backends, make_loader
from facekit.engine import Trainer, TrainConfig
from facekit.runs import Run

pytestmark = [
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run on the lent H100)"),
    pytest.mark.skipif("dali" not in available_backends(), reason="needs NVIDIA DALI installed"),
]
NORM = Normalization((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


@pytest.fixture(scope="module")
def jpeg_faces(tmp_path_factory):
    from facekit.data.synth import make_synthetic_dataset

    return make_synthetic_dataset(tmp_path_factory.mktemp("gpu") / "faces", identities=4, per_identity=6, size=96, fmt="jpg")


def batches(files, labels, device):
    loader = make_loader(files, labels, batch_size=8, input_size=64, normalization=NORM, train=False, rotate=0,
                         device=device, backend="dali")  # fmt: skip
    try:
        return [(x, y) for x, y in loader]
    finally:
        loader.close()


def test_mixed_pipeline_matches_the_cpu_pipeline_and_stays_on_the_gpu(jpeg_faces):
    index = index_dataset(jpeg_faces)
    gpu = batches(index.paths(), index.labels, torch.device("cuda"))
    cpu = batches(index.paths(), index.labels, torch.device("cpu"))
    assert all(x.is_cuda and y.is_cuda for x, y in gpu), "batches must arrive as CUDA tensors (no host round trip)"
    gpu_x = torch.cat([x for x, _ in gpu]).cpu()
    cpu_x = torch.cat([x for x, _ in cpu])
    assert torch.equal(torch.cat([y for _, y in gpu]).cpu(), torch.cat([y for _, y in cpu]))
    # nvJPEG and libjpeg-turbo may differ by a grey level or two after IDCT: 2/255 / std 0.25 = 0.03.
    difference = (gpu_x - cpu_x).abs()
    assert difference.mean() < 0.01 and np.percentile(difference.numpy(), 99) < 0.05


def test_short_gpu_training_run_uses_dali_mixed_precision_and_channels_last(jpeg_faces, tmp_path):
    run_dir = Trainer(TrainConfig(data=jpeg_faces, out=tmp_path / "run", epochs=2, input_size=64, batch_size=8)).train()
    run = Run(run_dir)
    assert run.config["device_used"].startswith("cuda")
    assert run.config["amp"] is True and run.config["channels_last"] is True
    assert {row["loader"] for row in run.history} == {"dali"}
    assert run.history[-1]["train_loss"] < run.history[0]["train_loss"] * 1.5
    assert run.has_predictions

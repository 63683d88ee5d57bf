"""GPU checks (skipped without CUDA, and those needing DALI without it): the DALI "mixed" pipeline,
the GPU rotate + normalize in the trainer's dtype and layout, and a short GPU training run."""

import numpy as np
import pytest
import torch

from facekit.api import Normalization
from facekit.data.index import index_dataset
from facekit.data.loaders import available_backends, make_loader
from facekit.engine import Trainer, TrainConfig
from facekit.runs import Run

HAS_DALI = "dali" in available_backends()
pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
needs_dali = pytest.mark.skipif(not HAS_DALI, reason="needs NVIDIA DALI installed")
NORM = Normalization((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
GREY_LEVEL = 1 / 255 / 0.25  # one grey level in NORM's normalized units (0.0157)


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FACEKIT_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def jpeg_faces(tmp_path_factory):
    from facekit.data.synth import make_synthetic_dataset

    return make_synthetic_dataset(tmp_path_factory.mktemp("gpu") / "faces", identities=4, per_identity=6, size=96, fmt="jpg")


def batches(files, labels, device, backend="dali", **options):
    loader = make_loader(files, labels, batch_size=8, input_size=64, normalization=NORM, train=False, rotate=0,
                         device=device, backend=backend, **options)  # fmt: skip
    try:
        return [(x, y) for x, y in loader]
    finally:
        loader.close()


@needs_dali
def test_mixed_pipeline_matches_the_cpu_pipeline_and_stays_on_the_gpu(jpeg_faces):
    index = index_dataset(jpeg_faces)
    gpu = batches(index.paths(), index.labels, torch.device("cuda"))
    cpu = batches(index.paths(), index.labels, torch.device("cpu"))
    assert all(x.is_cuda and y.is_cuda for x, y in gpu), "batches must arrive as CUDA tensors (no host round trip)"
    gpu_x = torch.cat([x for x, _ in gpu]).cpu()
    cpu_x = torch.cat([x for x, _ in cpu])
    assert torch.equal(torch.cat([y for _, y in gpu]).cpu(), torch.cat([y for _, y in cpu]))
    # The two pipelines differ twice: nvJPEG's IDCT against libjpeg-turbo's (a grey level or two
    # at some pixels), and DALI's GPU resize against its CPU resize (different rounding of the
    # same antialiased filter: mostly a grey level either way, everywhere). Measured on an H200
    # (this set, 64 px): mean 0.0109 = 0.7 grey levels, 99th percentile under 0.05 = 3.2 grey
    # levels. The bounds leave about 2x margin on the mean (1.3 grey levels) and keep the
    # percentile: a wrong channel order, a missing normalization or a shifted resize moves the
    # mean by tens of grey levels, far beyond either.
    difference = (gpu_x - cpu_x).abs()
    assert difference.mean() < 0.02 and np.percentile(difference.numpy(), 99) < 0.05


def test_gpu_rotate_normalize_gives_the_trainers_dtype_and_layout(jpeg_faces):
    index = index_dataset(jpeg_faces)
    plain = batches(index.paths(), index.labels, torch.device("cuda"), backend="torch")
    bf16 = batches(index.paths(), index.labels, torch.device("cuda"), backend="torch",
                   output_dtype=torch.bfloat16, channels_last=True)  # fmt: skip
    for (x, _), (y, _) in zip(plain, bf16):
        assert y.dtype == torch.bfloat16 and y.is_contiguous(memory_format=torch.channels_last)
        # bf16 keeps 8 significant bits: values up to |2| round by at most 2^-7.
        assert (x - y.float()).abs().max() <= 2**-7 + 1e-6


def test_short_gpu_training_run_uses_mixed_precision_and_channels_last_and_learns(jpeg_faces, tmp_path):
    run_dir = Trainer(TrainConfig(data=jpeg_faces, out=tmp_path / "run", epochs=5, input_size=64, batch_size=8)).train()
    run = Run(run_dir)
    assert run.config["device_used"].startswith("cuda")
    assert run.config["amp"] is True and run.config["channels_last"] is True
    assert {row["loader"] for row in run.history} == {"dali" if HAS_DALI else "torch"}
    # Four well-separated synthetic identities: five epochs must lower the training loss.
    assert run.history[-1]["train_loss"] < run.history[0]["train_loss"]
    assert run.has_predictions

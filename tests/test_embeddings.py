"""Embeddings: every architecture names its classifier; embedding_model, embed_files and `facekit embed`."""

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from facekit.api import ArchOptions
from facekit.cli import app
from facekit.embeddings import embed_files, embedding_dim, embedding_model, read_embeddings
from facekit.heads import replace_classifier
from facekit.errors import FacekitError, UsageError
from facekit.plugins import architectures
from facekit.runs import Run

runner = CliRunner()

# The embedding each architecture gives: the input of its final classifier.
EXPECTED_DIMS = {"baseline": 300, "tronnet": 300, "resnet18": 512, "tinycnn": 16, "efficientnet-lite0": 1280,
                 "dlib-resnet": 128, "dlib-resnet-linear": 128}  # fmt: skip


@pytest.mark.parametrize("name", architectures().names())
def test_every_architecture_gives_its_embedding_and_the_same_logits(name):
    spec = architectures().get(name)
    size = min(spec.input_size, 96)
    torch.manual_seed(0)
    model = spec.build(ArchOptions(num_classes=5, input_size=size, pretrained=False)).eval()
    images = torch.randn(3, 3, size, size)
    with torch.no_grad():
        logits, embedding = embedding_model(model, spec).eval()(images)
        expected = model(images)
    assert torch.allclose(logits, expected, atol=1e-5)
    assert embedding.shape == (3, embedding_dim(model, spec, size))
    if name in EXPECTED_DIMS:
        assert embedding.shape[1] == EXPECTED_DIMS[name]


def test_the_embedding_model_shares_the_weights_and_leaves_the_model_whole():
    spec = architectures().get("baseline")
    model = spec.build(ArchOptions(num_classes=4, input_size=48)).eval()
    embedder = embedding_model(model, spec).eval()
    assert isinstance(model.classifier[3], torch.nn.Linear), "the model keeps its classifier"
    images = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        model.classifier[3].weight.mul_(2)  # a change to the model shows in the embedding model
        logits, embedding = embedder(images)
        assert torch.allclose(logits, model(images), atol=1e-6)
        # The study's embedding is the 300-d hidden layer after its ReLU.
        hidden = model.classifier[:3](model.features(images))
    assert torch.equal(embedding, hidden) and (embedding >= 0).all()
    names = {n for n, _ in embedder.named_parameters()}
    assert "classifier.weight" in names and not any(n.startswith("trunk.classifier.3") for n in names)


def test_dlib_embedding_is_its_face_descriptor():
    if "dlib-resnet" not in architectures():
        pytest.skip("the facekit-dlib plugin is not installed")
    spec = architectures().get("dlib-resnet")
    model = spec.build(ArchOptions(num_classes=3, input_size=150, pretrained=False)).eval()
    images = torch.randn(2, 3, 150, 150)
    with torch.no_grad():
        _, embedding = embedding_model(model, spec).eval()(images)
        descriptor = model.backbone(images)  # what face_recognition calls the face encoding
    assert torch.equal(embedding, descriptor)


def test_replace_classifier_puts_a_head_in_its_place():
    spec = architectures().get("resnet18")
    model = spec.build(ArchOptions(num_classes=4, input_size=64, pretrained=False))
    head = torch.nn.Linear(512, 9)
    replace_classifier(model, spec, head)
    assert model.fc is head and "fc.weight" in model.state_dict()
    assert model.eval()(torch.randn(1, 3, 64, 64)).shape == (1, 9)


def test_an_architecture_without_a_classifier_name_says_so(facekit_plugin):
    facekit_plugin(
        """
from torch import nn
from facekit.api import ArchitectureSpec, hookimpl

@hookimpl
def register_architectures(register):
    register(ArchitectureSpec("old-style", lambda o: nn.Sequential(nn.Flatten(), nn.LazyLinear(o.num_classes))))
""",
        package="facekit-old-style",
    )
    spec = architectures().get("old-style")
    with pytest.raises(FacekitError, match="architecture 'old-style' does not name its final classifier"):
        embedding_model(torch.nn.Linear(1, 1), spec)


@pytest.fixture(scope="module")
def trained_run(facekit_run):
    return facekit_run


def test_embed_files_preprocesses_as_predict_does(trained_run, synthetic_dataset):
    run = Run(trained_run)
    files = sorted((synthetic_dataset / "person_01").iterdir())[:3] + sorted((synthetic_dataset / "person_02").iterdir())[:2]
    embeddings = embed_files(trained_run, files, batch_size=2)
    assert embeddings.dtype == np.float32 and embeddings.shape == (5, 300)
    assert np.all(np.isfinite(embeddings)) and not np.allclose(np.linalg.norm(embeddings, axis=1), 1), "not normalized"
    # The classifier applied to these embeddings gives predict's probabilities.
    from facekit.predict import predict

    model = run.load_model()
    with torch.no_grad():
        probs = torch.softmax(model.classifier[3](torch.from_numpy(embeddings)), 1)
    predicted = predict(trained_run, files, top_k=1)
    assert [entry["top"][0]["id"] for entry in predicted] == probs.argmax(1).tolist()
    assert np.allclose([entry["top"][0]["probability"] for entry in predicted], probs.max(1).values.numpy(), atol=1e-5)
    assert embed_files(trained_run, []).shape == (0, 300)
    # Batches do not change the rows.
    assert np.allclose(embed_files(trained_run, files[::-1], batch_size=5)[::-1], embeddings, atol=1e-5)


def test_embed_files_refuses_folders_and_unreadable_files(trained_run, synthetic_dataset, tmp_path):
    with pytest.raises(UsageError, match="is a folder: embed_files takes image files"):
        embed_files(trained_run, [synthetic_dataset / "person_01"])
    bad = tmp_path / "bad.jpg"
    bad.write_text("no image")
    with pytest.raises(UsageError, match="bad.jpg is not a readable image"):
        embed_files(trained_run, [bad])


def test_facekit_embed_writes_npy_and_the_file_names(trained_run, synthetic_dataset, tmp_path):
    out = tmp_path / "faces"
    result = runner.invoke(app, ["embed", str(trained_run), str(synthetic_dataset / "person_00"), str(synthetic_dataset / "person_03"),
                                 "--out", str(out), "--json"])  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["count"] == 16 and summary["dim"] == 300 and summary["normalized"] is False
    embeddings, files = read_embeddings(out)
    assert embeddings.shape == (16, 300) and len(files) == 16
    assert files[0].endswith("person_00/" + sorted(p.name for p in (synthetic_dataset / "person_00").iterdir())[0])
    assert np.allclose(embeddings, embed_files(trained_run, files), atol=1e-5)
    written = json.loads((tmp_path / "faces.json").read_text())
    assert written["embeddings"] == "faces.npy" and written["files"] == files
    # Nothing the user owns is replaced without --force.
    again = runner.invoke(app, ["embed", str(trained_run), files[0], "--out", str(tmp_path / "faces.npy")])
    assert again.exit_code == 2 and "faces.npy exists; give another --out, or --force" in again.output
    forced = runner.invoke(app, ["embed", str(trained_run), files[0], "--out", str(tmp_path / "faces.npy"), "--force"])
    assert forced.exit_code == 0 and read_embeddings(out)[0].shape == (1, 300)


def test_facekit_embed_names_a_missing_image(trained_run, tmp_path):
    result = runner.invoke(app, ["embed", str(trained_run), str(tmp_path / "nope.jpg"), "--out", str(tmp_path / "e")])
    assert result.exit_code == 2 and "nope.jpg: no such file or folder" in result.output
    assert not (tmp_path / "e.npy").exists()


@pytest.mark.parametrize("loss", ["plain", "arcface"])
def test_the_embedding_model_traces_for_export_with_and_without_a_loss_head(loss):
    from facekit.factory import create_model

    torch.manual_seed(0)
    model = create_model("baseline", num_classes=5, input_size=48, pretrained=False, loss=loss).eval()
    network = embedding_model(model, architectures().get("baseline")).eval()
    images = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        traced = torch.jit.trace(network, images)
        for eager, exported in zip(network(images), traced(torch.flip(images, [0]).flip(0))):
            assert torch.allclose(eager, exported, atol=1e-5)

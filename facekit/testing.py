"""Test helpers for facekit and its plugin authors; also a pytest plugin (entry point ``pytest11``).

Fixtures:

- ``synthetic_dataset``: a small one-folder-per-identity data set made on the fly.
- ``facekit_run``: a finished one-epoch run on ``synthetic_dataset``, for reporters.
- ``facekit_plugin``: install a throwaway plugin (a module's source) under the ``facekit``
  entry-point group for one test, exactly as ``pip install`` would expose it.

Contract checks, one line each in a plugin's tests (each raises AssertionError saying what is
wrong): :func:`check_architecture`, :func:`check_loss`, :func:`check_split`,
:func:`check_reporter`, :func:`check_logger`. They take the registered name, so they also check the registration.

Importing this module stays cheap (no torch): pytest loads it in every session.
"""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest


def make_fake_distribution(
    site: Path, package: str, modules: dict[str, str], entry_points: dict[str, str], version: str = "1.0"
) -> Path:
    """Write modules and a ``*.dist-info`` with ``facekit`` entry points into ``site`` (a sys.path folder)."""
    site.mkdir(parents=True, exist_ok=True)
    for module, source in modules.items():
        (site / f"{module}.py").write_text(textwrap.dedent(source))
    dist_info = site / f"{package.replace('-', '_')}-{version}.dist-info"
    dist_info.mkdir(exist_ok=True)
    (dist_info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {package}\nVersion: {version}\n")
    lines = "\n".join(f"{name} = {target}" for name, target in entry_points.items())
    (dist_info / "entry_points.txt").write_text(f"[facekit]\n{lines}\n")
    return site


@pytest.fixture
def facekit_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., object]]:
    """``facekit_plugin(source, package="facekit-throwaway")`` installs a plugin module and reloads plugins.

    Returns the fresh :class:`facekit.plugins.PluginSet`; everything is undone after the test.
    """
    from facekit.plugins import PluginSet, reset_plugins

    site = tmp_path / "site-packages"
    monkeypatch.syspath_prepend(str(site))
    installed: list[str] = []

    def install(source: str, package: str = "facekit-throwaway", module: str | None = None, strict: bool = False):
        module = module or package.replace("-", "_") + "_plugin"
        make_fake_distribution(site, package, {module: source}, {module: module})
        installed.append(module)
        sys.modules.pop(module, None)
        plugin_set = PluginSet(strict=strict)
        reset_plugins(plugin_set)
        return plugin_set

    previous = reset_plugins(None)
    yield install
    for module in installed:
        sys.modules.pop(module, None)
    reset_plugins(previous)


@pytest.fixture(scope="session")
def synthetic_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four identities, eight 48x48 images each: enough for a model to learn in a few steps."""
    from facekit.data.synth import make_synthetic_dataset

    return make_synthetic_dataset(tmp_path_factory.mktemp("faces") / "data", identities=4, per_identity=8, size=48, seed=0)


@pytest.fixture(scope="session")
def facekit_run(synthetic_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished run folder: the baseline trained for one epoch on ``synthetic_dataset`` at 48x48."""
    from facekit.config import TrainConfig
    from facekit.engine import SilentProgress, Trainer

    config = TrainConfig(
        data=synthetic_dataset, out=tmp_path_factory.mktemp("facekit-run") / "run", arch="baseline", input_size=48,
        epochs=1, batch_size=8, lr=1e-3, rotate=0.0, loader="torch", workers=0, test_size=0.25, val_size=0.25,
    )  # fmt: skip
    return Trainer(config, SilentProgress()).train()


def _registered(kind: str, name: str) -> Any:
    from facekit import plugins

    registry = plugins.get_plugins().registries[kind]
    assert name in registry, f"no {registry.kind} {name!r} is registered; registered: {', '.join(registry.names())}"
    return registry.get(name)


def check_architecture(
    name: str, *, input_size: int | None = None, num_classes: int = 3, batch: int = 4, steps: int = 5, export: bool = True
) -> None:
    """Check architecture ``name`` against its contract, without pretrained weights.

    Built with ``pretrained=False`` at its declared input size (or ``input_size``), it returns
    finite logits of shape (batch, num_classes); its spec's ``classifier`` names the submodule
    that turns a flat (batch, D) embedding into exactly those logits (the embedding contract);
    it has trainable parameters, and a few Adam steps on
    one tiny batch lower the training loss without moving any frozen (``requires_grad=False``)
    parameter. With ``export`` (the default) it also exports, as :func:`check_export` checks.
    """
    import torch
    from torch import nn

    from facekit.specs import ArchitectureSpec, ArchOptions, Normalization

    spec = _registered("architectures", name)
    assert isinstance(spec, ArchitectureSpec), f"architecture {name!r}: registered a {type(spec).__name__}, not an ArchitectureSpec"
    assert isinstance(spec.input_size, int) and spec.input_size > 0, f"architecture {name!r}: input_size {spec.input_size!r}"
    assert spec.normalization is None or isinstance(spec.normalization, Normalization), (
        f"architecture {name!r}: normalization must be None or a Normalization, not {spec.normalization!r}"
    )
    size = input_size or spec.input_size
    model = spec.build(ArchOptions(num_classes=num_classes, input_size=size, pretrained=False))
    assert isinstance(model, nn.Module), f"architecture {name!r}: build() returned {type(model).__name__}, not an nn.Module"

    torch.manual_seed(0)
    images = torch.randn(batch, 3, size, size)
    targets = torch.arange(batch) % num_classes
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert trainable, f"architecture {name!r}: every parameter is frozen; the engine would have nothing to train"
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    optimizer = torch.optim.Adam(trainable, lr=1e-3)
    model.train()

    def loss() -> torch.Tensor:
        torch.manual_seed(1)  # the same dropout masks each time: only the parameters differ
        logits = model(images)
        assert logits.shape == (batch, num_classes), (
            f"architecture {name!r}: logits of shape {tuple(logits.shape)} for {batch} images of {size}x{size}, "
            f"expected {(batch, num_classes)}"
        )
        assert torch.isfinite(logits).all(), f"architecture {name!r}: non-finite logits"
        return nn.functional.cross_entropy(logits, targets)

    first = loss()
    for _ in range(steps):
        optimizer.zero_grad()
        value = loss()
        assert value.requires_grad, f"architecture {name!r}: the logits do not depend on any trainable parameter"
        value.backward()
        optimizer.step()
    last = loss()
    assert last.item() < first.item(), (
        f"architecture {name!r}: {steps} Adam steps (lr 1e-3) on one batch did not lower the loss "
        f"({first.item():.4f} -> {last.item():.4f}); are the trainable parameters used by forward()?"
    )
    moved = [n for n, p in model.named_parameters() if n in frozen and not torch.equal(p, frozen[n])]
    assert not moved, f"architecture {name!r}: frozen parameters changed in training: {', '.join(moved[:5])}"
    _check_embedding(name, spec, model, images, num_classes)
    if export:
        check_export(name, input_size=size, num_classes=max(num_classes, 5))


def _check_embedding(name: str, spec: Any, model: Any, images: Any, num_classes: int) -> None:
    """The spec names a classifier whose input is a flat embedding and whose output is the model's logits."""
    import torch

    from facekit.heads import embedding_model

    classifier = spec.classifier
    assert isinstance(classifier, str) and classifier, (
        f"architecture {name!r}: ArchitectureSpec.classifier must name the final classifier submodule "
        f"(e.g. 'fc'), whose input is the embedding; got {classifier!r}"
    )
    try:
        model.get_submodule(classifier)
    except AttributeError:
        children = ", ".join(n for n, _ in model.named_modules() if n) or "(none)"
        raise AssertionError(f"architecture {name!r}: classifier {classifier!r} is not a submodule; it has: {children[:300]}") from None
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            expected = model(images)
            logits, embedding = embedding_model(model, spec)(images)
    except Exception as exc:  # noqa: BLE001 -- any failure of the split model says the same
        raise AssertionError(
            f"architecture {name!r}: the model without its classifier {classifier!r} failed "
            f"({exc.__class__.__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); the classifier must be the model's last step"
        ) from None
    finally:
        model.train(was_training)
    assert embedding.dim() == 2 and embedding.shape[0] == len(images) and embedding.shape[1] >= 1, (
        f"architecture {name!r}: the input of classifier {classifier!r} has shape {tuple(embedding.shape)}, "
        f"not ({len(images)}, D): name the module whose input is the flat embedding"
    )
    assert torch.isfinite(embedding).all(), f"architecture {name!r}: non-finite embedding"
    assert logits.shape == (len(images), num_classes) and torch.allclose(logits, expected, atol=1e-5, rtol=1e-4), (
        f"architecture {name!r}: classifier {classifier!r} applied to its input does not give the model's output; "
        "the classifier must be the model's last step"
    )


def check_export(
    name: str,
    *,
    input_size: int | None = None,
    num_classes: int = 7,
    formats: tuple[str, ...] = ("onnx", "torchscript"),
    images: Any = None,
    tolerance: float = 1e-4,
) -> None:
    """Check that architecture ``name`` exports as ``facekit export`` does, and that the export agrees.

    Built with ``pretrained=False`` and its weights moved off their initial values (so that no
    logit is trivially zero), put behind the exported preprocessing, it is exported to every
    format in ``formats``; onnxruntime (or TorchScript) and the eager model then give the same
    logits within ``tolerance`` and the same top-5 classes on ``images`` (uint8 RGB, (N, H, W, 3)
    at the input size; default: a few synthetic faces, decoded and resized as a bundle does).
    """
    import tempfile

    import numpy as np
    import torch

    from facekit.errors import FacekitError
    from facekit.export import export_model, exportable_model, with_preprocessing
    from facekit.factory import create_model
    from facekit.specs import ArchitectureSpec, Normalization

    spec = _registered("architectures", name)
    assert isinstance(spec, ArchitectureSpec), f"architecture {name!r}: registered a {type(spec).__name__}, not an ArchitectureSpec"
    size = input_size or spec.input_size
    torch.manual_seed(0)
    model = create_model(name, num_classes=num_classes, input_size=size, pretrained=False)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.02)
    network, embedding = exportable_model(model.eval(), name)  # what `facekit export` exports: logits (and embedding)
    normalization = spec.normalization or Normalization((0.5, 0.45, 0.4), (0.25, 0.25, 0.25))
    with tempfile.TemporaryDirectory(prefix="facekit-check-export-") as folder:
        if images is None:
            images = _synthetic_images(Path(folder) / "faces", size)
        images = np.ascontiguousarray(images, dtype=np.uint8)
        assert images.shape[1:] == (size, size, 3), f"check_export: images of shape {images.shape}, expected (N, {size}, {size}, 3)"
        with torch.no_grad():
            outputs = with_preprocessing(network, normalization)(torch.from_numpy(images))
        outputs = [t.numpy() for t in (outputs if isinstance(outputs, tuple) else (outputs,))]
        expected = outputs[0]
        for fmt in formats:
            path = Path(folder) / f"model.{fmt}"
            try:
                export_model(network, path, fmt=fmt, arch=name, input_size=size, normalization=normalization, embedding=embedding)
            except FacekitError as exc:
                raise AssertionError(str(exc)) from None
            results = _run_exported(path, fmt, images)
            for output, want, have in zip(("logits", "embedding"), outputs, results):
                diff = float(np.abs(have - want).max())
                assert diff <= tolerance, f"architecture {name!r}: {fmt} {output} differ from torch's by {diff:.3g} (> {tolerance:g})"
            got = results[0]
            k = min(5, num_classes)
            top_expected, top_got = np.argsort(-expected, 1, kind="stable")[:, :k], np.argsort(-got, 1, kind="stable")[:, :k]
            assert (top_expected == top_got).all(), f"architecture {name!r}: {fmt} and torch rank the top-{k} classes differently"


def _synthetic_images(folder: Path, size: int) -> Any:
    import numpy as np

    from facekit.data.synth import make_synthetic_dataset
    from facekit.imaging import load_resized

    root = make_synthetic_dataset(folder, identities=3, per_identity=2, size=min(size, 96), seed=0)
    return np.stack([load_resized(p, size) for p in sorted(root.rglob("*.png"))])


def _run_exported(path: Path, fmt: str, images: Any) -> Any:
    import warnings

    if fmt == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return session.run(None, {"images": images})
    import torch

    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        outputs = torch.jit.load(str(path))(torch.from_numpy(images))
    return [t.numpy() for t in (outputs if isinstance(outputs, tuple) else (outputs,))]


def check_loss(name: str, class_counts: tuple[int, ...] = (1, 3, 9, 27)) -> None:
    """Check loss ``name``: ``build(class_counts, **default options)`` gives a module whose ``loss(logits, targets)`` is a
    finite scalar with finite gradients, lower for confident right answers than for confident wrong ones.
    A loss with a ``head``: the head maps (N, D) embeddings to (N, C) logits that train with the loss.
    """
    import torch
    from torch import nn

    from facekit.specs import LossSpec

    spec = _registered("losses", name)
    assert isinstance(spec, LossSpec), f"loss {name!r}: registered a {type(spec).__name__}, not a LossSpec"
    loss_fn = spec.make(list(class_counts))  # with its options' defaults
    assert isinstance(loss_fn, nn.Module), f"loss {name!r}: build() returned {type(loss_fn).__name__}, not an nn.Module"
    classes = len(class_counts)
    targets = torch.arange(2 * classes) % classes
    logits = torch.randn(len(targets), classes, generator=torch.Generator().manual_seed(0), requires_grad=True)
    value = loss_fn(logits, targets)
    assert isinstance(value, torch.Tensor) and value.dim() == 0, f"loss {name!r}: expected a scalar tensor, got {value!r}"
    assert torch.isfinite(value), f"loss {name!r}: non-finite value {value.item()}"
    value.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0, (
        f"loss {name!r}: no finite, non-zero gradient reaches the logits"
    )
    with torch.no_grad():
        right = loss_fn(10 * nn.functional.one_hot(targets, classes).float(), targets)
        wrong = loss_fn(10 * nn.functional.one_hot((targets + 1) % classes, classes).float(), targets)
    assert right < wrong, f"loss {name!r}: right answers cost {right.item():.4f}, wrong ones {wrong.item():.4f}"
    if spec.head is not None:
        head = spec.make_head(8, classes)
        assert isinstance(head, nn.Module), f"loss {name!r}: head() returned {type(head).__name__}, not an nn.Module"
        embeddings = torch.randn(len(targets), 8, generator=torch.Generator().manual_seed(1))
        head_logits = head(embeddings)
        assert head_logits.shape == (len(targets), classes), (
            f"loss {name!r}: its head gives logits of shape {tuple(head_logits.shape)} for {len(targets)} embeddings, "
            f"expected {(len(targets), classes)}"
        )
        loss_fn(head_logits, targets).backward()
        trained = [p for p in head.parameters() if p.requires_grad]
        assert trained and all(p.grad is not None and torch.isfinite(p.grad).all() for p in trained), (
            f"loss {name!r}: no finite gradient reaches its head's parameters"
        )


def check_split(name: str, seed: int = 0) -> None:
    """Check split ``name`` on imbalanced labels: deterministic for a seed; in every fold, test,
    training and validation indices are valid, disjoint, and together cover every image once.
    """
    import numpy as np

    from facekit.specs import Fold, SplitOptions, SplitPlan, SplitSpec

    spec = _registered("splits", name)
    assert isinstance(spec, SplitSpec), f"split {name!r}: registered a {type(spec).__name__}, not a SplitSpec"
    labels = np.random.default_rng(seed).permutation(np.repeat(np.arange(5), [40, 20, 10, 6, 3]))
    options = SplitOptions(seed=seed, folds=3)
    plan = spec.split(labels, options)
    assert isinstance(plan, SplitPlan), f"split {name!r}: returned {type(plan).__name__}, not a SplitPlan"
    assert plan.folds and all(isinstance(f, Fold) for f in plan.folds), f"split {name!r}: no folds, or not Fold objects"
    assert all(isinstance(note, str) for note in plan.notes), f"split {name!r}: notes must be strings"
    again = spec.split(labels, options)
    same = np.array_equal(plan.test, again.test) and len(plan.folds) == len(again.folds) and all(
        np.array_equal(a.train, b.train) and np.array_equal(a.val, b.val) for a, b in zip(plan.folds, again.folds)
    )
    assert same, f"split {name!r}: two calls with seed {seed} gave different plans"
    everything = np.arange(len(labels))
    for k, fold in enumerate(plan.folds):
        parts = {"test": plan.test, "train": fold.train, "val": fold.val}
        for part, indices in parts.items():
            indices = np.asarray(indices)
            assert indices.ndim == 1 and (indices.size == 0 or np.issubdtype(indices.dtype, np.integer)), (
                f"split {name!r}: fold {k} {part} is not a 1-d integer array"
            )
            assert np.all((indices >= 0) & (indices < len(labels))), f"split {name!r}: fold {k} {part} index out of range"
            assert len(np.unique(indices)) == len(indices), f"split {name!r}: fold {k} {part} repeats an index"
        assert len(fold.train), f"split {name!r}: fold {k} has no training image"
        together = np.concatenate(list(parts.values()))
        assert len(np.unique(together)) == len(together), f"split {name!r}: fold {k}'s test, train and val overlap"
        missing = np.setdiff1d(everything, together)
        assert not len(missing), f"split {name!r}: fold {k} leaves {len(missing)} images out (e.g. index {missing[0]})"


def check_reporter(name: str, run_dir: Path, out_dir: Path) -> None:
    """Check reporter ``name`` on the finished run ``run_dir`` (the ``facekit_run`` fixture).

    ``render`` runs without error and prints something or writes files into ``out_dir`` (which
    must not exist yet); every file it writes is listed in ``context.written``, so that
    ``facekit report`` names it, and is not empty.
    """
    import io

    from rich.console import Console

    from facekit.report import ReportContext
    from facekit.runs import Run
    from facekit.specs import ReporterSpec
    from facekit.report import build_report

    spec = _registered("reporters", name)
    assert isinstance(spec, ReporterSpec), f"reporter {name!r}: registered a {type(spec).__name__}, not a ReporterSpec"
    assert not Path(out_dir).exists(), f"check_reporter needs a fresh out_dir; {out_dir} exists"
    run = Run(Path(run_dir))
    console = Console(file=io.StringIO(), width=100, color_system=None)
    context = ReportContext(run=run, report=build_report(run), console=console, out_dir=Path(out_dir))
    spec.render(context)
    printed = console.file.getvalue()
    files = sorted(p for p in Path(out_dir).rglob("*") if p.is_file()) if Path(out_dir).is_dir() else []
    written = {Path(p).resolve() for p in context.written}
    assert printed.strip() or files, f"reporter {name!r} neither printed nor wrote anything"
    unnamed = [str(p) for p in files if p.resolve() not in written]
    assert not unnamed, f"reporter {name!r} wrote files without listing them in context.written: {', '.join(unnamed)}"
    for path in context.written:
        assert Path(path).is_file() and Path(path).stat().st_size > 0, f"reporter {name!r}: {path} is missing or empty"


def check_logger(name: str, run_dir: Path) -> None:
    """Check experiment tracker ``name`` (``--log name``) the way a training calls it, on ``run_dir``
    (a folder that must not exist yet; it is made).

    ``start(context)`` returns an object with ``log_epoch``, ``log_results`` and ``close``; it takes
    two epochs of two folds (a NaN validation loss among them, as a fold without validation
    images has), the results with a Markdown report and a PNG figure, and closes: all without an
    exception, whatever it writes wherever it writes. A tracker that needs a server or a store
    set up (``MLFLOW_TRACKING_URI`` and the like) needs it here too.
    """
    import math

    from PIL import Image

    from facekit.specs import LoggerContext, LoggerSpec, RunResults

    spec = _registered("loggers", name)
    assert isinstance(spec, LoggerSpec), f"logger {name!r}: registered a {type(spec).__name__}, not a LoggerSpec"
    run_dir = Path(run_dir)
    assert not run_dir.exists(), f"check_logger needs a fresh run_dir; {run_dir} exists"
    (run_dir / "report").mkdir(parents=True)
    config = {"data": "faces", "arch": "baseline", "epochs": 2, "lr": 1e-3, "augment": ["rotate:15"], "weights": None}
    logger = spec.start(LoggerContext(run_dir, config, folds=2))
    missing = [m for m in ("log_epoch", "log_results", "close") if not callable(getattr(logger, m, None))]
    assert not missing, f"logger {name!r}: start returned a {type(logger).__name__} without {', '.join(missing)}"
    for fold in (0, 1):
        for epoch in (1, 2):
            logger.log_epoch({
                "fold": fold, "epoch": epoch, "train_loss": 1.0 / epoch, "val_loss": math.nan if fold else 1.5 / epoch,
                "train_acc": 0.3 * epoch, "val_acc": math.nan if fold else 0.2 * epoch, "lr": 1e-3,
                "images_per_s": 100.0, "seconds": 1.0, "loader": "torch", "device": "cpu", "compile": None,
            })  # fmt: skip
    figure = run_dir / "report" / "loss_curves.png"
    Image.new("RGB", (8, 6), (200, 30, 30)).save(figure)
    report = run_dir / "report" / "report.md"
    report.write_text("## Report\n\n| a | b |\n|---|---|\n| 1 | 2 |\n")
    logger.log_results(RunResults(run_dir, {"test_balanced_accuracy": 0.5}, [report, figure]))
    logger.close()

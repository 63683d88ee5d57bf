"""Top-k identities for new images, with a trained run's model and preprocessing, or with an exported bundle.

Importing this module does not import torch: predicting from an ONNX bundle never needs it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from facekit.bundle import is_bundle, open_bundle
from facekit.errors import UsageError
from facekit.runs import Run
from facekit.specs import Normalization


def expand_images(inputs: list[Path]) -> list[Path]:
    """Image files named directly, or found under folders (sorted); a missing path is a usage error."""
    from facekit.data.index import IMAGE_EXTENSIONS

    files: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            files.extend(sorted(p for p in item.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS))
        elif item.is_file():
            files.append(item)
        else:
            raise UsageError(f"{item}: no such file or folder")
    if not files:
        raise UsageError(f"no images found in {', '.join(map(str, inputs))} (looked for {', '.join(sorted(IMAGE_EXTENSIONS))})")
    return files


def unreadable(path: Path) -> str | None:
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.load()
    except Exception as exc:
        return f"{exc.__class__.__name__}: {exc}"
    return None


def predict(run_dir: Path, inputs: list[Path], *, top_k: int = 5, device: str = "auto", batch_size: int = 32) -> list[dict[str, Any]]:
    """One entry per image: the file and its ``top_k`` identities (name, id, probability).

    ``run_dir`` is a run folder or a bundle made by ``facekit export`` (same output, same pixels).
    """
    if top_k < 1:
        raise UsageError(f"--top-k must be at least 1 (got {top_k})")
    bundle = open_bundle(run_dir) if is_bundle(run_dir) else None
    if bundle is None and not (Path(run_dir) / "config.json").is_file():
        raise UsageError(
            f"{run_dir} is neither a run folder (no config.json) nor a bundle (no bundle.json): "
            "pass a folder made by `facekit train` or `facekit export`"
        )
    run = None if bundle else Run.open(run_dir)
    files = expand_images(inputs)
    bad = {str(f): reason for f in files if (reason := unreadable(f))}
    if bad:
        first = next(iter(bad.items()))
        raise UsageError(f"{first[0]} is not a readable image ({first[1]}); {len(bad)} unreadable file(s) in all")
    if bundle is not None:
        return bundle.predict(files, top_k=top_k, device=device, batch_size=batch_size)
    return _predict_run(run, files, top_k=top_k, device=device, batch_size=batch_size)


def _predict_run(run: Run, files: list[Path], *, top_k: int, device: str, batch_size: int) -> list[dict[str, Any]]:
    import torch

    from facekit.data.loaders import make_loader
    from facekit.engine import resolve_device

    torch_device = resolve_device(device)
    model = run.load_model().to(torch_device)
    loader = make_loader(
        [str(f) for f in files],
        np.zeros(len(files), dtype=np.int64),
        batch_size=batch_size,
        input_size=int(run.config["input_size"]),
        normalization=Normalization.from_dict(run.normalization["folds"][run.kept_fold]),
        train=False,
        rotate=0.0,
        device=torch_device,
        # The torch loader, whatever the run trained with: a few images need no DALI, and its pixels
        # are the ones an exported bundle reproduces exactly (facekit.imaging), so `facekit predict`
        # gives the same numbers for a run and for its bundle.
        backend="torch",
        num_workers=0,
    )
    probs = []
    try:
        with torch.no_grad():
            for images, _ in loader:
                probs.append(torch.softmax(model(images.to(torch_device)).float(), 1).cpu())
    finally:
        loader.close()
    probabilities = torch.cat(probs)
    k = min(top_k, probabilities.shape[1])
    values, indices = probabilities.topk(k, dim=1)
    return [
        {
            "file": str(file),
            "top": [
                {"name": run.classes[i], "id": int(i), "probability": float(p)}
                for p, i in zip(values[row].tolist(), indices[row].tolist())
            ],
        }
        for row, file in enumerate(files)
    ]

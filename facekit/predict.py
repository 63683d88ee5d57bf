"""Top-k identities for new images, with a trained run's model and preprocessing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from facekit.errors import UsageError
from facekit.inference import readable_images, run_loader
from facekit.runs import Run


@torch.no_grad()
def predict(run_dir: Path, inputs: list[Path], *, top_k: int = 5, device: str = "auto", batch_size: int = 32) -> list[dict[str, Any]]:
    """One entry per image: the file and its ``top_k`` identities (name, id, probability)."""
    from facekit.devices import resolve_device

    if top_k < 1:
        raise UsageError(f"--top-k must be at least 1 (got {top_k})")
    run = Run.open(run_dir)
    files = readable_images(inputs)
    torch_device = resolve_device(device)
    model = run.load_model().to(torch_device)
    loader = run_loader(run, files, device=torch_device, batch_size=batch_size)
    probs = []
    try:
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

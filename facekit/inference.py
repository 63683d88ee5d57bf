"""New images through a trained run, preprocessed exactly as the run's test images were.

``facekit predict`` and ``facekit embed`` read their images here, so both see the same pixels.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from facekit.errors import UsageError

if TYPE_CHECKING:
    import torch

    from facekit.data.loaders import Loader
    from facekit.runs import Run


def expand_images(inputs: Sequence[str | Path]) -> list[Path]:
    """Image files named directly, or found under folders as a data set's images are (sorted, each once:
    hidden files such as ``._x.png`` and dot-folders, run folders and links back are left out);
    a missing path is a usage error."""
    from facekit.data.index import IMAGE_EXTENSIONS, image_files_under

    files: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            files.extend(image_files_under(item)[0])
        elif item.is_file():
            files.append(item)
        else:
            raise UsageError(f"{item}: no such file or folder")
    if not files:
        raise UsageError(f"no images found in {', '.join(map(str, inputs))} (looked for {', '.join(sorted(IMAGE_EXTENSIONS))})")
    return files


def unreadable(path: Path) -> str | None:
    """Why ``path`` cannot be read as training reads images (a GIF named .png too), or None."""
    from facekit.data.index import image_problem

    return image_problem(path)


def readable_images(inputs: Sequence[str | Path]) -> list[Path]:
    """The image files under ``inputs``; any unreadable one is a usage error naming it (before any work)."""
    files = expand_images(inputs)
    bad = {str(f): reason for f in files if (reason := unreadable(f))}
    if bad:
        first = next(iter(bad.items()))
        raise UsageError(f"{first[0]} is not a readable image ({first[1]}); {len(bad)} unreadable file(s) in all")
    return files


def run_loader(
    run: "Run", files: Sequence[str | Path], *, device: "torch.device", batch_size: int = 32, backend: str = "auto"
) -> "Loader":
    """Batches of ``files`` in order, at the run's input size and with its kept fold's normalization, never augmented.

    ``backend`` "auto" takes DALI where it works (the run's own --loader may not exist here, e.g.
    DALI on macOS; results agree within tolerance); "torch" gives exactly the pixels an exported
    bundle sees (:mod:`facekit.imaging`), what ``facekit predict`` uses.
    """
    from facekit.specs import Normalization
    from facekit.data.loaders import make_loader

    if batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1 (got {batch_size})")
    return make_loader(
        [str(f) for f in files],
        np.zeros(len(files), dtype=np.int64),
        batch_size=batch_size,
        input_size=int(run.config["input_size"]),
        normalization=Normalization.from_dict(run.fold_normalization()),
        train=False,
        rotate=0.0,
        device=device,
        backend=backend,
        num_workers=0 if backend == "torch" and len(files) <= batch_size else None,  # one batch: no worker processes
    )

"""Embeddings: what a model computes just before its final classifier (see :mod:`facekit.heads`).

- :func:`embedding_model` (from :mod:`facekit.heads`): a model as ``images -> (logits, embedding)``,
  also what gets exported;
- :func:`embed_files`: the embeddings of image files with a trained run, as ``facekit predict``
  preprocesses them; :func:`embed_images` is ``facekit embed`` (FILE.npy + FILE.json).

Embeddings are returned as the network computes them, not L2-normalized: normalize them
yourself for cosine similarity (``e / np.linalg.norm(e, axis=1, keepdims=True)``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch

from facekit.errors import FacekitError, UsageError
from facekit.heads import EmbeddingModel, embedding_dim, embedding_model

if TYPE_CHECKING:
    from facekit.runs import Run

__all__ = ["EmbeddingModel", "embed_files", "embed_images", "embedding_dim", "embedding_model", "read_embeddings"]

EMBEDDINGS_FORMAT = 1  # the version of the FILE.json that ``facekit embed`` writes beside FILE.npy


def embed_files(run: "Run | str | Path", paths: Sequence[str | Path], *, device: str = "auto", batch_size: int = 32) -> np.ndarray:
    """The embeddings of image files with a trained run: float32 (N, D), row i for ``paths[i]``, not normalized.

    The images are preprocessed exactly as ``facekit predict`` does (the run's input size and
    its kept fold's normalization). A missing or unreadable file, or a folder, is a
    :class:`UsageError` naming it, before any image is embedded.
    """
    from facekit.devices import resolve_device
    from facekit.inference import readable_images, run_loader
    from facekit.plugins import architectures
    from facekit.runs import Run

    run = run if isinstance(run, Run) else Run.open(run)
    folders = [str(p) for p in paths if Path(p).is_dir()]
    if folders:
        raise UsageError(f"{folders[0]} is a folder: embed_files takes image files (facekit embed also takes folders)")
    files = readable_images(paths) if len(paths) else []
    arch = architectures().get(run.config["arch"])
    torch_device = resolve_device(device)
    trained = run.load_model(device=torch_device)
    if not files:
        return np.zeros((0, embedding_dim(trained, arch, int(run.config["input_size"]))), dtype=np.float32)
    model = embedding_model(trained, arch).eval()
    loader = run_loader(run, files, device=torch_device, batch_size=batch_size)
    rows = []
    try:
        with torch.no_grad():
            for images, _ in loader:
                rows.append(model(images.to(torch_device))[1].float().cpu())
    finally:
        loader.close()
    return torch.cat(rows).numpy().astype(np.float32, copy=False)


def embedding_paths(out: str | Path) -> tuple[Path, Path]:
    """``FILE.npy`` and ``FILE.json`` for ``--out FILE`` (given with or without ``.npy``)."""
    out = Path(out)
    stem = out.with_suffix("") if out.suffix == ".npy" else out
    return stem.with_name(stem.name + ".npy"), stem.with_name(stem.name + ".json")


def embed_images(
    run_dir: str | Path | None, inputs: Sequence[str | Path], out: str | Path, *, device: str = "auto",
    batch_size: int = 32, force: bool = False,
) -> dict[str, Any]:
    """``facekit embed``: embed image files and folders with a run, write FILE.npy and FILE.json; returns FILE.json's content.

    FILE.npy holds float32 (N, D), row i the embedding of ``files[i]`` in FILE.json. An
    existing FILE.npy or FILE.json is kept (a usage error) unless ``force``.
    """
    from facekit.files import atomic_write, write_json
    from facekit.inference import readable_images
    from facekit.runs import Run

    npy, names = embedding_paths(out)
    if not force:
        taken = [str(p) for p in (npy, names) if p.exists()]
        if taken:
            raise UsageError(f"--out {out}: {taken[0]} exists; give another --out, or --force to replace it")
    run = Run.open(run_dir)
    files = readable_images(inputs)
    embeddings = embed_files(run, files, device=device, batch_size=batch_size)

    def write_npy(handle: Any) -> None:
        np.save(handle, embeddings)

    atomic_write(npy, write_npy)
    summary = {
        "format": EMBEDDINGS_FORMAT,
        "run": str(run.path),
        "arch": run.config["arch"],
        "count": int(embeddings.shape[0]),
        "dim": int(embeddings.shape[1]),
        "normalized": False,
        "embeddings": npy.name,
        "files": [str(f) for f in files],
    }
    write_json(names, summary)
    return summary


def read_embeddings(out: str | Path) -> tuple[np.ndarray, list[str]]:
    """What ``facekit embed --out FILE`` wrote: the (N, D) array and the N file names."""
    npy, names = embedding_paths(out)
    try:
        files = json.loads(names.read_text())["files"]
        embeddings = np.load(npy)
    except (OSError, ValueError, KeyError) as exc:
        raise FacekitError(f"{out}: not embeddings written by facekit embed ({exc.__class__.__name__}: {exc})") from None
    if embeddings.ndim != 2 or len(files) != embeddings.shape[0]:
        raise FacekitError(f"{out}: {npy.name} has {embeddings.shape[0]} rows but {names.name} names {len(files)} files")
    return embeddings, files

"""``facekit align``: dlib face alignment into 150x150 chips, one folder per identity.

Per image: dlib's HOG frontal face detector (the detection nearest the image centre wins),
5-point landmarks (``shape_predictor_5_face_landmarks.dat``), then
``dlib.get_face_chip(img, shape, size, padding)``, which is what dlib's face ResNet was trained
on. When no face is found the fixed box (68, 78)-(182, 192) of a 250x250 LFW image, scaled to
the image size, goes through the landmark predictor instead, and the image is listed.
Unreadable images are listed and skipped. Chips already written are skipped (resumable).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from facekit.api import FacekitError, UsageError

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".pgm", ".ppm", ".pbm", ".pnm", ".bmp"}
LFW_BOX = (68, 78, 182, 192)  # left, top, right, bottom on a 250x250 LFW image
MANIFEST = "align.json"

# per-process dlib models (loaded once per worker by _init_worker)
_MODELS: dict[str, object] = {}


@dataclass(frozen=True)
class Job:
    src: str
    dst: str
    rel: str  # identity/file, for reports


def _import_dlib():
    try:
        import dlib  # noqa: PLC0415
    except ImportError:
        raise FacekitError("dlib is not installed: pip install dlib-bin") from None
    return dlib


def _init_worker(shape_predictor: str, upsample: int) -> None:
    dlib = _import_dlib()
    _MODELS["dlib"] = dlib
    _MODELS["detector"] = dlib.get_frontal_face_detector()
    _MODELS["predictor"] = dlib.shape_predictor(shape_predictor)
    _MODELS["upsample"] = upsample


def fallback_box(width: int, height: int) -> tuple[int, int, int, int]:
    """The fixed LFW face box scaled to an image of this size."""
    sx, sy = width / 250.0, height / 250.0
    l, t, r, b = LFW_BOX
    return (round(l * sx), round(t * sy), round(r * sx), round(b * sy))


def read_rgb(path: str) -> np.ndarray:
    """An image file as an (H, W, 3) uint8 RGB array (grey and 16-bit images included)."""
    from PIL import Image, ImageOps  # noqa: PLC0415

    with Image.open(path) as im:
        im = ImageOps.exif_transpose(im)
        if im.mode in ("I;16", "I;16B", "I;16L", "I"):
            a = np.asarray(im, dtype=np.float64)
            hi = a.max() if a.size and a.max() > 0 else 1.0
            im = Image.fromarray((a * (255.0 / hi)).astype(np.uint8))
        return np.ascontiguousarray(np.asarray(im.convert("RGB"), dtype=np.uint8))


def chip_for(img: np.ndarray, size: int = 150, padding: float = 0.25):
    """Detect, find the 5 landmarks, and cut the aligned chip. Returns (chip, face_found)."""
    dlib = _MODELS["dlib"]
    h, w = img.shape[:2]
    dets = _MODELS["detector"](img, _MODELS["upsample"])
    if len(dets):
        cx, cy = w / 2.0, h / 2.0
        rect = min(dets, key=lambda r: (r.center().x - cx) ** 2 + (r.center().y - cy) ** 2)
        found = True
    else:
        rect = dlib.rectangle(*fallback_box(w, h))
        found = False
    shape = _MODELS["predictor"](img, rect)
    chip = dlib.get_face_chip(img, shape, size=size, padding=padding)
    return np.asarray(chip), found


def _write(chip: np.ndarray, dst: str) -> None:
    from PIL import Image  # noqa: PLC0415

    tmp = f"{dst}.part{os.getpid()}"
    im = Image.fromarray(chip)
    if dst.lower().endswith((".jpg", ".jpeg")):
        im.save(tmp, format="JPEG", quality=95)
    else:
        im.save(tmp, format="PNG")
    os.replace(tmp, dst)  # atomic: an interrupted run never leaves a half-written chip


def align_one(job: Job, size: int = 150, padding: float = 0.25) -> tuple[str, str, str]:
    """Align one image: returns (rel, status, detail), status in ok / fallback / unreadable."""
    try:
        img = read_rgb(job.src)
    except Exception as exc:  # noqa: BLE001 - any decoder failure means "unreadable"
        return job.rel, "unreadable", f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
    if img.size == 0 or min(img.shape[:2]) < 8:
        return job.rel, "unreadable", f"image too small ({img.shape[1]}x{img.shape[0]})"
    try:
        chip, found = chip_for(img, size, padding)
        os.makedirs(os.path.dirname(job.dst), exist_ok=True)
        _write(chip, job.dst)
    except Exception as exc:  # noqa: BLE001
        return job.rel, "failed", f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
    return job.rel, ("ok" if found else "fallback"), ""


def _align_worker(args: tuple[Job, int, float]) -> tuple[str, str, str]:
    return align_one(*args)


def plan_jobs(src: Path, out: Path, ext: str) -> tuple[list[Job], list[str]]:
    """Every image of SRC/<identity>/ and its chip path in OUT/<identity>/; plus skipped names."""
    jobs: list[Job] = []
    ignored: list[str] = []
    for ident in sorted(p for p in src.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = sorted(
            f for f in ident.iterdir()
            if f.is_file() and not f.name.startswith(".") and f.suffix.lower() in IMAGE_EXTS
        )
        stems: dict[str, int] = {}
        for f in files:
            stems[f.stem] = stems.get(f.stem, 0) + 1
        for f in files:
            # two images with one stem (a.jpg, a.png) keep their extension in the chip name
            stem = f.stem if stems[f.stem] == 1 else f"{f.stem}_{f.suffix.lstrip('.').lower()}"
            jobs.append(Job(str(f), str(out / ident.name / f"{stem}{ext}"), f"{ident.name}/{f.name}"))
    for f in sorted(src.iterdir()):
        if f.is_file() and f.suffix.lower() in IMAGE_EXTS:
            ignored.append(f.name)
    return jobs, ignored


def _load_manifest(out: Path) -> dict:
    try:
        return json.loads((out / MANIFEST).read_text())
    except (OSError, ValueError):
        return {}


def run_align(
    src: Path,
    out: Path,
    *,
    workers: int = 2,
    size: int = 150,
    padding: float = 0.25,
    upsample: int = 1,
    fmt: str = "jpg",
    shape_predictor: Path | None = None,
    trust_weights: bool = False,
    progress=None,
) -> dict:
    """Align SRC into OUT; returns the manifest (also written to OUT/align.json).

    ``progress``: an optional factory of a Rich ``Progress`` (used as a context manager).
    """
    from facekit_dlib.weights import SHAPE5_FILE, model_path, verify  # noqa: PLC0415

    src, out = Path(src), Path(out)
    if not src.is_dir():
        raise UsageError(f"source folder not found: {src}")
    if fmt not in ("jpg", "png"):
        raise UsageError(f"--format must be jpg or png, not {fmt!r}")
    if size < 32:
        raise UsageError("--size must be at least 32")
    if not 0 <= padding <= 2:
        raise UsageError("--padding must be between 0 and 2")
    src_r, out_r = src.resolve(), out.resolve()
    if out_r == src_r or src_r in out_r.parents:
        raise UsageError(f"the output folder must not be inside the source folder: {out}")
    if out_r in src_r.parents:  # its identity folders would sit beside the source, over whatever is there
        raise UsageError(f"the output folder must not hold the source folder: {out}; choose a folder of its own")
    if out.exists() and not out.is_dir():
        raise UsageError(f"output is not a folder: {out}")
    _import_dlib()
    sp = model_path(SHAPE5_FILE, shape_predictor)
    verify(sp, SHAPE5_FILE, trust_weights)

    jobs, ignored = plan_jobs(src, out, "." + fmt)
    if not jobs:
        raise UsageError(f"no images found in {src}/<identity>/ folders")
    out.mkdir(parents=True, exist_ok=True)
    previous = _load_manifest(out)
    for key, value in (("size", size), ("padding", padding), ("format", fmt)):
        if key in previous and previous[key] != value:
            raise UsageError(
                f"{out} holds chips made with --{key} {previous[key]}, not {value}: "
                "choose another output folder or empty this one"
            )
    todo = [j for j in jobs if not (os.path.isfile(j.dst) and os.path.getsize(j.dst) > 0)]
    done = {j.rel for j in jobs} - {j.rel for j in todo}

    results: list[tuple[str, str, str]] = []
    t0 = time.perf_counter()
    settings = {"size": size, "padding": padding, "upsample": upsample, "format": fmt,
                "landmarks": str(sp)}

    def summarize() -> dict:
        return _manifest(src=src_r, out=out_r, settings=settings, jobs=jobs, ignored=ignored,
                         results=results, done=done, previous=previous,
                         elapsed=time.perf_counter() - t0)
    workers = max(1, min(workers, len(todo) or 1))
    pool = None
    if len(todo) > 1 and workers > 1:
        import multiprocessing as mp  # noqa: PLC0415

        # fork (no re-import of __main__, fast start); the pool is started before the progress
        # display so no Rich thread is running when the workers fork
        method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
        pool = mp.get_context(method).Pool(workers, _init_worker, (str(sp), upsample))
    elif todo:
        _init_worker(str(sp), upsample)
    try:
        with (progress() if progress is not None else contextlib.nullcontext()) as bar:
            task = bar.add_task("aligning", total=len(todo)) if bar is not None else None
            if pool is not None:
                chunk = max(1, min(8, len(todo) // (workers * 16)))
                it = pool.imap_unordered(_align_worker, [(j, size, padding) for j in todo], chunk)
            else:
                it = (align_one(j, size, padding) for j in todo)
            for r in it:
                results.append(r)
                if bar is not None:
                    bar.advance(task)
    except KeyboardInterrupt:
        # keep what is known so far (a resumed run then still lists these fallbacks)
        _write_manifest(out, summarize() | {"interrupted": True})
        raise
    except (OSError, RuntimeError) as exc:
        raise FacekitError(f"alignment stopped ({exc}); run again to resume") from None
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
    manifest = summarize()
    _write_manifest(out, manifest)
    return manifest


def _manifest(*, src: Path, out: Path, settings: dict, jobs: list[Job], ignored: list[str],
              results: list[tuple[str, str, str]], done: set[str], previous: dict,
              elapsed: float) -> dict:
    """What OUT/align.json records: settings, counts, and the listed files."""
    by = {"ok": [], "fallback": [], "unreadable": [], "failed": []}
    for rel, status, detail in results:
        by[status].append((rel, detail))
    # chips skipped this time keep the fallback status an earlier run recorded
    prev_fallback = [r for r in previous.get("no_face_fallback", []) if r in done]
    return {
        "source": str(src),
        "output": str(out),
        **settings,
        "detector": "dlib HOG frontal_face_detector",
        "identities": len({j.rel.split("/", 1)[0] for j in jobs}),
        "images": len(jobs),
        "skipped_existing": len(done),
        "aligned": len(by["ok"]),
        "fallback": len(by["fallback"]),
        "unreadable": len(by["unreadable"]),
        "failed": len(by["failed"]),
        "chips": sum(1 for j in jobs if os.path.isfile(j.dst)),
        "seconds": round(elapsed, 2),
        "no_face_fallback": sorted(prev_fallback + [r for r, _ in by["fallback"]]),
        "unreadable_files": {r: d for r, d in sorted(by["unreadable"])},
        "failed_files": {r: d for r, d in sorted(by["failed"])},
        "ignored_top_level_files": ignored,
    }


def _write_manifest(out: Path, manifest: dict) -> None:
    tmp = out / (MANIFEST + ".part")
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    os.replace(tmp, out / MANIFEST)

"""A fused C kernel for the CPU: bilinear rotation about the centre + normalization, one pass.

On a small CPU the per-epoch work of a cached (or uncached) loader is dominated by rotating and
normalizing the uint8 images: ``grid_sample`` on a float copy costs ~75 CPU-ms per 64-image
batch at 224 px, DALI's CPU ``fn.rotate`` ~120 ms and PIL ~65 ms. This kernel reads the uint8
images where they are (the cache, or a decoded batch), samples each output pixel bilinearly and
writes ``x * scale + shift`` straight into the float32 NCHW output: ~19 CPU-ms per batch
(built with AVX2 + FMA where the CPU has them; ~24 ms without).

The math is that of ``F.grid_sample(mode="bilinear", padding_mode="zeros",
align_corners=False)`` on the grid :class:`RotateNormalize` builds, so results equal the torch
path to float rounding. The C source is compiled once with the system C compiler (``cc``) into
``$FACEKIT_CACHE_DIR/native/`` and loaded with ctypes, but only when the cached library belongs to
the user, nobody else can write it or its folder, and its sha256 is the one recorded beside it
at build time: anything else is rebuilt, never loaded (loading runs a library's code). Where
there is no compiler (or the build fails) :func:`kernel` returns None and callers use the
torch path. ``FACEKIT_NATIVE=0`` turns
the kernel off. The call releases the GIL, so a batch is split across threads.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import stat
import subprocess
import sys
import tempfile
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from facekit.files import atomic_write, is_own_file

_SOURCE = r"""
#include <stdint.h>
#include <math.h>

/* One output pixel, any position: bilinear with zero padding (grid_sample's rule). */
static inline void edge_pixel(const uint8_t *s0, const uint8_t *s1, const uint8_t *s2, int64_t h, int64_t w,
                              double ix, double iy, float *v)
{
    const double fx = floor(ix), fy = floor(iy);
    const int64_t x0 = (int64_t)fx, y0 = (int64_t)fy;
    const float ax = (float)(ix - fx), ay = (float)(iy - fy);
    const float wt[4] = {(1.0f - ax) * (1.0f - ay), ax * (1.0f - ay), (1.0f - ax) * ay, ax * ay};
    v[0] = v[1] = v[2] = 0.0f;
    for (int n = 0; n < 4; ++n) {
        const int64_t x = x0 + (n & 1), y = y0 + (n >> 1);
        if (x < 0 || x >= w || y < 0 || y >= h) continue;
        const int64_t a = y * w + x;
        v[0] += wt[n] * s0[a]; v[1] += wt[n] * s1[a]; v[2] += wt[n] * s2[a];
    }
}

/* out[k] = rotate(base[index[k]], angles[k]) * scale + shift, for k in [first, last).
   base: uint8 images (?, 3, h, w), contiguous; out: float32 (n, 3, h, w), contiguous.
   Rotation: output pixel p samples the input at R(-angle) p (centre origin, normalized
   coordinates, align_corners=False), bilinear, zero outside: grid_sample's arithmetic.
   In pixel units the source coordinates are affine in the column j:
     ix = bx + j * cos, iy = by + j * sin * h / w,
   so each row has an interval of columns whose four neighbours all lie inside the image; there
   the coordinates step in 32.32 fixed point and no bounds checks are needed. */
void facekit_rotate_normalize(const uint8_t *base, const int64_t *index, const float *angles,
                              int64_t first, int64_t last, int64_t h, int64_t w,
                              const float *scale, const float *shift, float *out)
{
    const int64_t plane = h * w;
    const double one = 4294967296.0;  /* 2^32 */
    for (int64_t k = first; k < last; ++k) {
        const uint8_t *src = base + index[k] * 3 * plane;
        float *dst = out + k * 3 * plane;
        const float a0 = scale[0], a1 = scale[1], a2 = scale[2], b0 = shift[0], b1 = shift[1], b2 = shift[2];
        if (angles[k] == 0.0f) {
            for (int c = 0; c < 3; ++c) {
                const uint8_t *s = src + c * plane;
                float *d = dst + c * plane;
                const float a = scale[c], b = shift[c];
                for (int64_t p = 0; p < plane; ++p) d[p] = (float)s[p] * a + b;
            }
            continue;
        }
        const float radians = angles[k] * (float)(3.14159265358979323846 / 180.0);
        const double cs = cosf(radians), sn = sinf(radians);
        const uint8_t *s0 = src, *s1 = src + plane, *s2 = src + 2 * plane;
        float *d0 = dst, *d1 = dst + plane, *d2 = dst + 2 * plane;
        const double x0n = 1.0 / (double)w - 1.0;  /* xn at j = 0 */
        const double dix = cs, diy = sn * (double)h / (double)w;
        const int64_t sx = (int64_t)llround(dix * one), sy = (int64_t)llround(diy * one);
        const int64_t xmax = (int64_t)(w - 1) << 32, ymax = (int64_t)(h - 1) << 32;
        for (int64_t i = 0; i < h; ++i) {
            const double yn = (double)(2 * i + 1) / (double)h - 1.0;
            const double bx = ((cs * x0n - sn * yn + 1.0) * (double)w - 1.0) * 0.5;
            const double by = ((sn * x0n + cs * yn + 1.0) * (double)h - 1.0) * 0.5;
            const int64_t fx0 = (int64_t)llround(bx * one), fy0 = (int64_t)llround(by * one);
            /* The interior interval: a generous estimate, then shrunk with the exact test. */
            double lo = 0.0, hi = (double)w;
            if (dix != 0.0) {
                double p = -bx / dix, q = ((double)(w - 1) - bx) / dix;
                if (p > q) { double t = p; p = q; q = t; }
                lo = fmax(lo, p); hi = fmin(hi, q);
            } else if (bx < 0.0 || bx >= (double)(w - 1)) hi = lo;
            if (diy != 0.0) {
                double p = -by / diy, q = ((double)(h - 1) - by) / diy;
                if (p > q) { double t = p; p = q; q = t; }
                lo = fmax(lo, p); hi = fmin(hi, q);
            } else if (by < 0.0 || by >= (double)(h - 1)) hi = lo;
            int64_t jlo = 0, jhi = 0;
            if (hi > lo) {
                jlo = (int64_t)floor(lo) - 1; jhi = (int64_t)ceil(hi) + 1;
                if (jlo < 0) jlo = 0;
                if (jhi > w) jhi = w;
            }
#define INSIDE(j) (fx0 + (j) * sx >= 0 && fx0 + (j) * sx < xmax && fy0 + (j) * sy >= 0 && fy0 + (j) * sy < ymax)
            while (jlo < jhi && !INSIDE(jlo)) ++jlo;
            while (jhi > jlo && !INSIDE(jhi - 1)) --jhi;
#undef INSIDE
            const int64_t row = i * w;
            float v[3];
            for (int64_t j = 0; j < jlo; ++j) {
                edge_pixel(s0, s1, s2, h, w, bx + (double)j * dix, by + (double)j * diy, v);
                d0[row + j] = v[0] * a0 + b0; d1[row + j] = v[1] * a1 + b1; d2[row + j] = v[2] * a2 + b2;
            }
            int64_t fx = fx0 + jlo * sx, fy = fy0 + jlo * sy;
            for (int64_t j = jlo; j < jhi; ++j, fx += sx, fy += sy) {
                const int64_t x0 = fx >> 32, y0 = fy >> 32;
                const float ax = (float)(uint32_t)fx * (float)(1.0 / 4294967296.0);
                const float ay = (float)(uint32_t)fy * (float)(1.0 / 4294967296.0);
                const int64_t a = y0 * w + x0, b = a + w;
                float t, u;
                t = s0[a] + ax * (float)(s0[a + 1] - s0[a]); u = s0[b] + ax * (float)(s0[b + 1] - s0[b]);
                d0[row + j] = (t + ay * (u - t)) * a0 + b0;
                t = s1[a] + ax * (float)(s1[a + 1] - s1[a]); u = s1[b] + ax * (float)(s1[b + 1] - s1[b]);
                d1[row + j] = (t + ay * (u - t)) * a1 + b1;
                t = s2[a] + ax * (float)(s2[a + 1] - s2[a]); u = s2[b] + ax * (float)(s2[b + 1] - s2[b]);
                d2[row + j] = (t + ay * (u - t)) * a2 + b2;
            }
            for (int64_t j = jhi; j < w; ++j) {
                edge_pixel(s0, s1, s2, h, w, bx + (double)j * dix, by + (double)j * diy, v);
                d0[row + j] = v[0] * a0 + b0; d1[row + j] = v[1] * a1 + b1; d2[row + j] = v[2] * a2 + b2;
            }
        }
    }
}
"""

_ARGTYPES = [ctypes.c_void_p] * 3 + [ctypes.c_int64] * 4 + [ctypes.c_void_p] * 3


def _cache_dir() -> Path:
    from facekit.data.index import cache_dir

    return cache_dir() / "native"


def _cpu_flags() -> list[str]:
    """Extra compiler flags this CPU supports: AVX2 + FMA on x86 Linux (~20% faster), else none.

    The flags are part of the cache key, so a library built here is never loaded on a CPU that
    lacks them (a shared home directory, a migrated container).
    """
    if sys.platform != "linux" or platform.machine() not in ("x86_64", "AMD64"):
        return []
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return ["-mavx2", "-mfma"] if {"avx2", "fma"} <= set(flags) else []


class UntrustedKernel(OSError):
    """The cached kernel (or its folder) could be someone else's: it is not loaded."""


def _build(target: Path, extra: list[str]) -> None:
    """Compile the kernel into ``target`` and record its sha256 beside it (``<target>.sha256``)."""
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if compiler is None:
        raise OSError("no C compiler")
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        source, built = Path(tmp) / "kernel.c", Path(tmp) / target.name
        source.write_text(_SOURCE)
        # No -ffast-math: results must not depend on the compiler's mood.
        subprocess.run(
            [compiler, "-O3", *extra, "-fPIC", "-shared", "-o", str(built), str(source), "-lm"],
            check=True, capture_output=True, timeout=120,
        )
        os.chmod(built, 0o644)  # whatever the umask: a group-writable library would be refused on load
        digest = _sha256(built)
        os.replace(built, target)  # atomic: concurrent processes never load a half-written file
    sidecar = _digest_file(target)
    atomic_write(sidecar, f"{digest}\n".encode())
    os.chmod(sidecar, 0o644)


def _digest_file(target: Path) -> Path:
    return target.with_name(target.name + ".sha256")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _safe(path: Path, *, folder: bool = False) -> bool:
    """``path`` is a real file (or folder) of the current user that nobody else can write."""
    return is_own_file(path, folder=folder, private=True)


def _verified(target: Path) -> bool:
    """The library at ``target`` is ours, private, and exactly what :func:`_build` wrote."""
    sidecar = _digest_file(target)
    if not (_safe(target) and _safe(sidecar)):
        return False
    try:
        return sidecar.read_text().strip() == _sha256(target)
    except OSError:
        return False


def _private_folder() -> Path:
    """The kernel's cache folder, created private; one that others can write is refused (OSError)."""
    folder = _cache_dir()
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    if _safe(folder, folder=True):
        return folder
    info = folder.lstat()
    if stat.S_ISDIR(info.st_mode) and info.st_uid == os.getuid():
        os.chmod(folder, stat.S_IMODE(info.st_mode) & ~0o022)  # our own folder made under a loose umask
        return folder
    raise UntrustedKernel(f"{folder} is not a private folder of this user")


def library_path(extra: tuple[str, ...]) -> Path:
    """Where the kernel built with the compiler flags ``extra`` is cached."""
    key = hashlib.sha256(f"{_SOURCE}{platform.machine()}{platform.system()}{extra}".encode()).hexdigest()[:16]
    return _cache_dir() / f"rotate_normalize-{key}.so"


def _load(extra: tuple[str, ...]):
    """Load the kernel built with ``extra`` flags, (re)building it unless the cached copy verifies."""
    _private_folder()
    target = library_path(extra)
    # Never dlopen an unverified file: loading runs its constructors, whoever planted it.
    if not _verified(target):
        target.unlink(missing_ok=True)
        _build(target, list(extra))
        if not _verified(target):
            raise UntrustedKernel(f"{target} does not match the hash recorded when it was built")
    return ctypes.CDLL(str(target)).facekit_rotate_normalize


@functools.lru_cache(maxsize=1)
def kernel():
    """The compiled ``facekit_rotate_normalize``, or None where it cannot be built (or trusted) here."""
    if os.environ.get("FACEKIT_NATIVE", "1") == "0" or sys.platform == "win32":
        return None
    untrusted = None
    for extra in dict.fromkeys((tuple(_cpu_flags()), ())):  # the tuned build, else the plain one
        try:
            function = _load(extra)
            break
        except UntrustedKernel as err:
            untrusted = err
        except (OSError, subprocess.SubprocessError, AttributeError):
            continue  # no compiler, or it cannot build this variant: try the next, else the torch path
    else:
        if untrusted is not None:
            warnings.warn(f"not loading the CPU rotation kernel: {untrusted}; using the slower torch path", RuntimeWarning, stacklevel=2)
        return None
    function.argtypes, function.restype = _ARGTYPES, None
    return function


@functools.lru_cache(maxsize=1)
def _pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=max(1, os.cpu_count() or 1), thread_name_prefix="facekit-rotate")


def rotate_normalize(
    store: torch.Tensor, index: torch.Tensor, angles: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor,
    out: torch.Tensor, threads: int,
) -> torch.Tensor:
    """``out[k] = rotate(store[index[k]], angles[k]) * scale + shift`` (uint8 NCHW in, float32 out)."""
    function = kernel()
    assert function is not None and store.dtype == torch.uint8 and store.is_contiguous() and out.is_contiguous()
    n, (channels, h, w) = len(index), store.shape[1:]
    index = index.to(torch.int64).contiguous()
    angles = angles.to(torch.float32).contiguous()
    # The C code trusts its arguments: check what would otherwise read or write out of bounds.
    if channels != 3 or len(angles) != n or tuple(out.shape) != (n, 3, h, w) or out.dtype != torch.float32:
        raise ValueError(f"rotate_normalize: store {tuple(store.shape)}, {n} indices, {len(angles)} angles, out {tuple(out.shape)}")
    if n and (int(index.min()) < 0 or int(index.max()) >= len(store)):
        raise IndexError(f"rotate_normalize: index out of range for {len(store)} images")
    scale, shift = scale.reshape(3).contiguous(), shift.reshape(3).contiguous()
    args = [store.data_ptr(), index.data_ptr(), angles.data_ptr()]
    tail = [h, w, scale.data_ptr(), shift.data_ptr(), out.data_ptr()]
    threads = max(1, min(threads, n))
    bounds = np.linspace(0, n, threads + 1).round().astype(int)
    if threads == 1:
        function(*args, 0, n, *tail)
    else:
        jobs = [_pool().submit(function, *args, int(a), int(b), *tail) for a, b in zip(bounds[:-1], bounds[1:])]
        for job in jobs:
            job.result()
    return out

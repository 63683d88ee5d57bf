"""Reader for dlib's DNN serialization (the ``.dat`` format of ``dlib::serialize(net)``).

Only what dlib's face-recognition ResNet (``dlib_face_recognition_resnet_model_v1.dat``) and
its relatives use is supported; anything else is a clear :class:`DatFormatError`.

Format (dlib/serialize.h and the layers' ``serialize`` functions):

- integers: one header byte (low 4 bits = number of bytes that follow, bit 0x80 = negative),
  then that many little-endian bytes;
- floats: an integer mantissa then an integer exponent, value = m * 2**e;
- strings: an integer length then ASCII; bools: the byte ``'0'`` or ``'1'``;
- tensors: version 2, then n, k, nr, nc, then n*k*nr*nc little-endian float32.

The file starts with the loss layer, the nested layer-wrapper versions and the input layer,
then every computational layer in forward order (input side first), each followed by three
flag bytes and three (empty) gradient tensors.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


class DatFormatError(ValueError):
    """The file is not a dlib DNN this reader understands."""


class _Reader:
    __slots__ = ("b", "p")

    def __init__(self, buf: bytes | memoryview):
        self.b = buf
        self.p = 0

    def _need(self, n: int) -> None:
        if self.p + n > len(self.b):
            raise DatFormatError(f"truncated file: needs {n} byte(s) at offset {self.p}")

    def int(self) -> int:
        self._need(1)
        h = self.b[self.p]
        self.p += 1
        size = h & 0x0F
        if size > 8:
            raise DatFormatError(f"bad integer header byte 0x{h:02x} at offset {self.p - 1}")
        self._need(size)
        v = int.from_bytes(self.b[self.p:self.p + size], "little")
        self.p += size
        return -v if h & 0x80 else v

    def float(self) -> float:
        m = self.int()
        e = self.int()
        return float(m) * 2.0 ** e

    def bool(self) -> bool:
        self._need(1)
        c = self.b[self.p]
        self.p += 1
        if c not in (0x30, 0x31):
            raise DatFormatError(f"bad bool byte 0x{c:02x} at offset {self.p - 1}")
        return c == 0x31

    def str(self) -> str:
        n = self.int()
        if n < 0 or n > 256:
            raise DatFormatError(f"bad string length {n} at offset {self.p}")
        self._need(n)
        try:
            s = bytes(self.b[self.p:self.p + n]).decode("ascii")
        except UnicodeDecodeError as exc:
            raise DatFormatError(f"bad string at offset {self.p}") from exc
        self.p += n
        return s

    def peek_str(self) -> str | None:
        p = self.p
        try:
            return self.str()
        except DatFormatError:
            return None
        finally:
            self.p = p

    def tensor(self) -> np.ndarray:
        v = self.int()
        if v != 2:
            raise DatFormatError(f"unsupported tensor version {v} at offset {self.p}")
        n, k, nr, nc = self.int(), self.int(), self.int(), self.int()
        cnt = n * k * nr * nc
        self._need(4 * cnt)
        a = np.frombuffer(self.b, dtype="<f4", count=cnt, offset=self.p).astype(np.float32)
        self.p += 4 * cnt
        return a.reshape(n, k, nr, nc)

    def alias(self) -> tuple[int, int, int, int]:
        v = self.int()
        if v != 1:
            raise DatFormatError(f"unsupported alias_tensor version {v} at offset {self.p}")
        return (self.int(), self.int(), self.int(), self.int())


def _read_layer(r: _Reader) -> dict[str, Any]:
    name = r.str()
    d: dict[str, Any] = {"type": name}
    if name.startswith("input_rgb_image"):
        d["avg"] = (r.float(), r.float(), r.float())
        if name == "input_rgb_image_sized":
            d["nr"], d["nc"] = r.int(), r.int()
    elif name in ("con_4", "con_5", "con_6"):
        d["params"] = r.tensor()
        d["num_filters"], d["nr"], d["nc"] = r.int(), r.int(), r.int()
        d["stride"] = (r.int(), r.int())
        d["padding"] = (r.int(), r.int())
        d["filters"], d["biases"] = r.alias(), r.alias()
        d["lr_mults"] = [r.float() for _ in range(4)]
        d["use_bias"] = r.bool() if name in ("con_5", "con_6") else True
        if name == "con_6":
            d["use_relu"] = r.bool()
    elif name in ("affine_", "affine_2"):
        d["params"] = r.tensor()
        d["gamma"], d["beta"] = r.alias(), r.alias()
        d["mode"] = r.int()
        if name == "affine_2":
            d["disabled"] = r.bool()
    elif name == "relu_":
        pass
    elif name == "relu_2":
        d["disabled"] = r.bool()
    elif name in ("max_pool_2", "avg_pool_2"):
        d["nr"], d["nc"] = r.int(), r.int()
        d["stride"] = (r.int(), r.int())
        d["padding"] = (r.int(), r.int())
    elif name == "add_prev_":
        pass
    elif name in ("fc_2", "fc_3"):
        d["num_outputs"], d["num_inputs"] = r.int(), r.int()
        d["params"] = r.tensor()
        d["weights"], d["biases"] = r.alias(), r.alias()
        d["bias_mode"] = r.int()
        d["lr_mults"] = [r.float() for _ in range(4)]
        if name == "fc_3":
            d["use_bias"] = r.bool()
    else:
        raise DatFormatError(f"unsupported layer type {name!r} at offset {r.p}")
    return d


@dataclass
class DlibNet:
    """A parsed dlib network: the loss layer, the input layer and the layers in forward order."""

    loss: dict[str, Any]
    input: dict[str, Any]
    layers: list[dict[str, Any]] = field(default_factory=list)
    bytes_read: int = 0
    size: int = 0

    def of_type(self, prefix: str) -> list[dict[str, Any]]:
        return [layer for layer in self.layers if layer["type"].startswith(prefix)]


def parse_dat(buf: bytes | memoryview) -> DlibNet:
    """Parse a whole dlib DNN file held in ``buf``; every byte must be consumed."""
    r = _Reader(buf)
    try:
        if r.int() != 1:
            raise DatFormatError("not a dlib DNN file (add_loss_layer version is not 1)")
        loss: dict[str, Any] = {"type": r.str()}
        if loss["type"] != "loss_metric_2":
            raise DatFormatError(f"unsupported loss layer {loss['type']!r}")
        loss["margin"], loss["dist_thresh"] = r.float(), r.float()
        # nested add_layer / add_tag_layer / add_skip_layer versions down to the input layer
        prefix: list[int] = []
        while True:
            s = r.peek_str()
            if s is not None and s.startswith("input_"):
                break
            prefix.append(r.int())
            if len(prefix) > 10_000:
                raise DatFormatError("no input layer found")
        inp = _read_layer(r)
        bottom_version = prefix[-1] if prefix else 0
        layers = []
        first = True
        while r.p < len(buf):
            d = _read_layer(r)
            d["flags"] = (r.bool(), r.bool(), r.bool())
            d["trailer_sizes"] = [r.tensor().size for _ in range(3)]
            if first and bottom_version >= 3:
                d["sample_expansion_factor"] = r.int()
            first = False
            layers.append(d)
    except IndexError as exc:  # pragma: no cover - _need guards most reads
        raise DatFormatError(f"truncated file at offset {r.p}") from exc
    if r.p != len(buf):  # pragma: no cover - the loop above runs to the end
        raise DatFormatError(f"trailing bytes: read {r.p} of {len(buf)}")
    return DlibNet(loss=loss, input=inp, layers=layers, bytes_read=r.p, size=len(buf))


def read_dat(path) -> DlibNet:
    with open(path, "rb") as fh:
        return parse_dat(fh.read())

"""Kernel maps: a convolution layer's weights drawn as small images (any ``nn.Module``).

Layers are numbered 1..M in module order (``model.named_modules()``), which is the order
``facekit kernels --list`` prints. In a kernel map, row i / column o is the kernel that output
channel o applies to input channel i; one colour scale, symmetric around 0, is shared by all.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from torch import nn

from facekit.errors import UsageError
from facekit.plots import save

# A kernel map stays readable up to about 64 kernels per row and 1024 in all: a wide layer
# shows its first 64 outputs, and as many inputs as fit (at least 16).
MAX_OUTPUTS = 64
MAX_KERNELS = 1024
MIN_INPUTS = 16
RGB_ROW = 16  # RGB kernels per row when they do not fit in one row of 24


def conv_layers(model: nn.Module) -> list[tuple[int, str, nn.Conv2d]]:
    """Every ``Conv2d`` in ``model`` as ``(index, name, module)``, 1-based, in module order."""
    convs = [(name, module) for name, module in model.named_modules() if isinstance(module, nn.Conv2d)]
    return [(index, name, module) for index, (name, module) in enumerate(convs, start=1)]


def conv_layer(model: nn.Module, layer: int) -> tuple[str, nn.Conv2d]:
    """The ``layer``-th conv layer (1-based), or a UsageError naming the valid range."""
    layers = conv_layers(model)
    if not layers:
        raise UsageError(f"this model ({type(model).__name__}) has no Conv2d layers to draw")
    if not 1 <= layer <= len(layers):
        raise UsageError(
            f"--layer {layer} is out of range: this model has conv layers 1..{len(layers)}"
            " (see `facekit kernels --list`)"
        )
    _, name, module = layers[layer - 1]
    return name, module


def _weights(module: nn.Conv2d) -> np.ndarray:
    """(out, in per group, kh, kw) as float numpy."""
    return module.weight.detach().float().cpu().numpy()


def describe_layer(name: str, layer: int, module: nn.Conv2d, weights: np.ndarray, shown: tuple[int, int]) -> str:
    """The layer's title: name, shape and, when a map is capped, which kernels it shows."""
    out_channels, in_channels, kh, kw = weights.shape
    groups = f", groups {module.groups}" if module.groups > 1 else ""
    text = f"Conv layer {layer} '{name}': {module.in_channels}->{module.out_channels}, kernel {kh}x{kw}{groups}"
    capped = [f"the first {n} of {total} {what}" for n, total, what in
              ((shown[0], out_channels, "outputs"), (shown[1], in_channels, "inputs")) if n < total]
    if capped:
        text += "\nshowing " + " and ".join(capped)
    return text


def capped_kernels(weights: np.ndarray) -> np.ndarray:
    """The kernels a map shows: the first MAX_OUTPUTS outputs, and as many inputs as fit in
    MAX_KERNELS (at least MIN_INPUTS)."""
    outputs = min(weights.shape[0], MAX_OUTPUTS)
    return weights[:outputs, : max(MIN_INPUTS, MAX_KERNELS // outputs)]


def _mosaic(tiles: np.ndarray, fill: float) -> np.ndarray:
    """Tiles (rows, cols, kh, kw, ...) laid out as one image with a 1-pixel ``fill`` gap between them.

    One image instead of one axes per kernel keeps a 64x16 grid fast to draw and evenly spaced.
    """
    rows, cols, kh, kw = tiles.shape[:4]
    mosaic = np.full((rows * (kh + 1) - 1, cols * (kw + 1) - 1, *tiles.shape[4:]), fill, dtype=float)
    for row in range(rows):
        for col in range(cols):
            mosaic[row * (kh + 1): row * (kh + 1) + kh, col * (kw + 1): col * (kw + 1) + kw] = tiles[row, col]
    return mosaic


def _label_tiles(axis, row_names: list[int], col_names: list[int], kh: int, kw: int,
                 row_label: str, col_label: str) -> None:
    """Tile names at the tiles' centres (every n-th when there are many)."""
    col_step, row_step = max(1, len(col_names) // 32), max(1, len(row_names) // 32)
    cols, rows = range(0, len(col_names), col_step), range(0, len(row_names), row_step)
    axis.set_xticks([c * (kw + 1) + (kw - 1) / 2 for c in cols], [col_names[c] for c in cols], fontsize=7)
    axis.set_yticks([r * (kh + 1) + (kh - 1) / 2 for r in rows], [row_names[r] for r in rows], fontsize=7)
    axis.tick_params(length=0, top=True, labeltop=True, bottom=False, labelbottom=False)
    axis.xaxis.set_label_position("top")
    axis.set_xlabel(col_label, fontsize=8)
    axis.set_ylabel(row_label, fontsize=8)
    for side in axis.spines.values():
        side.set_visible(False)


def _inches_per_pixel(kh: int, kw: int) -> float:
    # About 0.3 inch per kernel, so small layers stay legible and large ones stay on a page.
    return 0.3 / 4 if max(kh, kw) <= 5 else 0.3 / (max(kh, kw) + 1)


def _figure_size(rows: int, cols: int, kh: int, kw: int, extra_width: float) -> tuple[float, float]:
    scale = _inches_per_pixel(kh, kw)
    return (max(4.0, extra_width + scale * cols * (kw + 1)), max(2.2, 1.4 + scale * rows * (kh + 1)))


def plot_kernels(model: nn.Module, layer: int, out_path: Path, *, title: str | None = None) -> Path:
    """Every kernel of the ``layer``-th conv layer (capped: see MAX_KERNELS) as a grid: one row
    per input channel, one column per output channel, intensity = weight."""
    name, module = conv_layer(model, layer)
    weights = _weights(module)
    shown = capped_kernels(weights)
    outputs, inputs, kh, kw = shown.shape
    limit = float(np.abs(shown).max()) or 1.0  # all-zero weights: any symmetric scale will do
    mosaic = _mosaic(shown.transpose(1, 0, 2, 3), fill=np.nan)  # rows = inputs, columns = outputs

    figure = Figure(figsize=_figure_size(inputs, outputs, kh, kw, extra_width=1.6), layout="constrained")
    axis = figure.subplots()
    # Dark gaps between kernels: a weight near 0 is white, so white gaps would merge with it.
    cmap = matplotlib.colormaps["RdBu_r"].with_extremes(bad="#4d4d4d")
    image = axis.imshow(mosaic, cmap=cmap, vmin=-limit, vmax=limit, interpolation="nearest")
    in_label = "input channel" + (" (of its group)" if module.groups > 1 else "")
    _label_tiles(axis, list(range(inputs)), list(range(outputs)), kh, kw, in_label, "output channel")
    # The colour bar follows the image's own box (inset axes): beside it, as tall as it, or below
    # it when the image is too flat for a readable vertical bar (e.g. a depthwise layer).
    image_width = _inches_per_pixel(kh, kw) * mosaic.shape[1]
    image_height = _inches_per_pixel(kh, kw) * mosaic.shape[0]
    if image_height >= 0.6:
        bar_box = (1.0 + 0.15 / image_width, 0.0, 0.15 / image_width, 1.0)
        orientation = "vertical"
    else:
        bar_box = (0.0, -0.3 / image_height, min(1.0, 2.5 / image_width), 0.08 / image_height)
        orientation = "horizontal"
    colour_bar = figure.colorbar(image, cax=axis.inset_axes(bar_box), orientation=orientation)
    colour_bar.set_label("weight", fontsize=8)
    colour_bar.ax.tick_params(labelsize=7)
    axis.set_title(title or describe_layer(name, layer, module, weights, (outputs, inputs)), fontsize=9)
    return save(figure, out_path)


def plot_rgb_kernels(model: nn.Module, layer: int, out_path: Path, *, title: str | None = None) -> Path:
    """For a layer with 3 input channels: each output channel's kernel as one RGB image, scaled
    to 0..1 per kernel (min-max), so colour shows which input channels the kernel weighs most."""
    name, module = conv_layer(model, layer)
    weights = _weights(module)
    if weights.shape[1] != 3:
        raise UsageError(f"conv layer {layer} '{name}' has {weights.shape[1]} input channels; RGB kernels need 3")
    shown = weights[:MAX_OUTPUTS]
    low = shown.min(axis=(1, 2, 3), keepdims=True)
    span = shown.max(axis=(1, 2, 3), keepdims=True) - low
    scaled = np.divide(shown - low, span, out=np.full(shown.shape, 0.5), where=span > 0)
    outputs, _, kh, kw = shown.shape
    columns = outputs if outputs <= 24 else RGB_ROW
    rows = -(-outputs // columns)
    tiles = np.ones((rows * columns, kh, kw, 3))  # unused tiles in the last row stay white
    tiles[:outputs] = scaled.transpose(0, 2, 3, 1)
    mosaic = _mosaic(tiles.reshape(rows, columns, kh, kw, 3), fill=1.0)

    figure = Figure(figsize=_figure_size(rows, columns, kh, kw, extra_width=0.8), layout="constrained")
    axis = figure.subplots()
    axis.imshow(mosaic, interpolation="nearest")
    _label_tiles(axis, list(range(0, outputs, columns)), list(range(columns)), kh, kw,
                 "", "output channel" if rows == 1 else "output channel (row's first + column)")
    if rows == 1:
        axis.set_yticks([])
    description = describe_layer(name, layer, module, weights, (outputs, 3))
    axis.set_title(title or f"{description}\neach kernel as one RGB image (min-max scaled per kernel)", fontsize=9)
    return save(figure, out_path)


def write_kernel_maps(model: nn.Module, layer: int, out_dir: Path) -> list[Path]:
    """``kernels-layer-N.png``, plus ``kernels-layer-N-rgb.png`` for a layer with 3 inputs."""
    out_dir = Path(out_dir)
    _, module = conv_layer(model, layer)
    written = [plot_kernels(model, layer, out_dir / f"kernels-layer-{layer}.png")]
    if module.weight.shape[1] == 3:
        written.append(plot_rgb_kernels(model, layer, out_dir / f"kernels-layer-{layer}-rgb.png"))
    return written

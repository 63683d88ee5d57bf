"""Training augmentation pipelines: ordered :class:`~facekit.specs.AugmentationSpec` steps.

A pipeline is chosen with ``--augment name[:arg]`` (repeatable); the default is the report's
random rotation, ``rotate:15``. Geometric steps (crop, flip, rotate) run first, then the
others (color, erase), each group in the order given; normalization comes last.

Random draws: one generator per epoch, ``numpy.random.default_rng([seed, epoch])``, first draws
the epoch's permutation, then each step in pipeline order draws its parameters for every
position of that permutation (``spec.sample(rng, num_files, params)``). An image's draws thus
depend only on (seed, epoch, pipeline) and its position in the epoch, never on batch size,
shard or backend; and with ``rotate:DEG`` as the first step its angles are bit-identical to
those of the loaders before augmentations were plugins, so older runs resume and reproduce.
Validation and test images are never augmented: evaluation uses the empty pipeline.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from facekit.specs import AugmentationSpec, Normalization
from facekit.errors import UsageError
from facekit.plugins import Registry

DEFAULT_AUGMENT = ("rotate:15",)


def augment_args(augment: Sequence[str] | None, rotate: float | None) -> list[str]:
    """The ``--augment`` list a run uses: the one given, ``--rotate DEG`` as ``rotate:DEG``, or the default.

    Runs saved before ``--augment`` existed have only ``rotate``, so they resume with the
    rotation they were trained with. Giving both is a usage error: which one should win?
    """
    if augment is not None and rotate is not None:
        raise UsageError(f"--rotate {rotate:g} and --augment: give one; --rotate DEG is short for --augment rotate:DEG")
    if augment is not None:
        return list(augment)
    if rotate is not None:
        return [f"rotate:{repr(float(rotate)).removesuffix('.0')}"]  # exact: the angles must not change
    return list(DEFAULT_AUGMENT)


@dataclass(frozen=True)
class AugmentStep:
    """One parsed ``--augment`` argument."""

    spec: AugmentationSpec
    params: Any
    text: str  # "name" or "name:arg" as given, recorded in the run's config


@dataclass(frozen=True)
class EpochDraws:
    """One epoch's order and every step's draws, indexed by position in that order."""

    order: np.ndarray  # int64 permutation of the file positions
    samples: tuple[np.ndarray, ...]  # per step: float32 (num_files, k)

    def take(self, chosen: np.ndarray) -> tuple[np.ndarray, ...]:
        """The draws of epoch positions ``chosen`` (a shard, padded by wrapping around)."""
        return tuple(s[chosen] for s in self.samples)


class AugmentPipeline:
    """Ordered augmentation steps, the same in the torch and DALI loaders."""

    def __init__(self, steps: Sequence[AugmentStep] = ()):
        # Stable sort: geometric steps first, then the others, each in the order given.
        self.steps = tuple(sorted(steps, key=lambda step: not step.spec.geometric))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, AugmentPipeline) and self.steps == other.steps

    def __hash__(self) -> int:
        return hash(self.steps)

    def __repr__(self) -> str:
        return f"AugmentPipeline({self.to_args()})"

    @classmethod
    def from_args(cls, args: Sequence[str], registry: Registry) -> "AugmentPipeline":
        """Parse ``["rotate:15", "flip", "crop:0.8"]``; an unknown name or bad argument is a UsageError."""
        steps = []
        for text in args:
            name, _, arg = text.partition(":")
            spec = registry.get(name.strip())
            steps.append(AugmentStep(spec, spec.parse(arg.strip() or None), text))
        return cls(steps)

    def to_args(self) -> list[str]:
        """The steps as ``--augment`` arguments, in the order they run (for the run's config)."""
        return [step.text for step in self.steps]

    def sample(self, seed: int, epoch: int, num_files: int) -> EpochDraws:
        """The epoch's permutation and every step's draws, from ``default_rng([seed, epoch])``."""
        rng = np.random.default_rng([seed, epoch])
        order = rng.permutation(num_files)
        samples = []
        for step in self.steps:
            drawn = np.asarray(step.spec.sample(rng, num_files, step.params), dtype=np.float32)
            samples.append(drawn.reshape(num_files, -1))
        return EpochDraws(order, tuple(samples))

    def transform(self, images, samples: Sequence):
        """The steps alone on a uint8 NCHW batch with its draws (one (n, k) array per step).

        Runs on the batch's device; returns float32 NCHW grey levels (0-255), not normalized.
        Draws already on that device are used as they are (no copy, no wait for the device).
        """
        import torch

        out = images.to(torch.float32, copy=True)  # the steps may work in place
        for step, drawn in zip(self.steps, samples, strict=True):
            drawn = torch.as_tensor(drawn, dtype=torch.float32, device=out.device)
            out = step.spec.apply_torch(out, drawn, step.params)
        return out

    def apply(self, images, samples: Sequence, normalization: Normalization):
        """Augment a uint8 NCHW batch with its draws (one (n, k) array per step) and normalize.

        Runs on the batch's device; returns float32 NCHW ``(pixel / 255 - mean) / std``.
        """
        import torch

        out = self.transform(images, samples)
        mean = torch.tensor(normalization.mean, dtype=torch.float32, device=out.device).view(1, 3, 1, 1)
        std = torch.tensor(normalization.std, dtype=torch.float32, device=out.device).view(1, 3, 1, 1)
        # (x / 255 - mean) / std == x * scale + shift, in one pass over the batch.
        return torch.addcmul(-mean / std, out, 1.0 / (255.0 * std), out=out)

    @property
    def runs_in_dali(self) -> bool:
        """Whether every step has a DALI version (otherwise augment in torch after DALI decodes)."""
        return all(step.spec.apply_dali is not None for step in self.steps)

    def dali_graph(self, images, sample_nodes: Sequence):
        """Add the steps to a DALI graph: uint8 HWC ``images``, one draws node per step."""
        for step, drawn in zip(self.steps, sample_nodes, strict=True):
            images = step.spec.apply_dali(images, drawn, step.params)
        return images

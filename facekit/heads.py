"""A model's final classifier (its head): the embedding that enters it, and another head in its place.

Every architecture names its final classifier in its spec (``ArchitectureSpec.classifier``, a
dotted submodule name such as ``"fc"``): the classifier's input is the image's embedding, its
output the model's logits. From that one name:

- :func:`embedding_model` gives a model that returns both (what ``facekit embed`` runs and what
  gets exported);
- :func:`replace_classifier` puts a loss's own head (ArcFace, CosFace) in the classifier's place.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

import torch
from torch import nn

from facekit.errors import FacekitError

if TYPE_CHECKING:
    from facekit.specs import ArchitectureSpec


def classifier_name(arch_spec: "ArchitectureSpec") -> str:
    """The spec's classifier name; an architecture that names none gives no embedding (one line saying so)."""
    name = getattr(arch_spec, "classifier", None)
    if not isinstance(name, str) or not name:
        raise FacekitError(
            f"architecture {arch_spec.name!r} does not name its final classifier (ArchitectureSpec.classifier), "
            "so facekit cannot read its embeddings; its plugin needs updating (see 'Embeddings' in docs/plugins.md)"
        )
    return name


def classifier_of(model: nn.Module, arch_spec: "ArchitectureSpec") -> nn.Module:
    """The model's final classifier module, as its spec names it."""
    name = classifier_name(arch_spec)
    try:
        return model.get_submodule(name)
    except AttributeError:
        raise FacekitError(
            f"architecture {arch_spec.name!r} names its classifier {name!r}, but its model has no such submodule"
        ) from None


class EmbeddingModel(nn.Module):
    """``images -> (logits, embedding)``: the model's trunk, then its classifier, sharing the model's weights."""

    def __init__(self, trunk: nn.Module, classifier: nn.Module):
        super().__init__()
        self.trunk = trunk
        self.classifier = classifier

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        embedding = self.trunk(images)
        return self.classifier(embedding), embedding


def embedding_model(model: nn.Module, arch_spec: "ArchitectureSpec") -> EmbeddingModel:
    """A module mapping images to ``(logits, embedding)``; the logits are exactly ``model(images)``.

    It shares every parameter and buffer with ``model`` (no copy of the weights): the modules on
    the path to the classifier are shallow copies, the last of which holds an identity in the
    classifier's place, so the trunk returns the classifier's input. ``model`` itself is not
    changed. Put the returned module in eval mode before inference, as any model.
    """
    name = classifier_name(arch_spec)
    classifier = classifier_of(model, arch_spec)
    trunk = _shallow(model)
    parent = trunk
    *path, last = name.split(".")
    for part in path:
        child = _shallow(parent._modules[part])
        parent._modules[part] = child
        parent = child
    parent._modules[last] = nn.Identity()
    return EmbeddingModel(trunk, classifier)


def _shallow(module: nn.Module) -> nn.Module:
    """A copy of ``module`` that shares its parameters, buffers and children but has its own list of children."""
    clone = copy.copy(module)
    clone._modules = type(module._modules)(module._modules)
    return clone


def replace_classifier(model: nn.Module, arch_spec: "ArchitectureSpec", head: nn.Module) -> nn.Module:
    """Put ``head`` in the place of the model's final classifier (in place); returns ``model``.

    ``head`` maps embeddings (N, D) to logits (N, C); it then trains, checkpoints and loads
    under the classifier's name, like the rest of the model.
    """
    classifier_of(model, arch_spec)  # it exists
    *path, last = classifier_name(arch_spec).split(".")
    parent = model.get_submodule(".".join(path)) if path else model
    setattr(parent, last, head)
    return model


def embedding_dim(model: nn.Module, arch_spec: "ArchitectureSpec", input_size: int) -> int:
    """The width D of the model's embedding for ``input_size`` images (one zero image through it, in eval mode)."""

    probe = embedding_model(model, arch_spec)
    was_training = model.training
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    probe.eval()
    try:
        with torch.no_grad():
            _, embedding = probe(torch.zeros(1, 3, input_size, input_size, device=device))
    finally:
        model.train(was_training)  # the model's own train() (some keep a frozen backbone in eval mode)
    if embedding.dim() != 2:
        raise FacekitError(
            f"architecture {arch_spec.name!r}: the input of its classifier {arch_spec.classifier!r} has shape "
            f"{tuple(embedding.shape)}, not (N, D); name the module whose input is the flat embedding"
        )
    return int(embedding.shape[1])


def logit_scale(model: nn.Module, arch_spec: "ArchitectureSpec") -> float | None:
    """The scale ``s`` of a cosine head in the classifier's place (logits = s * cos), or None for any other classifier."""
    if not getattr(arch_spec, "classifier", None):
        return None
    scale = getattr(classifier_of(model, arch_spec), "logit_scale", None)
    return float(scale) if isinstance(scale, (int, float)) else None

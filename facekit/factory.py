"""The one way to build a model from its registered name (as timm's ``create_model``).

Training, reading a run back and the benchmarks all build their networks here, so an
architecture plugin is built the same way everywhere.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from facekit.errors import UsageError
from facekit.specs import ArchOptions

if TYPE_CHECKING:  # torch is heavy; importing this module stays cheap
    import torch
    from torch import nn


def create_model(
    name: str,
    *,
    num_classes: int,
    input_size: int | None = None,
    finetune: bool = False,
    weights: Path | None = None,
    trust_weights: bool = False,
    pretrained: bool = True,
    device: "torch.device | str | None" = None,
    channels_last: bool = False,
    loss: str | None = None,
    loss_options: dict[str, Any] | None = None,
) -> "nn.Module":
    """Build the registered architecture ``name`` with ``num_classes`` outputs.

    ``input_size`` None is the architecture's own. ``pretrained=False`` builds the same network
    randomly initialised (when a checkpoint will overwrite every weight anyway). The model is
    moved to ``device`` when given, and to channels-last memory format when asked.
    ``loss``: a loss that brings its own head (ArcFace, CosFace) puts it, made with
    ``loss_options``, in the place of the architecture's final classifier.
    An unknown name is a :class:`facekit.errors.UsageError` naming the known ones.
    """
    import torch

    from facekit.plugins import architectures, losses

    spec = architectures().get(name)
    loss_spec = losses().get(loss) if loss is not None else None
    options = ArchOptions(
        num_classes=num_classes,
        input_size=input_size or spec.input_size,
        finetune=finetune,
        weights=weights,
        trust_weights=trust_weights,
        pretrained=pretrained,
    )
    model = spec.build(options)
    if loss_spec is not None and loss_spec.head is not None:
        from facekit.heads import embedding_dim, replace_classifier

        if not spec.classifier:
            raise UsageError(
                f"--loss {loss_spec.name} brings its own head in place of the architecture's final classifier, but "
                f"architecture {name!r} does not name one (ArchitectureSpec.classifier); choose another --arch or --loss"
            )
        dim = embedding_dim(model, spec, options.input_size)
        replace_classifier(model, spec, loss_spec.make_head(dim, num_classes, loss_options))
    if device is not None:
        model = model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def create_run_model(
    config: Mapping[str, Any],
    num_classes: int,
    weights: Mapping[str, Any],
    *,
    device: "torch.device | str | None" = None,
    channels_last: bool = False,
) -> "nn.Module":
    """The architecture a run's config.json names, at the run's input size, holding ``weights`` (eval mode).

    Built without pretrained weights: the checkpoint holds every weight, so nothing is fetched.
    A loss with its own head (ArcFace) made the model's classifier, so the run's loss is rebuilt too.
    """
    model = create_model(
        config["arch"],
        num_classes=num_classes,
        input_size=int(config["input_size"]),
        finetune=bool(config.get("finetune", False)),
        pretrained=False,
        device=device,
        channels_last=channels_last,
        loss=config.get("loss"),
        loss_options=config.get("loss_options"),
    )
    model.load_state_dict(weights)
    model.eval()
    return model

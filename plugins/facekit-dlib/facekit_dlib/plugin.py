"""The facekit plugin module (entry point ``facekit: dlib = facekit_dlib.plugin``).

Importing it stays cheap: torch and dlib are imported only when a model is built or a command
runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from facekit.api import ArchitectureSpec, ArchOptions, Normalization, hookimpl

DLIB_NORMALIZATION = Normalization(
    mean=(122.782 / 255, 117.001 / 255, 104.298 / 255), std=(256 / 255,) * 3
)


BACKBONE_LR_SCALE = 0.1


def build_dlib_resnet(options: ArchOptions, head: str = "cosine"):
    """dlib's face ResNet (pretrained from the installed .dat unless ``pretrained=False``)."""
    from facekit_dlib.model import DlibFaceClassifier  # noqa: PLC0415
    from facekit_dlib.weights import load_backbone  # noqa: PLC0415

    model = DlibFaceClassifier(options.num_classes, head=head, finetune=options.finetune)
    if options.pretrained:
        load_backbone(model.backbone, options.weights, options.trust_weights)
    # fine-tuning moves the pretrained weights 10x slower than the new head (and decays toward them)
    return model.prepare_finetune(BACKBONE_LR_SCALE)


def build_dlib_resnet_linear(options: ArchOptions):
    return build_dlib_resnet(options, head="linear")


_DESC = (
    "dlib's face-recognition ResNet (29 convs, 5.6M params, pretrained on ~3M faces; "
    "weights from the installed face-recognition-models package) + a new {head} head on its "
    "128-d descriptor. Expects 150x150 chips from `facekit align`. Backbone frozen unless "
    "--finetune; its frozen-BN affine layers never train."
)


@hookimpl
def register_architectures(register):
    register(ArchitectureSpec(
        name="dlib-resnet", build=build_dlib_resnet,
        description=_DESC.format(head="cosine (centred, normalised, learned scale)"),
        input_size=150, normalization=DLIB_NORMALIZATION, pretrained=True,
        classifier="head",  # its input is dlib's 128-d face descriptor
    ))
    register(ArchitectureSpec(
        name="dlib-resnet-linear", build=build_dlib_resnet_linear,
        description=_DESC.format(head="centred linear") + " For comparison: it needs about --lr 1e-2 --weight-decay 0.",
        input_size=150, normalization=DLIB_NORMALIZATION, pretrained=True,
        classifier="head",  # its input is dlib's 128-d face descriptor
    ))


@hookimpl
def register_commands(cli):
    @cli.command("align")
    def align(
        src: Path = typer.Argument(..., metavar="SRC", help="Data set folder: one sub-folder of images per identity."),
        out: Path = typer.Argument(..., metavar="OUT", help="Folder for the aligned chips (same layout)."),
        workers: int = typer.Option(2, "--workers", "-j", min=1, metavar="N", help="Worker processes."),
        size: int = typer.Option(150, "--size", metavar="PIXELS", help="Chip size in pixels (dlib's ResNet wants 150)."),
        padding: float = typer.Option(0.25, "--padding", metavar="FRACTION", help="Padding around the face, a fraction of its size."),
        upsample: int = typer.Option(1, "--upsample", min=0, max=3, metavar="N", help="HOG detector upsampling passes."),
        fmt: str = typer.Option("jpg", "--format", metavar="FORMAT", help="Chip format: jpg (quality 95) or png."),
        shape_predictor: Optional[Path] = typer.Option(
            None, "--shape-predictor", metavar="FILE", help="Landmark model to use instead of the downloaded one."),
        trust_weights: bool = typer.Option(
            False, "--trust-weights", help="Accept a landmark model whose sha256 is not the published one."),
    ):
        """Detect, landmark and align every face into 150x150 chips (dlib HOG + 5 points)."""
        from facekit_dlib.cli import align_command  # noqa: PLC0415

        align_command(src, out, workers=workers, size=size, padding=padding, upsample=upsample,
                      fmt=fmt, shape_predictor=shape_predictor, trust_weights=trust_weights)


__all__ = ["build_dlib_resnet", "register_architectures", "register_commands"]

"""An example facekit plugin: a tiny CNN (`tinycnn`) and a one-line reporter (`oneline`)."""

from facekit.api import ArchitectureSpec, ArchOptions, ReporterSpec, hookimpl


def build_tinycnn(options: ArchOptions):
    from torch import nn

    return nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU(inplace=True),
        nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU(inplace=True),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, options.num_classes),
    )  # fmt: skip


def render_oneline(context) -> None:
    """Print the run's headline numbers on one line."""
    metrics = context.report.metrics
    context.console.print(
        f"{context.run.path.name}: accuracy {metrics.overall_accuracy:.3f}, balanced accuracy {metrics.balanced_accuracy:.3f}",
        highlight=False,
    )


@hookimpl
def register_architectures(register):
    # The last module of the Sequential is the classifier; its input, the 16-d pooled features, is the embedding.
    register(ArchitectureSpec("tinycnn", build_tinycnn, "A two-conv example network (facekit-example).", classifier="8"))


@hookimpl
def register_reporters(register):
    register(ReporterSpec("oneline", render_oneline, "Accuracy and balanced accuracy on one line.", default=False))

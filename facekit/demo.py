"""`facekit demo`: the whole product in a few minutes on a laptop CPU."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from facekit.config import TrainConfig
from facekit.engine import Progress, Trainer

DEMO_DATA = Path("runs") / "demo-data"


def run_demo(data: Path | None, out: Path | None, epochs: int, console: Console, progress: Progress) -> Path:
    """Train the baseline briefly on ``data`` (or a synthetic set made now), report it, draw its first kernels.

    ``progress`` shows the training (the CLI passes its console bars); the report goes to ``console``.
    """
    from facekit.kernels import write_kernel_maps
    from facekit.report import ReportContext, build_report, print_written, render_report, select_reporters
    from facekit.report_html import write_html_report
    from facekit.runs import Run

    if data is None:
        from facekit.data.synth import make_synthetic_dataset

        data = DEMO_DATA
        if not data.is_dir():
            make_synthetic_dataset(data, identities=8, per_identity=20, size=64, seed=0)
        console.print(f"No --data given: using a synthetic data set of 8 identities in {data} (made by `facekit data synth`).")
    config = TrainConfig(data=data, arch="baseline", epochs=epochs, batch_size=32, lr=1e-3, out=out)
    run_dir = Trainer(config, progress).train()

    run = Run(run_dir)
    context = ReportContext(run=run, report=build_report(run), console=console, out_dir=run_dir / "report")
    written = render_report(context, select_reporters())
    page = write_html_report(context, run_dir / "report" / "report.html")
    written += write_kernel_maps(run.load_model(), 1, run_dir / "report")
    print_written(console, written)
    console.print(f"\nOpen the report in a browser: {page.resolve().as_uri()}", highlight=False, soft_wrap=True)
    console.print(f"\nNext: `facekit report {run_dir}`, `facekit kernels {run_dir} --layer 3`, "
                  f"`facekit train --data YOUR_FACES --arch tronnet --loss weighted`.", highlight=False)
    return run_dir

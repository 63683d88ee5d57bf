"""Which backend ``--loader auto`` uses: the one measured faster, per device type and per use.

The two uses differ: a training step is slow next to decoding, so the loader's threads compete
with the model for the same cores, while evaluation (validation, the test split, ``facekit
predict``) runs a forward pass only and waits on decoding. So the rule is a table keyed by the
device type and the use, filled from ``python -m benchmarks.backends`` (both backends in one
process, alternating rounds; figures and load averages in docs/benchmarks.md, "Which loader
``--loader auto`` picks"):

- CPU, training -> ``dali``: feeding the baseline's training step (the cheapest built-in
  network, the one that waits most for data) on 2 cores, quiet (load 0.7), three alternating
  runs each: DALI 201-205 images/s against torch 161-206 from the files, 236-255 against
  218-221 from the decoded-image cache. For the slower networks the model is the bottleneck
  and both keep up.
- CPU, evaluation -> ``torch``: with no backward pass the loader sets the pace (the baseline
  evaluates at ~850 images/s), and the torch loader alone is the faster one on a CPU: 1,847
  against 1,000 images/s on the same 2 cores, quiet.
- CUDA, both -> ``dali``: decoding on the GPU (nvJPEG, the hardware JPEG decoder) against the
  torch loader's CPU decoding; on an H200 DALI's file pipeline fed ResNet18 at 19.8k images/s
  against 2.2-2.8k for a torch DataLoader on 16 cores. Not yet measured per use with this
  version: ``benchmarks.gpu`` measures it (its ``backends`` part) on the next GPU lent.
- Any other device (e.g. ``mps``): ``torch`` (DALI has no backend for it).

Where the choice is DALI and DALI does not import, ``auto`` falls back to ``torch``.
"""

from __future__ import annotations

TRAINING, EVALUATION = "training", "evaluation"

# (device type, use) -> backend; see the module docstring for the measurements behind each.
AUTO_BACKEND: dict[tuple[str, str], str] = {
    ("cpu", TRAINING): "dali",
    ("cpu", EVALUATION): "torch",
    ("cuda", TRAINING): "dali",
    ("cuda", EVALUATION): "dali",
}
FALLBACK = "torch"  # every device, and where DALI does not work


def auto_backend(device_type: str, *, train: bool, dali_works: bool) -> str:
    """The backend ``--loader auto`` uses on ``device_type`` for training (``train``) or evaluation."""
    choice = AUTO_BACKEND.get((device_type, TRAINING if train else EVALUATION), FALLBACK)
    return choice if choice != "dali" or dali_works else FALLBACK


def resolve_backend(requested: str, device_type: str, *, train: bool, dali_works: bool) -> str:
    """The backend a loader asked for ``requested`` ("auto", "dali" or "torch") uses."""
    requested = requested.lower()
    return auto_backend(device_type, train=train, dali_works=dali_works) if requested == "auto" else requested


def describe_backends(requested: str, device_type: str, *, dali_works: bool) -> str:
    """One line for ``facekit train``: which loader trains and which evaluates, and why."""
    training = resolve_backend(requested, device_type, train=True, dali_works=dali_works)
    evaluation = resolve_backend(requested, device_type, train=False, dali_works=dali_works)
    uses = f"{training} for training and evaluation" if training == evaluation else f"{training} for training, {evaluation} for evaluation"
    if requested.lower() != "auto":
        return f"loader: {uses} (--loader {requested.lower()})"
    return f"loader: {uses} (--loader auto: the faster measured on {device_type}{'' if dali_works else '; DALI does not work here'})"

"""Which backend ``--loader auto`` uses: the one measured faster, per device type and per use.

The two uses differ: a training step is slow next to decoding, so the loader's threads compete
with the model for the same cores, while evaluation (validation, the test split, ``facekit
predict``) runs a forward pass only and waits on decoding. So the rule is a table keyed by the
device type and the use, filled from ``python -m benchmarks.backends`` (both backends in one
process, alternating rounds; figures and load averages in docs/benchmarks.md, "Which loader
``--loader auto`` picks"):

- CPU, training -> ``torch``: feeding the baseline's training step (the cheapest built-in
  network, the one that waits most for data; 224 px, batch 32, one torch thread) on 2 shared
  cores, the two were even at load 3 (torch / DALI per round, median 0.96, range 0.53-1.31, 5
  rounds) and the torch loader was ahead from the files in two busier runs: 1.64 (0.93-2.44, 7
  rounds, load average 10-17) and 1.12 (0.88-1.26, 5 rounds, load 12-18). The step and the
  loader share the cores, so the loader's CPU cost per batch counts: DALI's CPU decode and
  antialiased resize cost ~60 CPU-ms per batch of 64 against ~40 for torchvision's. On a quiet
  machine (load 0.7, three alternating runs) the two were even: DALI 201-205 images/s against
  torch 161-206. For the slower networks the model is the bottleneck and both keep up.
- CPU, evaluation -> ``dali``: with no backward pass the loader sets the pace; in the same three
  runs the evaluation pass was faster fed by DALI: torch / DALI 0.62 (0.46-0.89, every round),
  0.66 (0.44-1.11) and 0.86 (0.42-1.16). The training differences are of the size the load alone
  makes: from a warm cache, where both backends run the same code, the ratio was 0.95, 1.43 and
  0.90. The loader alone, with nothing consuming it, was near even (1.14, 0.94, 1.15), while on
  the quiet machine it favoured torch (1,847 against 1,000 images/s): on an idle machine the
  evaluation entry may flip, and ``python -m benchmarks.backends`` is the measurement to rerun.
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
    ("cpu", TRAINING): "torch",
    ("cpu", EVALUATION): "dali",
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

"""What the training engine (:mod:`facekit.engine`) hands to the modules that own each part.

- :mod:`.accelerator`: the device, the precision and the memory layout a run trains in.
- :mod:`.rng`: seeding and the random-number state a checkpoint carries.
- :mod:`.optim`: the optimizer over an architecture's parameter groups; frozen batch norms.
- :mod:`.data_plan`: the index, the unknown people set aside and the split plan, before a run folder exists.
- :mod:`.probe`: one image through a freshly built model before anything is written.
- :mod:`.loops`: one training pass and one evaluation pass over a loader.
- :mod:`.divergence`: when the loss stops being a number, and what to tell the user.
- :mod:`.resume`: what a ``--resume`` may change, and the checks before it continues.
- :mod:`.progress`: what the engine tells its caller (the CLI draws bars from it).

This package imports nothing from the engine; the engine imports it (docs/architecture.md).
"""

"""Where and how a run computes: its device, mixed precision, memory layout and compiled steps.

As Lightning's accelerator connector does, this module turns what was asked (``--device auto``,
``--compile``, the config's ``amp``/``channels_last``) into what this machine does, once, before
training starts; the engine and the loops only read the result.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from facekit.compiling import resolve_compile_mode


@dataclass(frozen=True)
class Accelerator:
    """The device a rank trains on and how: ``amp_dtype`` None is float32, ``compile_mode`` None eager."""

    device: torch.device
    amp: bool
    amp_dtype: torch.dtype | None
    channels_last: bool
    compile_mode: str | None
    note: str | None = None  # why --compile was set aside, for the user

    @classmethod
    def choose(cls, device: torch.device, *, amp: bool | None, channels_last: bool | None, compile: str | None) -> "Accelerator":
        """Mixed precision and channels-last on CUDA unless turned off; bf16 where the GPU has it, else fp16."""
        on_cuda = device.type == "cuda"
        use_amp = on_cuda if amp is None else (amp and on_cuda)
        amp_dtype = (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16) if use_amp else None
        compile_mode, note = resolve_compile_mode(compile, device)
        return cls(
            device=device,
            amp=use_amp,
            amp_dtype=amp_dtype,
            channels_last=on_cuda if channels_last is None else channels_last,
            compile_mode=compile_mode,
            note=note,
        )

    def grad_scaler(self) -> torch.amp.GradScaler:
        """fp16 needs its loss scaled (bf16 and float32 do not): a scaler enabled only then."""
        return torch.amp.GradScaler(self.device.type, enabled=self.amp and not torch.cuda.is_bf16_supported())

    def prepare_batch(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        images = images.to(self.device, non_blocking=True)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return images, labels.to(self.device, non_blocking=True).long()

    def step_settings(self, batch_size: int) -> dict[str, Any]:
        """What a :class:`facekit.compiling.TrainStep` or ``EvalStep`` takes.

        Steps are cheap to make: torch.compile keeps its graphs per code object, so a new step
        (next epoch, next fold) reuses them.
        """
        return {"device_type": self.device.type, "amp_dtype": self.amp_dtype, "batch_size": batch_size, "mode": self.compile_mode}

    @property
    def batch_dtype(self) -> torch.dtype:
        """The dtype loaders hand batches in: the one the first convolution runs in."""
        return self.amp_dtype or torch.float32

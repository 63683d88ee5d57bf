"""Compiled training/evaluation steps (facekit.compiling): same results as eager, bounded compiles."""

import pytest
import torch
from torch import nn

from facekit.compiling import EvalStep, TrainStep, compile_problem, graphs_compiled, resolve_compile_mode
from facekit.errors import FacekitError, UsageError

BATCH = 8
CPU = torch.device("cpu")


def tiny_model(seed: int) -> nn.Module:
    # No conv bias before the batch norm: its gradient is zero up to rounding, and Adam turns
    # rounding noise into full-size steps, which would differ between any two kernels.
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5),
    )  # fmt: skip


def batches(sizes: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(1)
    return [(torch.randn(n, 3, 32, 32, generator=generator), torch.randint(0, 5, (n,), generator=generator)) for n in sizes]


def steps(model: nn.Module, mode: str | None) -> tuple[TrainStep, EvalStep]:
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    kwargs = {"device_type": "cpu", "amp_dtype": None, "batch_size": BATCH, "mode": mode}
    return TrainStep(model, nn.CrossEntropyLoss(), optimizer, scaler, **kwargs), EvalStep(model, nn.CrossEntropyLoss(), **kwargs)


def train(mode: str | None, data, epochs: int = 2, seed: int = 0):
    """Losses of every training and evaluation batch, the final model and the two steps."""
    model = tiny_model(seed)
    train_step, eval_step = steps(model, mode)
    losses = []
    for _ in range(epochs):
        model.train()
        losses += [float(train_step(x, y)[0]) for x, y in data]
        model.eval()
        losses += [float(eval_step(x, y)[0]) for x, y in data]
    return torch.tensor(losses), model, train_step, eval_step


def test_compiled_steps_match_eager_and_compile_two_graphs_in_all():
    data = batches([BATCH, BATCH, BATCH, 3])  # the last, smaller batch runs eagerly
    eager_losses, eager_model, *_ = train(None, data)
    before = graphs_compiled()
    losses, model, train_step, eval_step = train("default", data)
    # One graph for training, one for evaluation; two epochs and a partial batch add none.
    assert graphs_compiled() - before == 2
    assert train_step.compile_seconds > 0 and eval_step.compile_seconds > 0
    # Fused kernels round differently: after 8 Adam steps at lr 1e-2 the measured gap is ~5e-6.
    torch.testing.assert_close(losses, eager_losses, rtol=0, atol=1e-4)
    for name, value in eager_model.state_dict().items():
        torch.testing.assert_close(model.state_dict()[name], value, rtol=0, atol=1e-4, msg=name)

    # The next fold's fresh model of the same architecture reuses both graphs.
    before = graphs_compiled()
    _, _, train_step, eval_step = train("default", data, epochs=1, seed=1)
    assert graphs_compiled() == before
    assert train_step.compile_seconds == 0 and eval_step.compile_seconds == 0


def test_batches_of_another_size_run_eagerly_without_compiling():
    data = batches([5, 3])  # smaller than the batch size: nothing to compile for
    before = graphs_compiled()
    losses, _, train_step, eval_step = train("default", data, epochs=1)
    assert graphs_compiled() == before
    assert train_step.compile_seconds == 0 and eval_step.compile_seconds == 0
    assert torch.equal(losses, train(None, data, epochs=1)[0])


def test_disabled_torch_compile_runs_eagerly_with_identical_results():
    data = batches([BATCH, 3])
    torch._dynamo.reset()  # graphs compiled by earlier tests would still run while disabled
    with torch._dynamo.config.patch(disable=True):
        before = graphs_compiled()
        losses, _, train_step, _ = train("default", data, epochs=1)
        assert graphs_compiled() == before
    assert train_step.compile_seconds == 0
    assert torch.equal(losses, train(None, data, epochs=1)[0])


def test_compile_modes_resolve_per_device():
    assert resolve_compile_mode(None, CPU) == (None, None)
    assert resolve_compile_mode("default", CPU) == ("default", None)
    mode, note = resolve_compile_mode("reduce-overhead", CPU)
    assert mode == "default" and "CUDA graphs" in note
    with pytest.raises(UsageError, match="'max-speed' is not a compile mode: use default or reduce-overhead"):
        resolve_compile_mode("max-speed", CPU)


def test_without_a_cxx_compiler_compiling_for_the_cpu_is_a_usage_error():
    with torch._inductor.config.patch({"cpp.cxx": (None, "/nonexistent/c++")}):
        assert "C++ compiler" in compile_problem(CPU)
        with pytest.raises(UsageError, match=r"^--compile: compiling for the CPU needs a C\+\+ compiler .*without --compile$"):
            resolve_compile_mode("default", CPU)
    assert compile_problem(CPU) is None  # this machine has one: the tests above compile


def test_a_failing_compile_is_one_facekit_error(monkeypatch):
    train_step, _ = steps(tiny_model(0), "default")

    def broken(images, labels):
        raise torch._dynamo.exc.BackendCompilerFailed(broken, RuntimeError("no space left on device\ndetails"), None)

    monkeypatch.setattr(train_step, "compiled", broken)
    x, y = batches([BATCH])[0]
    with pytest.raises(FacekitError, match=r"^--compile: torch.compile failed \(RuntimeError: no space left on device\); train without"):
        train_step(x, y)

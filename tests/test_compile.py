"""Compiled training/evaluation steps (facekit.compiling): same results as eager, bounded compiles."""

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from facekit.compiling import EvalStep, TrainStep, compile_problem, graphs_compiled, resolve_compile_mode
from facekit.engine import Trainer, TrainConfig
from facekit.errors import FacekitError, UsageError
from facekit.runs import Run
from _testutil import InterruptAt

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


@pytest.mark.slow
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


@pytest.mark.slow
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
    # The mode's name is a setting of the run, checked with the others before anything runs.
    with pytest.raises(UsageError, match="'max-speed' is not a compile mode: use default or reduce-overhead"):
        TrainConfig(data=Path("faces"), compile="max-speed").validated()


def test_without_a_cxx_compiler_compiling_for_the_cpu_is_a_usage_error():
    with torch._inductor.config.patch({"cpp.cxx": (None, "/nonexistent/c++")}):
        assert "C++ compiler" in compile_problem(CPU)
        with pytest.raises(UsageError, match=r"^--compile: compiling for the CPU needs a C\+\+ compiler .*\(--no-compile when resuming\)$"):
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


# ------------------------------------------------------------------- the engine and the CLI
def compiled_config(data: Path, out: Path, **overrides) -> TrainConfig:
    settings = dict(
        data=data, out=out, arch="baseline", input_size=48, epochs=2, batch_size=8, lr=1e-3, rotate=0.0,
        loader="torch", workers=0, test_size=0.25, val_size=0.25, seed=3, compile="default",
    )  # fmt: skip
    return TrainConfig(**(settings | overrides))




@pytest.mark.slow
def test_a_compiled_run_records_its_compile_time_and_resumes_to_the_same_history(synthetic_dataset, tmp_path):
    torch._dynamo.reset()  # graphs live as long as the process: start without any
    straight = Run(Trainer(compiled_config(synthetic_dataset, tmp_path / "straight")).train())
    assert straight.config["compile"] == straight.config["compile_used"] == "default"
    first, second = straight.history
    assert first["compile_seconds"] > 0 and second["compile_seconds"] == 0  # compiled in epoch 1 only
    assert first["compile_seconds"] < first["seconds"]
    assert first["compile"] == second["compile"] == "default"

    with pytest.raises(KeyboardInterrupt):
        Trainer(compiled_config(synthetic_dataset, tmp_path / "broken"), InterruptAt(2)).train()
    resumed = Run(Trainer.resume(tmp_path / "broken"))
    assert [row["compile"] for row in resumed.history] == ["default", "default"]
    for a, b in zip(straight.history, resumed.history):
        assert a["train_loss"] == b["train_loss"] and a["val_loss"] == b["val_loss"]
    assert np.array_equal(straight.predictions()["probs"], resumed.predictions()["probs"])


@pytest.mark.slow
def test_cli_compiles_on_request_and_a_resume_may_turn_it_off(synthetic_dataset, tmp_path):
    from typer.testing import CliRunner

    from facekit.cli import app

    runner = CliRunner()
    fast = ["--data", synthetic_dataset, "--input-size", 48, "--epochs", 2, "--batch-size", 8, "--loader", "torch",
            "--workers", 0, "--rotate", 0, "--threads", 1]  # fmt: skip
    result = runner.invoke(app, list(map(str, ["train", *fast, "--out", tmp_path / "run", "--compile", "reduce-overhead"])))
    assert result.exit_code == 0, result.output
    assert "CUDA graphs, which need a CUDA device; compiling in the default mode on cpu" in " ".join(result.output.split())
    config = Run(tmp_path / "run").config
    assert (config["compile"], config["compile_used"]) == ("reduce-overhead", "default")

    with pytest.raises(KeyboardInterrupt):  # a compiled run stopped after its first epoch...
        Trainer(compiled_config(synthetic_dataset, tmp_path / "broken"), InterruptAt(2)).train()
    result = runner.invoke(app, ["train", "--resume", str(tmp_path / "broken"), "--no-compile", "--quiet"])
    assert result.exit_code == 0, result.output
    assert [row["compile"] for row in Run(tmp_path / "broken").history] == ["default", None]  # ...ends eagerly

    with pytest.raises(KeyboardInterrupt):  # and an eager one, resumed with a bare --compile, ends compiled
        Trainer(compiled_config(synthetic_dataset, tmp_path / "eager", compile=None), InterruptAt(2)).train()
    result = runner.invoke(app, ["train", "--resume", str(tmp_path / "eager"), "--quiet", "--compile"])
    assert result.exit_code == 0, result.output
    assert [row["compile"] for row in Run(tmp_path / "eager").history] == [None, "default"]

    result = runner.invoke(app, list(map(str, ["train", *fast, "--out", tmp_path / "x", "--compile", "--no-compile"])))
    assert result.exit_code == 2 and "--no-compile and --compile contradict each other" in result.output
    result = runner.invoke(app, list(map(str, ["train", *fast, "--out", tmp_path / "x", "--compile", "max-speed"])))
    assert result.exit_code == 2 and "--compile 'max-speed' is not a compile mode" in result.output


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("mode", ["default", "reduce-overhead"])
def test_compiled_steps_on_cuda_match_eager_under_bf16(mode):
    torch._dynamo.reset()
    cuda = torch.device("cuda")
    data = [(x.to(cuda), y.to(cuda)) for x, y in batches([BATCH, BATCH, BATCH, 3])]
    results = {}
    for step_mode in (None, mode):
        model = tiny_model(0).to(cuda)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
        kwargs = {"device_type": "cuda", "amp_dtype": torch.bfloat16, "batch_size": BATCH, "mode": step_mode}
        train_step = TrainStep(model, nn.CrossEntropyLoss(), optimizer, torch.amp.GradScaler("cuda", enabled=False), **kwargs)
        eval_step = EvalStep(model, nn.CrossEntropyLoss(), **kwargs)
        before, losses = graphs_compiled(), []
        for _ in range(3):
            model.train()
            losses += [float(train_step(x, y)[0]) for x, y in data]  # used before the next step: CUDA graphs reuse memory
            model.eval()
            losses += [float(eval_step(x, y)[0]) for x, y in data]
        results[step_mode] = torch.tensor(losses), graphs_compiled() - before
    (eager, _), (compiled, graphs) = results[None], results[mode]
    assert graphs == 2
    torch.testing.assert_close(compiled, eager, rtol=0, atol=2e-2)  # bf16 autocast: 8 bits of mantissa

"""The training loop's interface to a phase (distill/phase.py): a phase that gives only `load`,
`loss` and `save` trains with the documented defaults, and the loop calls a phase's methods in
the order its docstring gives, its extra state round-tripping through a resume."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from polyglot_distil.distill.phase import TrainingPhase
from polyglot_distil.distill.training import TrainSettings, train

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class Batches:
    """Four fixed batches of two rows of x; the target is 2x."""

    batches_per_epoch = 4

    def batch(self, index: int) -> dict:
        return {"x": torch.tensor([[index % 4 + 1.0], [-(index % 4) - 0.5]])}


class Doubling(TrainingPhase):
    """The smallest phase: a 1 x 1 Linear learning y = 2x; every other method is the default."""

    def load(self, accelerator) -> None:
        torch.manual_seed(0)
        self.model = torch.nn.Linear(1, 1)
        self.train_data = Batches()

    def loss(self, model, batch: dict):
        error = model(batch["x"]) - 2 * batch["x"]
        return (error ** 2).mean(), {"abs_error": error.abs().mean()}

    def save(self, model, folder) -> None:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, folder / "weights.safetensors")


class Recorded(Doubling):
    """Doubling with every hook overridden to record when the loop calls it."""

    evaluates, best_after = True, 2

    def __init__(self):
        self.calls: list[str] = []
        self.loaded_state: dict | None = None

    def before_step(self, step, model, optimizer) -> None:
        self.calls.append(f"before_step {step}")

    def loss(self, model, batch: dict):
        self.calls.append("loss")
        return super().loss(model, batch)

    def after_backward(self, model) -> None:
        self.calls.append("after_backward")

    def row_fields(self, step: int) -> dict:
        self.calls.append(f"row_fields {step}")
        return {"stage": "one" if step <= 2 else "two"}

    def evaluate(self, model, accelerator) -> dict:
        self.calls.append("evaluate")
        return {"eval_loss": float(abs(model.weight.item() - 2))}

    def save(self, model, folder) -> None:
        self.calls.append(f"save {folder.name.split('.')[1]}")  # atomic_dir writes into .NAME.XXXX.tmp
        super().save(model, folder)

    def extra_state(self) -> dict:
        self.calls.append("extra_state")
        return {"calls": torch.tensor([len(self.calls)])}

    def load_extra_state(self, tensors: dict) -> None:
        self.loaded_state = tensors


def _settings(out, **changes) -> TrainSettings:
    return TrainSettings(**{"out": str(out), "steps": 4, "batch_size": 2, "lr": 0.1, "eval_every": 2, "save_every": 2,
                            "log_every": 1, "progress": False, **changes})


def _rows(out, kind: str) -> list[dict]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["kind"] == kind]


def test_a_phase_with_only_load_loss_and_save_trains_with_the_defaults(tmp_path):
    result = train(_settings(tmp_path / "run"), {"phase": "test"}, Doubling())
    out = tmp_path / "run"
    assert result.step == 4 and (out / "final" / "weights.safetensors").is_file()
    assert not (out / "best").exists() and not _rows(out, "eval")  # no evaluation
    rows = _rows(out, "train")
    assert [r["lr"] for r in rows] == pytest.approx([0.075, 0.05, 0.025, 0.0])  # linear decay to 0, no warmup
    assert all("abs_error" in r and "stage" not in r for r in rows)  # the terms logged, no extra fields
    assert not list(out.glob("checkpoints/*/extra_state.safetensors"))


def test_the_loop_calls_the_phase_in_order_and_resumes_its_extra_state(tmp_path):
    phase = Recorded()
    train(_settings(tmp_path / "run"), {"phase": "test"}, phase)
    step = ["loss", "after_backward"]
    assert phase.calls == [
        "before_step 0", *step, "row_fields 1",
        "before_step 1", *step, "row_fields 2", "evaluate", "extra_state",  # step 2 <= best_after: no best/
        "before_step 2", *step, "row_fields 3",
        "before_step 3", *step, "row_fields 4", "evaluate", "save best", "extra_state",
        "save final"]
    out = tmp_path / "run"
    assert [r["stage"] for r in _rows(out, "train")] == ["one", "one", "two", "two"]
    assert json.loads((out / "best" / "best.json").read_text())["step"] == 4

    resumed = tmp_path / "resumed"  # stopped after step 2's checkpoint
    shutil.copytree(out, resumed)
    for name in ("checkpoints/step-4", "final", "best"):
        shutil.rmtree(resumed / name)
    again = Recorded()
    train(_settings(resumed, resume=True), {"phase": "test"}, again)
    assert again.loaded_state == {"calls": torch.tensor([10])}  # extra_state() as saved at step 2, its 10th call
    assert again.calls[0] == "before_step 2"
    assert (resumed / "final" / "weights.safetensors").read_bytes() == (out / "final" / "weights.safetensors").read_bytes()

"""polyglot_distil.budget: `run`'s rough time estimates (steps x measured per-step costs, scaled by
the model's arithmetic) and the warning for a training budget below the smallest one known to
beat chance; and the progress lines a training stage writes in a log file."""

from __future__ import annotations

import json

import pytest

from conftest import CORPORA, run_cli
from polyglot_distil import budget

E5_CONFIG = {"num_hidden_layers": 12, "hidden_size": 384, "intermediate_size": 1536, "vocab_size": 250_037}


def defaults(stage: str) -> dict:
    from polyglot_distil.distill.finetune import FinetuneSettings
    from polyglot_distil.distill.general import GeneralSettings
    from polyglot_distil.distill.task import TaskSettings
    from polyglot_distil.eval.xnli import XNLISettings

    import dataclasses

    settings = {"general": GeneralSettings, "finetune": FinetuneSettings, "task": TaskSettings, "eval": XNLISettings}
    fields = dataclasses.fields(settings[stage])  # the stage's defaults (its required paths left out)
    return {f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory() for f in fields
            if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING}


@pytest.fixture
def e5_config(tmp_path) -> dict:
    (tmp_path / "e5").mkdir()
    (tmp_path / "e5" / "config.json").write_text(json.dumps(E5_CONFIG))
    train = tmp_path / "train.tsv"
    train.write_text("premise\thypothesis\tentailment\n" * 5010)
    return {"model": str(tmp_path / "e5"), "student": {"layers": 6}, "train": str(train),
            "dev": str(CORPORA / "nli" / "dev-en.tsv")}


def options(config: dict, stage: str, **values) -> dict:
    found = defaults(stage)
    if stage in ("finetune", "task"):
        found.update(train=[config["train"]], dev=[config["dev"]])
    return {**found, **values}


def test_an_estimate_is_the_measured_step_at_the_measured_shape(e5_config):
    """At the measured settings, an estimate is steps x the measured seconds per step."""
    general = options(e5_config, "general", steps=100, batch_size=16, block_size=128)
    (found,) = budget.estimate(e5_config, {"general": general})
    assert found.stage == "general" and found.seconds == pytest.approx(100 * budget.MEASURED["general"][0])
    assert "100 steps of 16 x 128 tokens" in found.what and found.warning is None


def test_estimates_scale_with_steps_length_and_model_size(e5_config):
    def seconds(**values) -> float:
        general = options(e5_config, "general", **{"steps": 100, "batch_size": 16, "block_size": 128, **values})
        return budget.estimate(e5_config, {"general": general})[0].seconds

    assert seconds(steps=200) == pytest.approx(2 * seconds())
    assert 2 * seconds() < seconds(block_size=256) < 2.5 * seconds()  # attention grows with the square
    small = {**e5_config, "student": {"layers": 2}}
    general = options(e5_config, "general", steps=100, batch_size=16, block_size=128)
    assert budget.estimate(small, {"general": general})[0].seconds < seconds()


def test_a_task_teacher_budget_below_the_smallest_known_to_beat_chance_is_warned(e5_config):
    demo = options(e5_config, "finetune", epochs=2, batch_size=16, max_train_pairs=240)  # the demo's 30 steps
    yardstick = options(e5_config, "finetune", epochs=3, batch_size=32, reduce_vocab=True)  # its 470 steps
    (short,) = budget.estimate(e5_config, {"finetune": demo})
    (enough,) = budget.estimate(e5_config, {"finetune": yardstick})
    assert "30 steps of 16 pairs" in short.what and "below the smallest task-teacher budget known to beat chance" \
        in short.warning
    assert "471 steps of 32 pairs" in enough.what and enough.warning is None
    assert "2 epochs of 240" in short.what and "dev evaluations of 60 pairs" in short.what


def test_a_phase_2_budget_below_the_yardsticks_is_warned(e5_config):
    short = options(e5_config, "task", full_epochs=0.5, sparse_epochs=0.5)
    yardstick = options(e5_config, "task", full_epochs=1, sparse_epochs=1)
    assert "phase-2 budget known to beat chance" in budget.estimate(e5_config, {"task": short})[0].warning
    assert budget.estimate(e5_config, {"task": yardstick})[0].warning is None


def test_the_lines_say_they_are_rough_and_total_the_stages(e5_config):
    lines = budget.estimate_lines(e5_config, {
        "general": options(e5_config, "general", steps=30, batch_size=8, block_size=64),
        "finetune": options(e5_config, "finetune", epochs=2, batch_size=16, max_train_pairs=240)})
    assert lines[0].startswith("estimated time (rough:") and "docs/budgets.md" in lines[0]
    assert lines[1].startswith("  [general] ~") and lines[2].startswith("  [finetune] ~")
    assert lines[3].startswith("  total ~") and lines[4].startswith("warning: finetune: 30 steps")
    assert len(lines) == 5


def test_the_evaluation_is_sized_by_its_pairs_through_both_models(e5_config):
    xnli = {**defaults("eval"), "langs": "fr,en", "data": str(CORPORA / "nli"), "split": "test"}
    (found,) = budget.estimate(e5_config, {"eval": xnli})
    assert found.stage == "eval" and found.what == "120 pairs through the student and the teacher"
    full_alone = 120 * budget.DEV_SECONDS_PER_100_PAIRS / 100
    assert full_alone < found.seconds < 2 * full_alone  # and the 6-layer student, about half of it


def test_a_model_it_cannot_read_gets_no_estimate(e5_config):
    general = options(e5_config, "general")
    assert budget.estimate_lines({**e5_config, "model": "intfloat/multilingual-e5-small"}, {"general": general}) == []


def test_in_a_log_file_training_says_when_it_evaluates_on_dev(tiny_bert_dir, tmp_path, capsys, monkeypatch):
    """A dev evaluation can take minutes, during which the step count does not move."""
    monkeypatch.setenv("POLYGLOT_DISTIL_PROGRESS_SECONDS", "0.000001")
    assert run_cli("finetune", "--model", tiny_bert_dir, "--train", CORPORA / "nli" / "train-en.tsv",
                   "--dev", CORPORA / "nli" / "dev-en.tsv", "--out", tmp_path / "run", "--max-train-pairs", 32,
                   "--batch-size", 16, "--epochs", 1, "--max-length", 32) == 0
    err = capsys.readouterr().err.splitlines()
    assert "train: step 2: evaluating on dev" in err
    done = [line for line in err if line.startswith("train: step 2: dev_accuracy ")]
    assert len(done) == 1 and "(evaluated in " in done[0]
    assert any(line.startswith("train: 2/2 step (100%)") for line in err)  # the step lines, as before

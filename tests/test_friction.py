"""What a newcomer met: progress in a log file, a typo'd path, a config run from another folder,
a binary file counted as text, a pickle checkpoint, a lost marker in a long run."""

from __future__ import annotations

import io
import pickle
import shutil
from pathlib import Path

import pytest

from conftest import CORPORA, ROOT, run_cli
from polyglot_distil.errors import UserError
from polyglot_distil.progress import LogLines, progress

SAMPLE = CORPORA / "en" / "sample.txt"


def one_line(capsys, *args) -> str:
    assert run_cli(*args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1, err
    return err


# ---------------------------------------------------------------------------------------------
# Progress


def test_in_a_log_file_progress_is_a_line_with_rate_and_eta(monkeypatch):
    log = io.StringIO()  # not a terminal
    monkeypatch.setenv("POLYGLOT_DISTIL_PROGRESS_SECONDS", "0.000001")
    bar = progress(total=200, desc="train", unit="step", file=log)
    assert isinstance(bar, LogLines)
    for _ in range(100):
        bar.update(1)
    bar.close()
    last = log.getvalue().strip().splitlines()[-1]
    assert last.startswith("train: 100/200 step (50%)") and "step/s" in last and "ETA" in last


def test_progress_lines_are_spaced_and_can_be_switched_off(monkeypatch):
    log = io.StringIO()
    monkeypatch.setenv("POLYGLOT_DISTIL_PROGRESS_SECONDS", "3600")
    bar = progress(total=10, desc="count en", unit=" lines", file=log)
    bar.update(10)
    assert log.getvalue() == "", "nothing before the first interval"
    monkeypatch.setenv("POLYGLOT_DISTIL_PROGRESS_SECONDS", "0")
    assert progress(total=10, file=log).disable
    assert progress(total=10, file=log, show=False).disable


@pytest.mark.slow
def test_count_in_a_log_file_reports_bytes_of_a_known_total(monkeypatch, capsys, tmp_path, tiny_bert_dir):
    monkeypatch.setenv("POLYGLOT_DISTIL_PROGRESS_SECONDS", "0.000001")
    text = tmp_path / "en.txt"
    text.write_text(SAMPLE.read_text(encoding="utf-8") * 4, encoding="utf-8")
    assert run_cli("count", "--model", tiny_bert_dir, "--lang", f"en={text}", "--out", tmp_path / "c.parquet",
                   "--batch-lines", 64) == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("count en:")]
    size = text.stat().st_size
    assert lines and f"/{size:,} bytes" in lines[-1] and "ETA" in lines[-1], lines


# ---------------------------------------------------------------------------------------------
# Paths and configs


def test_a_typod_local_path_says_there_is_no_such_folder(capsys, tmp_path):
    err = one_line(capsys, "count", "--model", "models/nope", "--lang", f"en={SAMPLE}", "--out",
                   tmp_path / "c.parquet")
    assert "no folder models/nope" in err


def test_a_config_runs_from_any_folder(monkeypatch, capsys, tmp_path):
    monkeypatch.chdir(tmp_path)
    assert run_cli("run", ROOT / "configs" / "demo.yaml", "--check") == 0
    out = capsys.readouterr().out
    assert str(ROOT / "corpora" / "en" / "sample.txt") in out and str(ROOT / "out" / "demo" / "run") in out
    assert not (tmp_path / "out").exists()


def test_config_paths_resolve_against_the_config_folder_and_overrides_against_here(tmp_path, monkeypatch):
    from polyglot_distil.pipeline import load_config

    folder = tmp_path / "project" / "configs"
    folder.mkdir(parents=True)
    (folder / "c.yaml").write_text(
        "run_dir: ../out\nmodel: bert-base-multilingual-cased\ncorpora: {en: [../en.txt, 'hf:wikimedia/wikipedia']}\n"
        "task_data: {train: nli/train.tsv, dev: /abs/dev.tsv}\neval_data: ../xnli\ntrim: {keep_file: keep.txt}\n",
        encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    config = load_config(Path("project/configs/c.yaml"), ["languages.source=en", "heldout.en=[here.txt]"])
    assert config["run_dir"] == "project/out" and config["eval_data"] == "project/xnli"
    assert config["model"] == "bert-base-multilingual-cased", "a hub name stays one"
    assert config["corpora"]["en"] == ["project/en.txt", "hf:wikimedia/wikipedia"]
    assert config["task_data"] == {"train": "project/configs/nli/train.tsv", "dev": "/abs/dev.tsv"}
    assert config["trim"]["keep_file"] == "project/configs/keep.txt"
    assert config["heldout"]["en"] == ["here.txt"], "an override is relative to the current folder"


# ---------------------------------------------------------------------------------------------
# Bad data


def test_a_binary_file_is_not_counted_as_text(capsys, tmp_path, tiny_bert_dir):
    noise = tmp_path / "noise.txt"
    noise.write_bytes(bytes(range(128, 256)) * 800 + b"\n" + b"some text\n" * 10)
    err = one_line(capsys, "count", "--model", tiny_bert_dir, "--lang", f"en={noise}", "--out",
                   tmp_path / "c.parquet")
    assert f"en={noise}" in err and "not UTF-8 text" in err and "--allow-replacements" in err
    assert not (tmp_path / "c.parquet").exists()
    assert run_cli("count", "--model", tiny_bert_dir, "--lang", f"en={noise}", "--out", tmp_path / "c.parquet",
                   "--allow-replacements") == 0


def test_a_few_undecodable_bytes_in_real_text_are_fine(tmp_path, tiny_bert_dir):
    text = tmp_path / "en.txt"
    text.write_bytes(SAMPLE.read_bytes() + b"caf\xe9\n")
    assert run_cli("count", "--model", tiny_bert_dir, "--lang", f"en={text}", "--out", tmp_path / "c.parquet") == 0


def test_a_pickle_checkpoint_with_code_is_one_line(capsys, tmp_path, tiny_bert_dir):
    evil = tmp_path / "evil"
    evil.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt"):
        shutil.copy(tiny_bert_dir / name, evil / name)

    class Payload:
        def __reduce__(self):
            return (print, ("this code ran",))

    with open(evil / "pytorch_model.bin", "wb") as handle:
        pickle.dump(Payload(), handle)
    err = one_line(capsys, "student", "--teacher", evil, "--out", tmp_path / "s")
    assert f"cannot load model from {evil}" in err and "safetensors" in err
    assert "this code ran" not in capsys.readouterr().out


def test_a_damaged_safetensors_file_is_one_line(capsys, tmp_path, tiny_bert_dir):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_bert_dir, broken)
    data = (broken / "model.safetensors").read_bytes()
    (broken / "model.safetensors").write_bytes(data[: len(data) // 3])
    err = one_line(capsys, "student", "--teacher", broken, "--out", tmp_path / "s")
    assert "damaged or cut short" in err


# ---------------------------------------------------------------------------------------------
# A lost marker in a long run


def test_a_lost_marker_does_not_silently_replace_later_stages(tmp_path):
    from polyglot_distil.pipeline import Run, plan, validate

    config = {"run_dir": str(tmp_path / "run"), "model": "m", "languages": {"source": "en", "target": "en"},
              "corpora": {"en": [str(SAMPLE)]}, "stages": ["count", "trim"]}
    stages = validate(config)
    run = Run(config)
    (run.dir("trim") / "model").mkdir(parents=True)
    (run.dir("trim") / "DONE.json").write_text('{"argv_hash": "x"}', encoding="utf-8")
    # count has no marker (lost): it would run again, and so would trim, over a finished output
    with pytest.raises(UserError, match="--from count"):
        plan(run, stages, forced=False)
    steps = plan(run, stages, forced=True)  # --from count: the user asked for it
    assert [s.stage.name for s in steps if s.values is not None] == ["count", "trim"]

"""`polyglot-distil run`: configs validate before anything runs; the demo config runs end to end;
completed stages are skipped; an interrupted run resumes where it stopped."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, run_cli
from polyglot_distil.errors import UserError
from polyglot_distil.pipeline import STAGES, load_config, run_pipeline, validate

CONFIG_DIR = ROOT / "configs"
CONFIGS = sorted(CONFIG_DIR.glob("*.yaml"))


def test_the_shipped_configs_are_there():
    names = {p.name for p in CONFIGS}
    assert {"demo.yaml", "mbert-en-fr-trim.yaml", "mbert-en-sw-bistil.yaml", "xlmr-en-sw-bistil.yaml"} <= names


def test_each_stage_runs_the_command_the_command_line_declares():
    """The command layer declares each command; `run` (below it) is given the same words,
    settings dataclass and stage function, so a stage and its command cannot drift apart."""
    from polyglot_distil.cli import command_modules
    from polyglot_distil.pipeline import _stage_table

    commands = {module.COMMAND.words: module.COMMAND for module in command_modules()}
    for stage in _stage_table().values():
        declared = commands[stage.command.words]
        assert (stage.command.settings, stage.command.run) == (declared.settings, declared.run), stage.name


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_validates(path, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # relative paths in a config resolve against the config's folder
    config = load_config(path)
    stages = validate(config)
    assert stages, path
    header = path.read_text(encoding="utf-8").splitlines()[:12]
    assert any("polyglot-distil run configs/" + path.name in line for line in header), "header gives the command"
    assert any(line.startswith("# Compute") for line in header), "header gives the expected compute"
    assert any(line.startswith("# Needs first") for line in header), "header says what must exist first"


def write_config(tmp_path: Path, **changes) -> Path:
    config = yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text(encoding="utf-8"))
    config["run_dir"] = str(tmp_path / "run")
    config["model"] = str(tmp_path / "teacher")
    for key in ("corpora",):
        config[key] = {lang: [str((CONFIG_DIR / s).resolve()) for s in sources] for lang, sources in config[key].items()}
    config["task_data"] = {k: str((CONFIG_DIR / v).resolve()) for k, v in config["task_data"].items()}
    config["eval_data"] = str((CONFIG_DIR / config["eval_data"]).resolve())
    for dotted, value in changes.items():
        node = config
        *parents, last = dotted.split("__")
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = value
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


@pytest.mark.parametrize("changes,message", [
    ({"trim__min_cuont": 2}, "config key trim.min_cuont: unknown option"),
    ({"general__steps": "many"}, "config key general.steps: expected int, got 'many'"),
    ({"general__mixed_precision": "fp8"}, "config key general.mixed_precision: expected one of no, bf16, fp16"),
    ({"trim__keep_chars": "yes"}, "config key trim.keep_chars: expected true or false"),
    ({"trim__out": "elsewhere"}, "config key trim.out: set by the pipeline"),
    ({"languagez": {"source": "en"}}, "config key languagez: unknown"),
    ({"corpora__sw": ["corpora/sw/missing.txt"]}, "config key corpora.sw[0]: source file not found"),
    ({"task_data__train": "nli/missing-train.tsv"}, "config key task_data.train: file not found"),
    ({"stages": ["trim", "search", "student"], "student__init_layers": "0,1"},
     "config key student.init_layers: set by the search stage"),
    ({"stages": ["search", "general"], "general__layer_map": "1,3"}, "config key general.layer_map: set by the search"),
    ({"stages": ["search"], "search__layers": 3}, "config key search.layers: set by the pipeline"),
])
def test_bad_config_gives_one_line_naming_the_key(tmp_path, capsys, changes, message):
    path = write_config(tmp_path, **changes)
    assert run_cli("run", path) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "run").exists(), "nothing ran"


def test_missing_config_file_is_an_error(tmp_path, capsys):
    assert run_cli("run", tmp_path / "nope.yaml") == 2
    assert "config file not found" in capsys.readouterr().err


def test_overrides_replace_config_fields(tmp_path):
    path = write_config(tmp_path)
    config = load_config(path, ["general.steps=7", "languages.target=fr", "trim.keep_chars=false"])
    assert config["general"]["steps"] == 7 and config["languages"]["target"] == "fr"
    assert config["trim"]["keep_chars"] is False
    with pytest.raises(UserError, match="expected key=value"):
        load_config(path, ["general.steps"])


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """The demo config, run as a user whose first run stopped after phase 1 and who ran it again."""
    from polyglot_distil.models.smoke import build_smoke_model

    tmp = tmp_path_factory.mktemp("demo")
    samples = [ROOT / "corpora" / lang / "sample.txt" for lang in ("en", "fr", "de", "es", "sw")]
    build_smoke_model(tmp / "teacher", "bert", texts=samples, vocab_size=1000)
    path = write_config(tmp, general__steps=20, eval__repeats=1)
    first = run_pipeline(load_config(path, ["stages=[count,trim,verify,student,general]"]))
    markers = {s: (tmp / "run" / s / "DONE.json").stat().st_mtime_ns for s in first}
    with contextlib.redirect_stdout(io.StringIO()) as printed, contextlib.redirect_stderr(io.StringIO()) as warned:
        second = run_pipeline(load_config(path))
    return {"tmp": tmp, "path": path, "first": first, "second": second, "markers": markers,
            "second_output": printed.getvalue(), "second_errors": warned.getvalue()}


@pytest.mark.slow
def test_first_run_stops_after_phase_one(demo_run):
    assert demo_run["first"] == ["count", "trim", "verify", "student", "general"]


@pytest.mark.slow
def test_rerun_resumes_at_the_next_stage_without_redoing_earlier_ones(demo_run):
    assert demo_run["second"] == ["finetune", "task", "eval"]
    for stage, mtime in demo_run["markers"].items():
        assert (demo_run["tmp"] / "run" / stage / "DONE.json").stat().st_mtime_ns == mtime, stage


@pytest.mark.slow
def test_run_prints_each_stage_estimate_and_a_budget_that_cannot_beat_chance(demo_run):
    """Before the first stage: a rough time per stage about to run, and a warning for the demo's
    8 epochs of 240 pairs (the task teacher needs more to leave chance)."""
    lines = demo_run["second_output"].splitlines()
    first = lines.index(next(line for line in lines if line.startswith("estimated time (rough:")))
    assert [line.split("]")[0] for line in lines[first + 1:first + 4]] == ["  [finetune", "  [task", "  [eval"]
    assert lines[first + 4].startswith("  total ~")
    assert lines[first + 5] == "[count] done earlier, skipped"  # then the stages, in order
    warnings = [line for line in demo_run["second_errors"].splitlines() if line.startswith("warning:")]
    assert warnings[0].startswith("warning: finetune: 120 steps of 16 pairs (1,920 pairs seen) is below")
    assert warnings[1].startswith("warning: task: ") and len(warnings) == 2


@pytest.mark.slow
def test_demo_produces_an_evaluated_compact_model(demo_run):
    report = json.loads((demo_run["tmp"] / "run" / "eval" / "report" / "report.json").read_text())
    assert report["languages"] == ["sw", "en"]
    assert report["notes"][0].startswith("SMOKE RUN") and "SMOKE RUN" in (
        demo_run["tmp"] / "run" / "eval" / "report" / "REPORT.md").read_text()
    # every reported accuracy equals a plain recomputation: one pair at a time through the saved
    # folders with transformers alone, labels read through each model's own id2label
    for role, folder in (("model", demo_run["tmp"] / "run" / "task" / "run" / "best"),
                         ("teacher", demo_run["tmp"] / "run" / "finetune" / "run" / "best")):
        for lang in ("sw", "en"):
            expected = _plain_accuracy(folder, ROOT / "corpora" / "nli" / f"test-{lang}.tsv")
            assert report["results"][lang]["accuracy"][role] == pytest.approx(expected, abs=1e-12), (role, lang)
            assert report["results"][lang]["pairs"] == 60
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    best = demo_run["tmp"] / "run" / "task" / "run" / "best"
    model = AutoModelForSequenceClassification.from_pretrained(best)
    assert model.config.num_labels == 3 and AutoTokenizer.from_pretrained(best) is not None
    teacher = AutoModelForSequenceClassification.from_pretrained(demo_run["tmp"] / "teacher", num_labels=3)
    assert model.num_parameters() < teacher.num_parameters()


def _plain_accuracy(folder, tsv) -> float:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    right = total = 0
    for line in tsv.read_text(encoding="utf-8").splitlines():
        premise, hypothesis, gold = line.split("\t")
        with torch.no_grad():
            logits = model(**tokenizer(premise, hypothesis, truncation=True, max_length=128, return_tensors="pt")).logits
        right += model.config.id2label[int(logits.argmax())] == gold
        total += 1
    return right / total


@pytest.mark.slow
def test_completed_run_does_nothing_again(demo_run):
    assert run_pipeline(load_config(demo_run["path"])) == []


@pytest.mark.slow
def test_interrupted_training_stage_resumes_and_what_reads_it_runs_again(demo_run, capsys):
    import shutil

    run = demo_run["tmp"] / "run"
    (run / "general" / "DONE.json").unlink()
    # A lost marker does not silently replace the finished stages that read general's output ...
    with pytest.raises(UserError, match="would replace the output of task .*--from general"):
        run_pipeline(load_config(demo_run["path"]))
    # ... as a run interrupted in general, before task ever ran, has none:
    shutil.rmtree(run / "task")
    shutil.rmtree(run / "eval")
    assert run_pipeline(load_config(demo_run["path"])) == ["general", "task", "eval"]  # not finetune
    assert "[general] resuming where it stopped (checkpoints)" in capsys.readouterr().out


@pytest.mark.slow
def test_from_a_stage_runs_it_and_every_later_stage_again(demo_run):
    assert run_pipeline(load_config(demo_run["path"]), start="task") == ["task", "eval"]
    assert run_pipeline(load_config(demo_run["path"]), only="eval") == ["eval"]


@pytest.mark.parametrize("start,ran", [("trim", ["trim", "verify", "student", "general", "task", "eval"]),
                                       ("verify", ["verify"]), ("finetune", ["finetune", "task", "eval"])])
def test_from_a_stage_reruns_the_stages_that_read_it_not_a_completed_one_that_does_not(start, ran, tmp_path):
    """--from trim ran finetune again too (hours on a real model), which reads nothing trim makes."""
    from polyglot_distil.pipeline import MARKER, Run, plan, settings_hash, stage_values

    config = load_config(write_config(tmp_path))
    stages, run = validate(config), Run(config)
    for stage in stages:  # every stage completed with these settings
        run.dir(stage.name).mkdir(parents=True)
        done = {"argv_hash": settings_hash(stage_values(run, stage), stage)}
        (run.dir(stage.name) / MARKER).write_text(json.dumps(done), encoding="utf-8")
    assert all(step.values is None for step in plan(run, stages, forced=False))
    names = [s.name for s in stages]
    steps = plan(run, stages[names.index(start):], forced=True)  # as run_pipeline slices them for --from
    assert [s.stage.name for s in steps if s.values is not None] == ran


@pytest.mark.slow
def test_editing_an_option_that_changes_no_result_neither_reruns_nor_refuses(demo_run):
    edits = ["count.no_progress=true", "general.log_every=3", "general.keep_checkpoints=5", "task.log_every=7",
             "finetune.no_progress=true"]
    assert run_pipeline(load_config(demo_run["path"], edits)) == []


@pytest.mark.slow
def test_a_damaged_completion_marker_is_one_line_naming_it(demo_run):
    marker = demo_run["tmp"] / "run" / "trim" / "DONE.json"
    kept = marker.read_bytes()
    try:
        marker.write_bytes(kept[: len(kept) // 2])  # cut short, as by a full disk
        with pytest.raises(UserError, match=r"trim/DONE\.json: damaged .*remove it or pass --from trim"):
            run_pipeline(load_config(demo_run["path"]))
    finally:
        marker.write_bytes(kept)


@pytest.mark.slow
def test_changed_settings_of_a_completed_stage_are_refused(demo_run):
    with pytest.raises(UserError, match=r"stage trim was completed with other settings \(--min-count: 2 -> 3\)"):
        run_pipeline(load_config(demo_run["path"], ["trim.min_count=3"]))


def test_stages_are_in_pipeline_order():
    assert STAGES == ("count", "trim", "verify", "search", "student", "general", "finetune", "task", "eval")


@pytest.mark.slow
def test_search_runs_only_when_named_and_its_mapping_reaches_student_and_both_phases(tmp_path, capsys):
    """A run whose stages name search: its students take the student section's shape and its runs
    the general section's recipe; the mapping it writes is the student's init layers and phase 1's
    and phase 2's layer map. A re-run skips it; without it in stages nothing takes a mapping."""
    from polyglot_distil.models.smoke import build_smoke_model
    from polyglot_distil.pipeline import Run, stage_values

    samples = [ROOT / "corpora" / lang / "sample.txt" for lang in ("en", "fr", "sw")]
    build_smoke_model(tmp_path / "teacher", "bert", texts=samples, vocab_size=600, num_layers=4)
    path = write_config(tmp_path, general__steps=3, general__eval_every=3, general__save_every=3,
                        general__block_size=32, general__attention_weight=0, student__layers=2,
                        search={"steps": 2, "candidates": "0,2;2,3;0,1", "batch_size": 4, "heldout_blocks": 4,
                                "max_lines": 100, "no_progress": True})
    assert [s.name for s in validate(load_config(path))] == [s for s in STAGES if s != "search"]
    plain = load_config(path)
    assert not any(k in stage_values(Run(plain), s) for s in validate(plain) for k in ("init_layers", "layer_map"))

    config = load_config(path, ["stages=[count,trim,search,student,general,task]"])
    stages = {s.name: s for s in validate(config)}
    search = stage_values(Run(config), stages["search"])
    assert (search["layers"], search["block_size"], search["attention_weight"]) == (2, 32, 0.0)
    assert stage_values(Run(config), stages["task"])["layer_map"] == str(tmp_path / "run" / "search" / "run")
    assert run_pipeline(load_config(path, ["stages=[count,trim,search,student,general]"])) == [
        "count", "trim", "search", "student", "general"]
    found = json.loads((tmp_path / "run" / "search" / "run" / "search.json").read_text())
    assert len(found["tried"]) == 3
    mapping = [int(x) for x in (tmp_path / "run" / "search" / "run" / "layer_map.txt").read_text().split(",")]
    assert mapping == found["best"] and min(found["tried"], key=lambda r: r["criterion"])["layer_map"] == mapping
    assert mapping != [1, 3]  # not the default mapping (4 teacher layers, 2 student layers)
    student = json.loads((tmp_path / "run" / "student" / "model" / "student.json").read_text())
    assert student["init_layers"] == mapping
    general = tmp_path / "run" / "general" / "run"
    assert json.loads((general / "final" / "distillation.json").read_text())["layer_map"] == mapping
    assert json.loads((general / "run_config.json").read_text())["config"]["layer_map"] == ",".join(map(str, mapping))
    assert run_pipeline(load_config(path, ["stages=[count,trim,search,student,general]"])) == []

    # An interrupted search (no marker, one candidate unscored) resumes: the scored ones are kept.
    search_dir = tmp_path / "run" / "search" / "run"
    (tmp_path / "run" / "search" / "DONE.json").unlink()
    for name in ("search.json", "layer_map.txt"):
        (search_dir / name).unlink()
    (search_dir / "candidates" / "0-1" / "result.json").unlink()
    kept = (search_dir / "candidates" / "0-2" / "result.json").stat().st_mtime_ns
    capsys.readouterr()
    assert run_pipeline(load_config(path, ["stages=[count,trim,search]"])) == ["search"]
    out = capsys.readouterr().out
    assert "[search] resuming where it stopped (search_config.json)" in out and "--resume" in out
    assert (search_dir / "candidates" / "0-2" / "result.json").stat().st_mtime_ns == kept
    again = json.loads((search_dir / "search.json").read_text())
    assert again["best"] == found["best"] and [r["layer_map"] for r in again["tried"]] == [[0, 2], [2, 3], [0, 1]]
    assert [r["criterion"] for r in again["tried"]] == pytest.approx([r["criterion"] for r in found["tried"]], rel=1e-5)


@pytest.mark.slow
def test_the_pipeline_runs_under_accelerate_launch_with_two_processes(tmp_path):
    """Training stages on both (gloo) processes, the others on the main one, as on several GPUs;
    with every stage, the search too."""
    import os
    import subprocess
    import sys

    from polyglot_distil.models.smoke import build_smoke_model

    samples = [ROOT / "corpora" / lang / "sample.txt" for lang in ("en", "fr", "sw")]
    build_smoke_model(tmp_path / "teacher", "bert", texts=samples, vocab_size=600, num_layers=2)
    path = write_config(tmp_path, general__steps=8, student__layers=1, eval__no_efficiency=True,
                        eval__repeats=None, finetune__epochs=1, task__full_epochs=1, task__sparse_epochs=1,
                        stages=list(STAGES), search={"steps": 2, "batch_size": 4, "heldout_blocks": 4, "max_lines": 200,
                                                     "no_progress": True})
    accelerate = Path(sys.executable).with_name("accelerate")
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "-m",
                             "polyglot_distil", "run", str(path)], capture_output=True, text=True, env=env,
                            cwd=ROOT, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count(f"pipeline done ({', '.join(STAGES)})") == 1
    assert all((tmp_path / "run" / stage / "DONE.json").is_file() for stage in STAGES)
    found = json.loads((tmp_path / "run" / "search" / "run" / "search.json").read_text(encoding="utf-8"))
    assert [r["layer_map"] for r in found["tried"]] == [[0], [1]]  # the 2 mappings of 1 layer onto 2
    student = json.loads((tmp_path / "run" / "student" / "model" / "student.json").read_text(encoding="utf-8"))
    assert student["init_layers"] == found["best"]
    metrics = (tmp_path / "run" / "general" / "run" / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    assert json.loads(metrics[-1])["step"] == 8


def test_only_and_from_together_are_refused(tmp_path, capsys):
    assert run_cli("run", write_config(tmp_path), "--only", "trim", "--from", "general") == 2
    assert "contradict" in capsys.readouterr().err


def test_check_prints_pasteable_commands_of_the_planned_stages_only(tmp_path, capsys):
    import shlex

    path = write_config(tmp_path, trim__keep=["[unused1]", "a&b?"])
    assert run_cli("run", path, "--check", "--from", "general") == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[")]
    assert [line.split("]")[0][1:] for line in lines] == ["general", "finetune", "task", "eval"]
    assert run_cli("run", path, "--check", "--only", "trim") == 0
    (line,) = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[")]
    argv = shlex.split(line.split("] ", 1)[1])  # what a shell would give the command
    assert argv[argv.index("--keep") + 1] == "[unused1]" and "a&b?" in argv


def test_a_yaml_syntax_error_names_file_line_and_column(tmp_path, capsys):
    path = tmp_path / "broken.yaml"
    path.write_text("run_dir: out\nmodel: m\ntrim: {min_count: 2, keep_chars: [true}\n", encoding="utf-8")
    assert run_cli("run", path) == 2
    err = capsys.readouterr().err
    assert f"{path}:3:" in err and "not valid YAML" in err


def test_trust_remote_code_reaches_every_stage(tmp_path):
    from polyglot_distil.pipeline import Run, stage_values

    config = load_config(write_config(tmp_path, trust_remote_code=True))
    run = Run(config)
    for stage in validate(config):
        assert stage_values(run, stage).get("trust_remote_code") is True, stage.name
    config = load_config(write_config(tmp_path))
    assert not any(stage_values(Run(config), s).get("trust_remote_code") for s in validate(config))


def test_an_option_that_changes_no_result_leaves_a_completed_stage_done(tmp_path):
    """eval's --teacher-cache (exact predictions, read back) and general's --token-cache are left
    out of the settings a marker keeps: `sizes` adding them does not make completed stages run
    again; other options count."""
    from polyglot_distil.pipeline import Run, settings_hash, stage_values

    def hashes(**changes):
        config = load_config(write_config(tmp_path, **changes))
        return {s.name: settings_hash(stage_values(Run(config), s), s) for s in validate(config)}

    plain = hashes()
    assert hashes(eval__teacher_cache=str(tmp_path / "cache")) == plain
    assert hashes(general__token_cache=str(tmp_path / "tokens")) == plain  # where the blocks are kept
    assert hashes(eval__max_pairs=5)["eval"] != plain["eval"]
    assert hashes(eval__limit=5) == hashes(eval__max_pairs=5)  # a renamed option's old name: the same stage
    assert hashes(task__teacher_cache=str(tmp_path / "cache"))["task"] != plain["task"]  # float16: not neutral


@pytest.mark.parametrize("heldout,folder", [(8, "best"), (0, "final")])
def test_phase_2_starts_from_phase_1s_best_model_when_there_is_one(tmp_path, heldout, folder):
    from polyglot_distil.pipeline import Run, stage_values

    config = load_config(write_config(tmp_path, general__heldout_blocks=heldout))
    task = next(s for s in validate(config) if s.name == "task")
    assert Path(stage_values(Run(config), task)["student"]).name == folder

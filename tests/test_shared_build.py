"""One process builds a folder every process reads (shared_build.build_once: the token cache and the
teacher cache): the others poll for it, never waiting in a collective while it is built, and a
builder that died is reported in one line naming the folder (issue 24)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
import types
from types import SimpleNamespace

import numpy as np
import pytest

from polyglot_distil.errors import UserError


class _Pairs:
    """Ten training pairs of four tokens each (data.nli_batches.EncodedPairs' fields)."""
    input_ids, offsets, pad_id, token_type_ids = np.arange(40) % 7, np.arange(0, 41, 4), 0, None

    def __len__(self):
        return 10


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_while_the_main_process_builds_the_teacher_cache_the_others_poll_and_none_waits_in_a_collective(
        tmp_path, monkeypatch):
    import torch

    import polyglot_distil.shared_build as shared_build
    from polyglot_distil.distill.teacher_cache import TeacherCache

    collective = threading.Barrier(2, timeout=15)  # a collective that times out, as NCCL's does
    inside, calls = set(), []  # the ranks inside a collective now; every collective call

    def accelerator(rank):
        def wait_for_everyone():
            calls.append(rank)
            inside.add(rank)
            try:
                collective.wait()
            finally:
                inside.discard(rank)
        return SimpleNamespace(is_main_process=rank == 0, wait_for_everyone=wait_for_everyone)

    polled = threading.Event()  # the waiting process is polling the folder

    def sleep(seconds):
        if threading.current_thread().name == "rank 1":
            polled.set()
        time.sleep(seconds)

    monkeypatch.setattr(shared_build, "time", SimpleNamespace(sleep=sleep, monotonic=time.monotonic,
                                                              strftime=time.strftime))
    monkeypatch.setattr(shared_build, "POLL_SECONDS", 0.01)
    during_build = []

    class Teacher(torch.nn.Module):
        config = types.SimpleNamespace(num_attention_heads=1, hidden_size=2)

        def forward(self, input_ids, attention_mask, output_hidden_states, output_attentions):
            assert polled.wait(10), "the other process did not poll while the main process built"
            during_build.append(set(inside))
            b, w = input_ids.shape
            return types.SimpleNamespace(logits=torch.arange(3.0).expand(b, 3), attentions=None,
                                         hidden_states=[input_ids.float()[..., None].expand(b, w, 2)])

    (tmp_path / "teacher").mkdir()

    def open_cache(rank):
        return TeacherCache.open_or_build(tmp_path / "cache", Teacher(), tmp_path / "teacher", _Pairs(), [0, 1, 2],
                                          [0], [], 64, 4, "cpu", accelerator=accelerator(rank), log=lambda text: None)

    other = {}
    thread = threading.Thread(target=lambda: other.setdefault("cache", open_cache(1)), name="rank 1")
    thread.start()
    mine = open_cache(0)
    thread.join(timeout=30)
    assert during_build and all(ranks == set() for ranks in during_build), "a process waited in a collective"
    assert sorted(calls) == [0, 1], "one collective each, before the build"
    assert np.array_equal(other["cache"].logits, mine.logits) and mine.logits.shape == (10, 3)
    assert np.array_equal(other["cache"].hidden[0], mine.hidden[0]) and mine.hidden[0].shape == (40, 2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "teacher"], "no mark or lock left"


@pytest.mark.slow
def test_a_build_longer_than_the_wait_limit_is_waited_for_while_its_builder_beats(tmp_path, monkeypatch):
    import polyglot_distil.shared_build as shared_build
    from polyglot_distil.shared_build import build_once

    monkeypatch.setenv("POLYGLOT_DISTIL_SHARED_FS_TIMEOUT", "0.4")  # the builder beats every 0.1 s
    monkeypatch.setattr(shared_build, "POLL_SECONDS", 0.02)
    # The builder on one node, the waiter on another: only the beat tells the waiter it lives.
    monkeypatch.setattr(shared_build, "socket", SimpleNamespace(
        gethostname=lambda: "node-1" if threading.current_thread().name == "waiter" else "node-0"))

    def write(tmp):
        time.sleep(1.2)
        (tmp / "done").write_text("built", encoding="utf-8")

    started = threading.Barrier(2, timeout=10)
    other = {}
    thread = threading.Thread(target=lambda: other.setdefault("built", build_once(
        tmp_path / "folder", write, main=False, barrier=started.wait, done="done", doing="build it")), name="waiter")
    thread.start()
    assert build_once(tmp_path / "folder", write, main=True, barrier=started.wait, done="done", doing="build it")
    thread.join(timeout=10)
    assert other == {"built": False} and (tmp_path / "folder" / "done").read_text(encoding="utf-8") == "built"


def test_a_waiter_whose_builder_died_on_this_host_says_so_naming_the_folder(tmp_path):
    from polyglot_distil.shared_build import build_once

    pid = _dead_pid()
    (tmp_path / ".folder.writing").write_text(json.dumps({"pid": pid, "host": socket.gethostname(), "beat": 3}))
    start = time.monotonic()
    with pytest.raises(UserError) as error:
        build_once(tmp_path / "folder", lambda tmp: None, main=False, done="done", doing="build it")
    message = str(error.value)
    assert f"{tmp_path / 'folder'} was never finished: its builder (pid {pid} on {socket.gethostname()}) ended " \
           "without finishing it; run again" in message and "\n" not in message
    assert time.monotonic() - start < 5, "said at once, not after the wait limit"


@pytest.mark.slow
def test_a_waiter_whose_builder_on_another_node_stopped_beating_names_the_folder(tmp_path, monkeypatch):
    import polyglot_distil.shared_build as shared_build
    from polyglot_distil.shared_build import build_once

    monkeypatch.setenv("POLYGLOT_DISTIL_SHARED_FS_TIMEOUT", "0.3")
    monkeypatch.setattr(shared_build, "POLL_SECONDS", 0.02)
    mark = tmp_path / ".folder.writing"
    mark.write_text(json.dumps({"pid": 1, "host": "another-node", "beat": 7}))
    with pytest.raises(UserError) as error:
        build_once(tmp_path / "folder", lambda tmp: None, main=False, done="done", doing="build it")
    assert f"{tmp_path / 'folder'} was never finished: no sign of its builder for 0.3 s ({mark} not refreshed)" \
        in str(error.value)


@pytest.mark.slow
def test_a_lock_whose_builder_on_another_node_stopped_beating_is_taken_over(tmp_path, monkeypatch):
    import polyglot_distil.shared_build as shared_build
    from polyglot_distil.shared_build import build_once

    monkeypatch.setenv("POLYGLOT_DISTIL_SHARED_FS_TIMEOUT", "0.3")
    monkeypatch.setattr(shared_build, "POLL_SECONDS", 0.02)
    (tmp_path / ".folder.building.lock").write_text(json.dumps({"pid": 1, "host": "another-node", "beat": 2}))
    (tmp_path / ".folder.building-1").mkdir()  # what that builder left
    (tmp_path / ".folder.old-1").mkdir()

    def write(tmp):
        (tmp / "done").write_text("built", encoding="utf-8")

    assert build_once(tmp_path / "folder", write, main=True, done="done", doing="build it")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder"]


# A stand-in teacher and ten training pairs of four tokens, for the scripts the tests below and
# test_nothing_lost.py run in other processes; the script defines `building()`, which the
# teacher's forward calls first (a long build, or one the test lets go on).
FAKE_TEACHER_SCRIPT = """
import sys, time, types
from pathlib import Path
import numpy as np, torch
from polyglot_distil.distill.teacher_cache import TeacherCache

class Pairs:
    input_ids, offsets, pad_id, token_type_ids = np.arange(40) % 7, np.arange(0, 41, 4), 0, None
    def __len__(self):
        return 10

class Teacher(torch.nn.Module):
    config = types.SimpleNamespace(num_attention_heads=1, hidden_size=2)
    def forward(self, input_ids, attention_mask, output_hidden_states, output_attentions):
        building()
        b, w = input_ids.shape
        return types.SimpleNamespace(logits=torch.ones(b, 3), attentions=None,
                                     hidden_states=[input_ids.float()[..., None].expand(b, w, 2)])
"""

TWO_PROCESS_RUN = FAKE_TEACHER_SCRIPT + """
import datetime
from accelerate import Accelerator, InitProcessGroupKwargs

def building():
    time.sleep(float(sys.argv[3]))  # a long build: longer than the collectives' timeout

# Collectives time out after 3 s, as NCCL's do after their (longer) timeout on a big run. cpu=True: the
# processes join with gloo on a machine without GPUs (distill/training.py does the same).
accelerator = Accelerator(cpu=True, kwargs_handlers=[InitProcessGroupKwargs(timeout=datetime.timedelta(seconds=3))])
assert accelerator.num_processes == 2
cache = TeacherCache.open_or_build(sys.argv[1], Teacher(), sys.argv[2], Pairs(), [0, 1, 2], [0], [], 64, 10, "cpu",
                                   accelerator=accelerator)
accelerator.wait_for_everyone()
# one write of one line: the two processes share the pipe, and print's pieces (unbuffered) interleave
sys.stdout.write(f"process {accelerator.process_index} rows {cache.logits.shape[0]}\\n")
sys.stdout.flush()
"""


@pytest.mark.slow
def test_two_gloo_processes_share_a_teacher_cache_whose_build_outlasts_the_collective_timeout(tmp_path):
    """Under `accelerate launch`: the main process builds for 7 s, the other polls for it; a process
    waiting in a collective instead would time out after 3 s."""
    import os

    from conftest import ROOT

    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    script = tmp_path / "run.py"
    script.write_text(TWO_PROCESS_RUN, encoding="utf-8")
    (tmp_path / "teacher").mkdir()
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
              "--main_process_port", str(port), str(script), str(tmp_path / "cache"), str(tmp_path / "teacher"), "7"]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(launch, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert sorted(line for line in lines if line.startswith("process")) == ["process 0 rows 10", "process 1 rows 10"]
    built = [line for line in done.stderr.splitlines() if line.startswith("teacher cache: 10 pairs in ")]
    assert len(built) == 1, "built once"  # (the build's line is progress: on stderr)

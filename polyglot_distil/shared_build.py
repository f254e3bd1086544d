"""A folder that one process builds and every process reads: the token cache, the teacher cache.

    built = build_once(folder, write, main=accelerator.is_main_process, barrier=accelerator.wait_for_everyone,
                       done="blocks.json", doing="tokenize the corpus")

`write(tmp)` fills a private folder `.NAME.building-PID` beside `folder`; when it returns, the
folder is published whole by a rename (an older `folder` is moved aside first, so a reader that
still maps its files keeps them). Nothing waits in a collective while it is written, however long
that takes:

- The main process marks that it builds (`.NAME.writing`, its pid and host and a beat it
  refreshes every few seconds), then calls `barrier` once (all processes), then builds.
- Every other process calls `barrier` once and then polls: it returns when `folder/done` is there
  (and `ready()` says it holds what this run wants). A failure on the main process is written to
  `.NAME.failed`, which the others report in one line. A builder that died without a word (killed,
  out of memory) is noticed as well: its pid is gone (same host) or its beat has not moved for
  `POLYGLOT_DISTIL_SHARED_FS_TIMEOUT` seconds (another node); the waiter then stops with one line
  naming the folder instead of waiting for ever.
- Several runs may share one folder (several students of one teacher): the builders take turns on
  `.NAME.building.lock` (a lock whose builder is gone is taken over), and a run that finds the
  folder built by another while it waited uses it.

`tag` tells apart builds of different contents into one folder name (the teacher cache's key):
each has its own marks.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

from polyglot_distil.errors import UserError
from polyglot_distil.outputs import pid_alive, room_checked, shared_fs_timeout, wait_visible

POLL_SECONDS = 0.5


def build_once(folder: str | os.PathLike, write: Callable[[Path], None], *, main: bool = True,
               barrier: Callable[[], None] | None = None, done: str, doing: str,
               ready: Callable[[], bool] | None = None, tag: str = "") -> bool:
    """Make sure `folder` is built; True in the process that built it. Every process calls it;
    `barrier` (all processes) runs once in each, before any build starts. `done`: the file inside
    the folder that shows it complete; `ready()` (default: `done` is there) whether it holds what
    this run wants; `doing`: what the build does, for the others' one line if it fails."""
    folder = Path(folder)
    ready = ready or (lambda: (folder / done).is_file())
    marks = _Marks(folder, tag)
    if not main:
        if barrier is not None:
            barrier()
        # The main process marked the build (or finished it) before the barrier: not seeing either
        # means this process does not see the main process's files at all.
        wait_visible([folder / done, marks.writing, marks.failed], what=f"{folder}, which the main process builds")
        _wait_for(folder, ready, marks, doing)
        return False
    if ready():
        if barrier is not None:
            barrier()
        return False
    folder.parent.mkdir(parents=True, exist_ok=True)
    marks.failed.unlink(missing_ok=True)
    with _beating(marks.writing):
        if barrier is not None:
            barrier()
        try:
            with _building_lock(folder):
                if ready():  # another run built it while this one waited for the lock
                    return False
                _build(folder, write)
                return True
        except BaseException as exc:
            marks.failed.write_text(str(exc) if isinstance(exc, UserError) else type(exc).__name__, encoding="utf-8")
            raise


class _Marks:
    def __init__(self, folder: Path, tag: str):
        stem = f".{folder.name}" + (f".{tag}" if tag else "")
        self.writing = folder.with_name(f"{stem}.writing")
        self.failed = folder.with_name(f"{stem}.failed")


def _build(folder: Path, write: Callable[[Path], None]) -> None:
    """`write` into a private folder, then publish it as `folder`. Holds the building lock: any
    other builder's folder beside it is what a killed run left."""
    for pattern in (f".{folder.name}.building-*", f".{folder.name}.old-*"):
        for left in folder.parent.glob(pattern):
            shutil.rmtree(left, ignore_errors=True)
    tmp = folder.with_name(f".{folder.name}.building-{os.getpid()}")
    tmp.mkdir(parents=True)
    try:
        with room_checked(folder):
            write(tmp)
        if folder.exists():  # another key's build, or an incomplete one: its readers keep their open maps
            old = folder.with_name(f".{folder.name}.old-{os.getpid()}")
            os.replace(folder, old)
            shutil.rmtree(old, ignore_errors=True)
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# ---------------------------------------------------------------------------------------------
# A builder's beat: who builds, and that it is still alive


def _beat_seconds() -> float:
    return min(10.0, shared_fs_timeout() / 4)


def _write_beat(path: Path, beat: int, since: str) -> None:
    path.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": since, "beat": beat}),
                    encoding="utf-8")


@contextlib.contextmanager
def _beating(path: Path) -> Iterator[None]:
    """Write `path` (this process's pid, host, a beat) and rewrite it every few seconds with the next
    beat until the block ends; then remove it. Rewritten in place, read by its content: a shared
    filesystem shows a file's new content to the next open, where its time stamp may lag."""
    since = time.strftime("%Y-%m-%d %H:%M:%S")
    _write_beat(path, 0, since)
    stop = threading.Event()

    def beat() -> None:
        count = 0
        while not stop.wait(_beat_seconds()):
            count += 1
            with contextlib.suppress(OSError):
                _write_beat(path, count, since)

    thread = threading.Thread(target=beat, name=f"beat {path.name}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        path.unlink(missing_ok=True)


def _read_beat(path: Path) -> dict | None:
    """The content of a beating mark; None when absent or being rewritten this instant."""
    try:
        owner = json.loads(path.read_text(encoding="utf-8"))
        return owner if isinstance(owner, dict) and isinstance(owner.get("pid"), int) else None
    except (OSError, ValueError):
        return None


class _Pulse:
    """Watches a beating mark: `gone()` says why its builder is gone, or None while it lives. On this
    host (a mark without a host is this host's) the builder is gone when its pid has ended; on
    another node, when its beat has not moved for `shared_fs_timeout()` seconds (measured here, so
    no clock of another node matters); an absent mark counts as a beat that does not move."""

    def __init__(self, path: Path):
        self.path, self.stale = path, shared_fs_timeout()
        self.last, self.moved = None, time.monotonic()

    def gone(self) -> str | None:
        owner = _read_beat(self.path)
        if owner is not None:
            pid, host = owner["pid"], owner.get("host", socket.gethostname())
            if host == socket.gethostname() and not pid_alive(pid):
                return f"its builder (pid {pid} on {host}) ended without finishing it"
            if host == socket.gethostname() or owner.get("beat") != self.last:
                self.last, self.moved = owner.get("beat"), time.monotonic()
        if time.monotonic() - self.moved > self.stale:
            return (f"no sign of its builder for {self.stale:g} s ({self.path} " +
                    ("not refreshed" if self.path.exists() else "absent") + ")")
        return None


def _wait_for(folder: Path, ready: Callable[[], bool], marks: _Marks, doing: str) -> None:
    pulse = _Pulse(marks.writing)
    while not ready():
        if marks.failed.is_file():
            reason = marks.failed.read_text(encoding="utf-8").strip()
            raise UserError(f"the main process could not {doing} ({reason}); see its output")
        why = pulse.gone()
        if why is not None and not ready():
            raise UserError(f"{folder} was never finished: {why}; run again (the main process rebuilds it)")
        time.sleep(POLL_SECONDS)


@contextlib.contextmanager
def _building_lock(folder: Path) -> Iterator[None]:
    """Hold `.NAME.building.lock` (beating, like the writing mark) while building `folder`: a second
    run waits for the first; a lock whose builder is gone (killed) is taken over."""
    lock = folder.with_name(f".{folder.name}.building.lock")
    pulse = _Pulse(lock)
    while True:
        try:
            os.close(os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
            break
        except FileExistsError:
            if pulse.gone() is not None:
                lock.unlink(missing_ok=True)
                pulse = _Pulse(lock)
            time.sleep(POLL_SECONDS)
    try:
        with _beating(lock):
            yield
    finally:
        lock.unlink(missing_ok=True)

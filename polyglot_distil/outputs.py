"""Write outputs atomically: to a temporary path beside the target, renamed into place at the end.

A failed or interrupted command therefore never leaves a partial file or folder behind, and an
existing output is only replaced when the user asked for it (`--overwrite`), and only by an output
of the same kind: a file by a file, a folder by a folder that polyglot-distil wrote (it holds the
marker `.polyglot-distil.json`, or a report of ours from before the marker).

An output being written is locked: `.NAME.lock` beside it, created atomically, holds the writer's
pid and host. A second run that targets the same output refuses with one line naming the lock; a
lock left by a run that was killed (its pid is gone on this host) is reported with how to remove
it. The run that takes the lock removes the temporaries an interrupted run of its own left beside
the output (`.NAME.*.tmp`), and says so.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import json
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import BinaryIO, Callable, Iterable, Iterator

from polyglot_distil.errors import UserError

MARKER = ".polyglot-distil.json"

# Reports that mark a folder as ours in outputs written before the marker existed.
OUR_REPORTS = (MARKER, "trim_report.json", "student.json", "report.json", "run_config.json", "sparse_diff.json",
               "DONE.json", "quantize.json", "verify.json")

_held: dict[Path, Path] = {}  # output -> its lock file, taken by this process
_temporaries: set[Path] = set()  # temporaries this process is writing (never removed as stale)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def follow_umask(path: Path) -> None:
    """Give a folder from `mkdtemp` (0700) or a file from `mkstemp` (0600), and what it holds, the
    permissions any file the user writes gets: a colleague can read a trimmed model."""
    mask = _umask()
    for item in [path, *path.rglob("*")] if path.is_dir() else [path]:
        if item.is_symlink():
            continue
        item.chmod((0o777 if item.is_dir() else 0o666) & ~mask)


def written_by_us(folder: Path) -> bool:
    """Is `folder` empty or an output polyglot-distil wrote (its marker or one of its reports)?"""
    return not any(folder.iterdir()) or any((folder / name).is_file() for name in OUR_REPORTS)


_NO_ROOM = {errno.ENOSPC: "no space left on the device", errno.EFBIG: "file too large (a file-size limit, ulimit -f)",
            errno.EDQUOT: "disk quota exceeded"}
_NO_ROOM_TEXT = {"no space left": errno.ENOSPC, "file too large": errno.EFBIG, "quota exceeded": errno.EDQUOT}


def no_room(target: str | os.PathLike, exc: BaseException) -> UserError | None:
    """The one line for a write that failed for want of room (a full disk, a file-size limit, a
    quota), whichever library raised it (an OSError, or pyarrow's, safetensors' or torch's own
    error saying so); None for any other exception."""
    code = exc.errno if isinstance(exc, OSError) else None
    text = str(exc).lower()
    if code not in _NO_ROOM:
        code = next((c for phrase, c in _NO_ROOM_TEXT.items() if phrase in text), None)
    if code is not None:
        reason = _NO_ROOM[code]
    elif "file write failed" in text or "failed writing" in text:  # torch's writer does not say why
        reason = "the write failed (no space left on the device, or a file-size limit?)"
    else:
        return None
    return UserError(f"cannot write {target}: {reason}; nothing of it was kept: make room (or raise the limit) "
                     "and run again")


def _cannot_write(target: Path, exc: OSError) -> UserError:
    where = exc.filename or target
    return UserError(f"cannot write {target}: {where}: {exc.strerror or exc}; choose a folder you can write to")


# ---------------------------------------------------------------------------------------------
# Locks


def lock_path(target: str | os.PathLike) -> Path:
    target = Path(target)
    return target.with_name(f".{target.name}.lock")


def _main_process() -> bool:
    """Only the main process of a multi-process run (`accelerate launch`) takes locks."""
    return os.environ.get("RANK", "0") == "0"


def pid_alive(pid: int) -> bool:
    """Is process `pid` (on this host) still running?"""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _refuse_locked(target: Path, lock: Path) -> UserError:
    try:
        owner = json.loads(lock.read_text(encoding="utf-8"))
        pid, host, since = int(owner["pid"]), str(owner["host"]), owner.get("since", "?")
    except (OSError, ValueError, KeyError, TypeError):
        return UserError(f"{target} is locked by {lock}, which cannot be read; if no run is writing {target}, "
                         f"remove it: rm {lock}")
    if host == socket.gethostname() and not pid_alive(pid):
        return UserError(f"{target} is locked by {lock}, left by a run that ended without finishing (pid {pid}, "
                         f"since {since}); if no run is writing {target}, remove the lock: rm {lock}")
    return UserError(f"{target} is being written by another run (pid {pid} on {host}, since {since}; lock {lock}); "
                     "wait for it to finish or give another output path")


def _left_by_a_dead_run(lock: Path) -> bool:
    try:
        owner = json.loads(lock.read_text(encoding="utf-8"))
        return owner["host"] == socket.gethostname() and not pid_alive(int(owner["pid"]))
    except (OSError, ValueError, KeyError, TypeError):
        return False  # absent, or being written this instant


def hold_lock(target: str | os.PathLike) -> None:
    """Lock `target` for this process (a no-op if it already holds the lock, or in a process
    other than the main one). On first taking it, remove stale temporaries beside `target`."""
    target = Path(target)
    key = target.absolute()
    if key in _held or not _main_process():
        return
    lock = lock_path(target)
    if any(held in key.parents for held in _held) and _left_by_a_dead_run(lock):
        # This run holds a folder above `target` (a training run's OUT, above OUT/best): it owns
        # the locks beneath it that a killed earlier run left.
        lock.unlink(missing_ok=True)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with _signals_held():  # Ctrl-C or SIGTERM now would leave a lock no one holds: they wait a moment
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666 & ~_umask())
            _held[key] = lock  # from here on, the clean-up of any interruption releases it
    except FileExistsError:
        raise _refuse_locked(target, lock) from None
    except OSError as exc:
        raise _cannot_write(target, exc) from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump({"pid": os.getpid(), "host": socket.gethostname(),
                       "since": time.strftime("%Y-%m-%d %H:%M:%S"), "command": " ".join(sys.argv[:3])}, handle)
    except OSError as exc:  # a disk already full: the lock's few bytes do not fit
        release_lock(target)
        raise no_room(target, exc) or _cannot_write(target, exc) from None
    _remove_stale_temporaries(target)


@contextlib.contextmanager
def _signals_held():
    """Ctrl-C and SIGTERM arriving within the block are handled at its end, by the handlers that
    were in place (main thread only: Python runs signal handlers there, whichever thread the
    system delivers a signal to)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held = (signal.SIGINT, signal.SIGTERM)
    previous = {signum: signal.getsignal(signum) for signum in held}
    pending: list[int] = []
    for signum in held:
        signal.signal(signum, lambda signum, frame: pending.append(signum))
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if pending:
            handler = previous[pending[0]]
            if callable(handler):
                handler(pending[0], None)
            elif handler == signal.SIG_DFL:
                os.kill(os.getpid(), pending[0])


def release_lock(target: str | os.PathLike) -> None:
    lock = _held.pop(Path(target).absolute(), None)
    if lock is not None:
        lock.unlink(missing_ok=True)


def release_locks() -> None:
    """Release every lock this process holds (at the end of a command, and at exit)."""
    for key in list(_held):
        release_lock(key)


atexit.register(release_locks)


def _remove_stale_temporaries(target: Path) -> None:
    parent = target.parent
    aside = _aside(target)
    if aside.is_dir() and aside.absolute() not in _temporaries:  # a run killed while replacing it
        put_back(target, aside)
        print(f"note: put back {target}, the output an interrupted --overwrite run was replacing", file=sys.stderr)
    for stale in [*parent.glob(f".{target.name}.*.tmp"), parent / f".{target.name}.old"]:
        if not stale.exists() or stale.absolute() in _temporaries:
            continue
        shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink(missing_ok=True)
        print(f"note: removed {stale}, left by an interrupted run", file=sys.stderr)


# ---------------------------------------------------------------------------------------------
# Checks and atomic writes


def _real(path: str) -> Path:
    return Path(os.path.realpath(os.path.expanduser(path)))


def check_apart(inputs: list[tuple[str, str]], outputs: list[tuple[str, str]]) -> None:
    """Refuse, before anything is touched, an output that is one of the command's inputs, lies
    inside one or holds one (symbolic links followed): writing it, with --overwrite above all,
    would destroy what the command reads. `inputs` and `outputs` are [(flag, path)]; an input
    that is not a local path (a hub name) is not compared."""
    for out_flag, out in outputs:
        target = _real(out)
        for in_flag, source in inputs:
            if not os.path.lexists(os.path.expanduser(source)):
                continue
            read = _real(source)
            if target == read:
                how = "is"
            elif read in target.parents:
                how = "lies inside"
            elif target in read.parents:
                how = "holds"
            else:
                continue
            raise UserError(f"{out_flag} {out} {how} {in_flag} {source}, which the command reads: an output must be "
                            f"apart from the inputs (writing it, or --overwrite, could destroy them); give another "
                            f"{out_flag}")


def check_writable(target: str | os.PathLike, overwrite: bool, kind: str = "dir") -> Path:
    """Fail early, before any work, if `target` may not be written: it exists and `overwrite` is
    off, it is of the other kind (`kind` "file" or "dir"), it is a folder polyglot-distil did not
    write, its folder cannot be written, or another run holds its lock. Then lock it."""
    target = Path(target)
    if target.exists() and not overwrite:
        raise UserError(f"{target} already exists; pass --overwrite to replace it")
    if kind == "file" and target.is_dir():
        raise UserError(f"{target} is a folder; --overwrite replaces a file of the same kind only: give a file path")
    if kind == "dir" and target.exists() and not target.is_dir():
        raise UserError(f"{target} is a file; --overwrite replaces a folder of the same kind only: give a folder path")
    if kind == "dir" and target.is_dir() and not written_by_us(target):
        raise UserError(f"{target} holds files polyglot-distil did not write (it has no {MARKER}); --overwrite "
                        "replaces only outputs of polyglot-distil: give another path")
    parent = target.parent if str(target.parent) else Path(".")
    if parent.exists() and not parent.is_dir():
        raise UserError(f"cannot write {target}: {parent} is not a folder")
    hold_lock(target)
    return target


def replace_text(path: str | os.PathLike, text: str) -> None:
    """Write a small file (a marker, a run record) so that a reader sees the old or the new text,
    never half of it."""
    replace_file(path, lambda handle: handle.write(text.encode("utf-8")))


def replace_file(path: str | os.PathLike, write: Callable[[BinaryIO], object]) -> None:
    """Write `path` through `write(binary handle)` so that a reader sees the old file or the new
    one, never half of it; the new file gets the user's usual permissions."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
        follow_umask(Path(tmp))
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


@contextlib.contextmanager
def room_checked(target: Path) -> Iterator[None]:
    """A write into `target` that fails for want of room ends with one line (`no_room`)."""
    try:
        yield
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - each library has its own error type for a full disk
        failure = no_room(target, exc)
        if failure is None:
            raise
        raise failure from None


@contextlib.contextmanager
def atomic_file(target: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary file path; on success it is renamed to `target`, on error removed."""
    target = check_writable(target, overwrite, kind="file")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as exc:
        raise _cannot_write(target, exc) from None
    os.close(fd)
    tmp = Path(tmp)
    _temporaries.add(tmp.absolute())
    try:
        with room_checked(target):
            yield tmp
        follow_umask(tmp)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
        _temporaries.discard(tmp.absolute())
        release_lock(target)


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield an empty temporary folder (holding only the marker); on success it replaces `target`,
    on error it is removed."""
    target = check_writable(target, overwrite, kind="dir")
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    except OSError as exc:
        raise _cannot_write(target, exc) from None
    _temporaries.add(tmp.absolute())
    try:
        with room_checked(target):
            (tmp / MARKER).write_text(json.dumps({"written_by": "polyglot-distil"}) + "\n", encoding="utf-8")
            yield tmp
        follow_umask(tmp)
        if target.exists():
            old = target.with_name(f".{target.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        _temporaries.discard(tmp.absolute())
        release_lock(target)


# ---------------------------------------------------------------------------------------------
# Replacing a folder a command fills in place (a training run)


def _aside(target: Path) -> Path:
    return target.with_name(f".{target.name}.replaced")


def set_aside(target: str | os.PathLike, keep: Iterable[str] = ()) -> Path:
    """--overwrite of a folder that a command fills in place: move the old `target` aside (to
    `.NAME.replaced`) and start an empty one, holding only the old one's entries named in `keep`
    (still valid, e.g. a cache keyed by its inputs). Returns where the old one is: `drop_aside`
    deletes it once the new output is complete, `put_back` restores it when the command fails or is
    interrupted; a run killed in between leaves it, and the next run that locks `target` puts it
    back. The old output is therefore never lost to an unfinished new one."""
    target = Path(target)
    aside = _aside(target)
    try:
        shutil.rmtree(aside, ignore_errors=True)
        os.replace(target, aside)
        _temporaries.add(aside.absolute())
        target.mkdir()
        for name in keep:
            if (aside / name).exists():
                os.replace(aside / name, target / name)
    except OSError as exc:
        raise _cannot_write(target, exc) from None
    return aside


def put_back(target: str | os.PathLike, aside: Path, keep: Iterable[str] = ()) -> None:
    """Delete the unfinished new `target` and restore the old one from `aside` (`set_aside`); the
    entries named in `keep` go back with it."""
    target = Path(target)
    if target.is_dir():
        for name in keep:
            if (target / name).exists() and not (aside / name).exists():
                os.replace(target / name, aside / name)
        shutil.rmtree(target, ignore_errors=True)
    os.replace(aside, target)
    _temporaries.discard(aside.absolute())


def drop_aside(aside: Path) -> None:
    """The new output is complete: delete the old one `set_aside` kept."""
    shutil.rmtree(aside, ignore_errors=True)
    _temporaries.discard(aside.absolute())


# ---------------------------------------------------------------------------------------------
# Several processes, several nodes: the main process's files must be seen by every process


def shared_fs_timeout() -> float:
    """Seconds a process waits to see a file the main process has written (default 120;
    POLYGLOT_DISTIL_SHARED_FS_TIMEOUT sets it)."""
    try:
        return float(os.environ.get("POLYGLOT_DISTIL_SHARED_FS_TIMEOUT", "120"))
    except ValueError:
        return 120.0


def wait_visible(paths, what: str = "a file the main process wrote", timeout: float | None = None,
                 poll_seconds: float = 0.2) -> Path:
    """The first of `paths` (one path or several) this process sees, waiting up to `timeout`
    seconds (`shared_fs_timeout()`) for the main process's write to show; not seen by then: one
    line naming the path and saying the folder must be on a filesystem every node sees."""
    paths = [Path(paths)] if isinstance(paths, (str, os.PathLike)) else [Path(p) for p in paths]
    timeout = shared_fs_timeout() if timeout is None else timeout
    deadline = time.monotonic() + timeout
    while True:
        for path in paths:
            if path.exists():
                return path
        if time.monotonic() >= deadline:
            break
        time.sleep(poll_seconds)
    rank = os.environ.get("RANK", "0")
    raise UserError(f"process {rank} on {socket.gethostname()} does not see {paths[0]} ({what}) {timeout:g} s after "
                    f"the main process wrote it: {paths[0].parent} must be on a filesystem every node sees "
                    "(a shared filesystem such as NFS or Lustre); give an --out (or run_dir) there")

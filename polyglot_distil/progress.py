"""Progress: a bar on a terminal, a line every N seconds in a log file.

    with progress(total=n, desc="verify en", unit=" texts", show=None) as bar:
        bar.update(k)

`show`: None (the default of every command) draws a tqdm bar when stderr is a terminal and, when
it is not (a log file, a batch job), prints one line every `POLYGLOT_DISTIL_PROGRESS_SECONDS`
seconds (default 30) with the count, the rate and, where the total is known, the ETA; False
(`--no-progress`) prints nothing; True forces the bar. Every bar of polyglot-distil is made here.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any, Iterable

SECONDS_ENV = "POLYGLOT_DISTIL_PROGRESS_SECONDS"


def log_every_seconds() -> float:
    try:
        return max(float(os.environ.get(SECONDS_ENV, "30")), 0.0)
    except ValueError:
        return 30.0


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60:02d}:{rest % 60:02d}"


class LogLines:
    """tqdm's interface (the part this project uses), as one plain line every `every` seconds."""

    def __init__(self, iterable: Iterable | None = None, total: float | None = None, desc: str = "",
                 unit: str = "it", initial: float = 0, every: float | None = None, file=None):
        self.iterable, self.total, self.desc, self.unit = iterable, total, desc, unit
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            self.total = len(iterable)
        self.n, self.start_n = initial, initial
        self.every = log_every_seconds() if every is None else every
        self.file = file or sys.stderr
        self.started = self.last = time.monotonic()
        self.postfix = ""

    def __iter__(self):
        for item in self.iterable:
            yield item
            self.update(1)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def update(self, n: float = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now - self.last >= self.every:
            self.last = now
            print(self.line(now), file=self.file, flush=True)

    def line(self, now: float | None = None) -> str:
        elapsed = max((now or time.monotonic()) - self.started, 1e-9)
        rate = (self.n - self.start_n) / elapsed
        unit = self.unit.strip()
        parts = [f"{self.desc}: {self.n:,.0f}" + (f"/{self.total:,.0f}" if self.total else "") + f" {unit}"]
        if self.total:
            parts[0] += f" ({100 * self.n / self.total:.0f}%)"
        parts.append(f"{rate:,.1f} {unit}/s")
        parts.append(f"elapsed {_duration(elapsed)}")
        if self.total and rate > 0:
            parts.append(f"ETA {_duration(max(self.total - self.n, 0) / rate)}")
        if self.postfix:
            parts.append(self.postfix)
        return ", ".join(parts)

    def set_postfix_str(self, text: str, refresh: bool = False) -> None:
        self.postfix = text

    def set_postfix(self, ordered: dict | None = None, refresh: bool = False, **values: Any) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in {**(ordered or {}), **values}.items())

    def close(self) -> None:
        pass


def note(bar, text: str) -> None:
    """In a log file (a `LogLines` display), one line now: `desc: text` (e.g. around a long dev
    evaluation, during which the step count does not move); nothing on a terminal bar or with no
    display."""
    if isinstance(bar, LogLines):
        print(f"{bar.desc}: {text}", file=bar.file, flush=True)


def progress(iterable: Iterable | None = None, *, total: float | None = None, desc: str = "", unit: str = "it",
             show: bool | None = None, initial: float = 0, file=None):
    """A progress display for `show` (see the module's docstring); use it like tqdm."""
    from tqdm.auto import tqdm

    file = file or sys.stderr
    terminal = hasattr(file, "isatty") and file.isatty()
    if show is False or (show is None and not terminal and log_every_seconds() == 0):
        return tqdm(iterable, total=total, desc=desc, unit=unit, initial=initial, file=file, disable=True)
    if show is None and not terminal:
        return LogLines(iterable, total=total, desc=desc, unit=unit, initial=initial, file=file)
    return tqdm(iterable, total=total, desc=desc, unit=unit, initial=initial, file=file, dynamic_ncols=True)

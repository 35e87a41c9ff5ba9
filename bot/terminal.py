"""Long operations drawn on a terminal, for the CLI and the local console alike.

``OperationProgress`` keeps what a person watching a backup or a restore wants to see — the
phase and how long it has run, the bytes so far (with thousands separators), the rate, the time
left when the previous backup's size gives an expectation — and draws it with rich. Times are
read when the region is drawn, not when an event arrives, so the elapsed time keeps ticking
through a long pg_restore that sends no events. Each phase that ended stays as one line; the
dump's line ends at 100 %.

rich draws the live region: it lays the lines out for the terminal's width and redraws exactly
the rows it drew, wrapped rows included. Where the output is not a terminal, ``PlainProgress``
prints a line per phase and, at most every few seconds, one short line with the bytes so far —
no escape codes.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TextIO

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.spinner import Spinner
from rich.table import Table
from rich.text import Text

from bot.render.text import human_duration, human_size

if TYPE_CHECKING:
    from core.backup import BackupProgress

Clock = Callable[[], float]

# What each phase of a backup or a restore does, in a few words (the Slack messages say more).
PHASES = {
    "preflight": "checking the database, the bucket and the tools",
    "dumping": "dumping and uploading",
    "verifying": "verifying size and checksum against the bucket",
    "replicating": "copying to the second region",
    "writing_manifest": "writing the manifest",
    "downloading": "downloading and checking SHA-256",
    "restoring": "restoring with pg_restore",
    "checking": "checking rows, ledger totals and indexes",
}
RATE_WINDOW = 5.0  # seconds of samples the rate is computed over
BAR_WIDTH = 24


def phase_words(stage: str) -> str:
    return PHASES.get(stage) or stage.replace("_", " ")


def byte_count(n: int) -> str:
    """12345678 → "12,345,678 bytes"."""
    return f"{n:,} byte" + ("" if n == 1 else "s")


def clock_time(seconds: float) -> str:
    """Elapsed time as a clock, ticking visibly every second: 0:07, 1:02:03."""
    whole = max(0, int(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


@dataclass
class Phase:
    stage: str
    started: float
    ended: float | None = None
    done_bytes: int | None = None  # bytes moved in this phase, when it moves bytes
    expected_bytes: int | None = None
    failed: bool = False  # the operation failed in this phase
    samples: deque[tuple[float, int]] = field(default_factory=lambda: deque(maxlen=200))

    def rate(self, now: float) -> float | None:
        """Bytes per second over the last few seconds (over the whole phase once it ended)."""
        if self.done_bytes is None:
            return None
        if self.ended is not None:
            spent = self.ended - self.started
            return self.done_bytes / spent if spent > 0 else None
        recent = [(t, n) for t, n in self.samples if now - t <= RATE_WINDOW]
        if len(recent) < 2 or recent[-1][0] <= recent[0][0]:
            return None
        return (recent[-1][1] - recent[0][1]) / (recent[-1][0] - recent[0][0])

    def fraction(self) -> float | None:
        """How far the phase is, from the expected bytes: at most 0.99 until it ended (a dump
        can outgrow the previous one), 1.0 once it ended."""
        if self.done_bytes is None:
            return None
        if self.ended is not None and not self.failed:
            return 1.0
        if not self.expected_bytes:
            return None
        return min(0.99, max(0.0, self.done_bytes / self.expected_bytes))


class OperationProgress:
    """The progress of one backup, restore test or restore. Thread-safe: events come from the
    operation's threads, drawing happens on rich's refresh thread."""

    def __init__(self, what: str, clock: Clock = time.monotonic) -> None:
        self.what = what
        self.clock = clock
        self.started = clock()
        self.ended: float | None = None
        self.ok: bool | None = None
        self.phases: list[Phase] = []
        self._lock = threading.Lock()
        self._spinner = Spinner("dots", style="cyan")

    # --- events -------------------------------------------------------------------------------
    def stage(self, stage: str) -> None:
        """A new phase began (a repeated stage is the same phase)."""
        with self._lock:
            self._enter(stage)

    def backup_event(self, event: BackupProgress) -> None:
        """A backup's progress event: its stage, and while dumping the bytes uploaded."""
        with self._lock:
            dump = next((p for p in self.phases if p.stage == "dumping"), None)
            if event.stage == "dumping" and dump is None:
                dump = self._enter("dumping")
            if dump is not None:  # later stages carry the dump's final size
                dump.done_bytes = max(dump.done_bytes or 0, event.bytes_uploaded)
                dump.expected_bytes = event.expected_bytes
                if dump.ended is None:
                    dump.samples.append((self.clock(), dump.done_bytes))
            if event.stage == "done":
                self._close_phase()
            else:
                self._enter(event.stage)

    def finish(self, ok: bool) -> None:
        with self._lock:
            if self.ended is not None:
                return
            if not ok and self.phases and self.phases[-1].ended is None:
                self.phases[-1].failed = True
            self._close_phase()
            self.ended, self.ok = self.clock(), ok

    def _enter(self, stage: str) -> Phase:
        if self.phases and self.phases[-1].stage == stage and self.phases[-1].ended is None:
            return self.phases[-1]
        self._close_phase()
        phase = Phase(stage, self.clock())
        self.phases.append(phase)
        return phase

    def _close_phase(self) -> None:
        if self.phases and self.phases[-1].ended is None:
            self.phases[-1].ended = self.clock()

    # --- drawing ------------------------------------------------------------------------------
    def __rich__(self) -> RenderableType:
        with self._lock:
            now = self.clock()
            rows: list[RenderableType] = [self._phase_row(p, now) for p in self.phases]
            rows.append(self._summary(now))
        return Group(*rows)

    def _phase_row(self, phase: Phase, now: float) -> RenderableType:
        running = phase.ended is None
        failed = phase.failed or (not running and self.ok is False and phase is self.phases[-1])
        grid = Table.grid(padding=(0, 1))
        grid.add_column(width=1, no_wrap=True)
        grid.add_column()
        mark: RenderableType
        if running:
            mark = self._spinner
        else:
            mark = Text("✗", style="bold red") if failed else Text("✓", style="green")
        spent = (phase.ended or now) - phase.started
        words = Text(phase_words(phase.stage), style="bold" if running else "")
        words.append(f"  {clock_time(spent) if running else human_duration(spent)}")
        fraction = phase.fraction()
        if phase.done_bytes is not None:
            if running and phase.expected_bytes:
                detail = Text(f"{phase.done_bytes:,} of ~{phase.expected_bytes:,} bytes")
            else:
                detail = Text(byte_count(phase.done_bytes))
            rate = phase.rate(now)
            if rate:
                detail.append(f" · {human_size(int(rate))}/s")
            left = self._time_left(phase, rate)
            if running and left is not None:
                detail.append(f" · about {clock_time(left)} left")
            line: RenderableType = words
            if fraction is not None:
                bar = Table.grid(padding=(0, 1))
                bar.add_column()
                bar.add_column(width=BAR_WIDTH, no_wrap=True)
                bar.add_column(no_wrap=True)
                bar.add_row(
                    words,
                    ProgressBar(total=100, completed=fraction * 100, width=BAR_WIDTH),
                    Text(f"{int(fraction * 100):>3} %"),
                )
                line = bar
            grid.add_row(mark, Group(line, detail))
        else:
            grid.add_row(mark, words)
        return grid

    @staticmethod
    def _time_left(phase: Phase, rate: float | None) -> float | None:
        if not rate or not phase.expected_bytes or phase.done_bytes is None:
            return None
        remaining = phase.expected_bytes - phase.done_bytes
        return remaining / rate if remaining > 0 else None

    def _summary(self, now: float) -> Text:
        if self.ended is None:
            return Text(f"  {self.what}: {clock_time(now - self.started)} elapsed", style="dim")
        verdict = "finished" if self.ok else "failed"
        return Text(
            f"  {self.what} {verdict} after {human_duration(self.ended - self.started)}",
            style="dim" if self.ok else "red",
        )


class LiveProgress:
    """An OperationProgress drawn in a live region of its own (the CLI on a terminal), redrawn
    four times a second; what it showed last stays on the screen."""

    def __init__(self, console: Console, what: str) -> None:
        self.progress = OperationProgress(what)
        self._live = Live(self.progress, console=console, refresh_per_second=4, transient=False)

    def __enter__(self) -> OperationProgress:
        self._live.start()
        return self.progress

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self.progress.finish(ok=exc_type is None)
        self._live.refresh()
        self._live.stop()


class PlainProgress:
    """Progress as plain lines, for output that is not a terminal (a log, a pipe): a line per
    phase, the bytes so far at most every ``interval`` seconds, and the dump's total at 100 %."""

    def __init__(self, out: TextIO, interval: float = 2.0, clock: Clock = time.monotonic) -> None:
        self.out = out
        self.interval = interval
        self.clock = clock
        self._stage = ""
        self._last = 0.0
        self._bytes: int | None = None
        self._key_shown = False
        self._lock = threading.Lock()

    def _line(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()

    def stage(self, stage: str) -> None:
        with self._lock:
            self._enter(stage)

    def backup_event(self, event: BackupProgress) -> None:
        with self._lock:
            if event.stage == "dumping" or self._bytes is not None:
                # Later stages carry the dump's final size.
                self._bytes = max(self._bytes or 0, event.bytes_uploaded)
            if event.stage != self._stage:
                key = event.key if event.key and not self._key_shown else None
                self._key_shown = self._key_shown or key is not None
                self._enter(event.stage, key)
                return
            now = self.clock()
            if event.stage == "dumping" and now - self._last >= self.interval:
                self._last = now
                share = ""
                if event.expected_bytes:
                    percent = min(99, 100 * event.bytes_uploaded // event.expected_bytes)
                    share = f" (~{percent} % of the previous backup)"
                self._line(f"  {byte_count(event.bytes_uploaded)} so far{share}")

    def _enter(self, stage: str, key: str | None = None) -> None:
        if self._stage == "dumping" and self._bytes is not None:
            self._line(f"  {byte_count(self._bytes)} uploaded in all (100 %)")
        self._stage = stage
        self._last = self.clock()
        if stage != "done":
            self._line(f"… {phase_words(stage)}" + (f" {key}" if key else ""))

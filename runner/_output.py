"""What runner itself shows: status lines, image build logs, map progress.

Container stdout and stderr always stream to the terminal. Runner's own lines appear only while
output is enabled (`runner run` enables it; so does `with runner.enable_output():`), on stderr,
with rich progress bars on a terminal and plain lines otherwise. Notices (one-line warnings such
as "image steps are not applied in embedded mode") always show, once each.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time


class _Output:
    def __init__(self):
        self.enabled = False
        self.verbose = False
        self._noticed: set[str] = set()
        self._lock = threading.Lock()

    def _tty(self) -> bool:
        try:
            return sys.stderr.isatty()
        except (AttributeError, ValueError):
            return False

    def status(self, message: str) -> None:
        if self.enabled and self.verbose:
            self.line(message)

    def line(self, message: str) -> None:
        with self._lock:
            print(message, file=sys.stderr, flush=True)

    def notice(self, message: str) -> None:
        """A one-line notice, shown once per process whatever the output setting."""
        with self._lock:
            if message in self._noticed:
                return
            self._noticed.add(message)
        self.line(message)

    def log_line(self, stream, text: str) -> None:
        """A line of container output, written through to the terminal."""
        try:
            stream.write(text)
            stream.flush()
        except (ValueError, OSError):  # the stream closed under us at exit
            pass

    @contextlib.contextmanager
    def build_step(self, title: str):
        """One image build step: a rich spinner on a terminal, a plain line otherwise. Yields a
        function that shows a line of the step's log (only while output is enabled)."""
        if not (self.enabled and self._tty()):
            self.line(title)
            yield (lambda text: self.line(f"      {text}")) if self.enabled else (lambda text: None)
            return
        from rich.console import Console

        console = Console(stderr=True)
        with console.status(title):
            yield lambda text: console.print(f"      {text}", style="dim", markup=False, highlight=False)
        console.print(f"{title} [green]done[/green]")

    @contextlib.contextmanager
    def map_progress(self, name: str):
        """Progress of a map: a rich bar on a terminal while output is enabled, else nothing."""
        if not (self.enabled and self._tty()):
            yield _NoProgress()
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        with Progress(
            TextColumn(f"{name}.map"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), transient=True
        ) as progress:
            yield _RichProgress(progress, progress.add_task(name, total=None))


class LineStream:
    """A text stream that writes only whole lines, one at a time, under one lock.

    While an app runs, the client's stdout and stderr are wrapped in this: a `print()` is several
    writes, and container output forwarded between two of them would split the client's line.
    Each thread's writes collect here until a newline; `flush()` lets a partial line (a prompt,
    a progress dot) through as it always would."""

    def __init__(self, inner):
        self._inner = inner
        self._lock = threading.Lock()
        self._local = threading.local()

    def write(self, text: str) -> int:
        pending = getattr(self._local, "pending", "") + text
        cut = pending.rfind("\n") + 1
        if cut:
            with self._lock:
                self._inner.write(pending[:cut])
        self._local.pending = pending[cut:]
        return len(text)

    def flush(self) -> None:
        pending = getattr(self._local, "pending", "")
        self._local.pending = ""
        with self._lock:
            if pending:
                self._inner.write(pending)
            self._inner.flush()

    def __getattr__(self, name):
        return getattr(self._inner, name)


@contextlib.contextmanager
def whole_lines():
    """Wrap sys.stdout and sys.stderr in LineStream for the duration (idempotent)."""
    saved = sys.stdout, sys.stderr
    if not isinstance(sys.stdout, LineStream):
        sys.stdout = LineStream(sys.stdout)
    if not isinstance(sys.stderr, LineStream):
        sys.stderr = LineStream(sys.stderr)
    try:
        yield
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (ValueError, OSError):
                pass
        sys.stdout, sys.stderr = saved


class _NoProgress:
    def advance(self, n: int = 1) -> None:
        pass

    def total(self, n: int) -> None:
        pass


class _RichProgress:
    def __init__(self, progress, task):
        self.progress, self.task = progress, task
        self._pending = 0
        self._last = 0.0

    def advance(self, n: int = 1) -> None:
        self._pending += n
        now = time.monotonic()
        if now - self._last > 0.1:
            self.progress.update(self.task, advance=self._pending)
            self._pending, self._last = 0, now

    def total(self, n: int) -> None:
        self.progress.update(self.task, total=n, advance=self._pending)
        self._pending = 0


_OUTPUT = _Output()


def output() -> _Output:
    return _OUTPUT


@contextlib.contextmanager
def enable_output(show_progress: bool = True):
    """Show runner's status, build logs and progress while the block runs."""
    before = _OUTPUT.enabled
    _OUTPUT.enabled = bool(show_progress)
    try:
        yield
    finally:
        _OUTPUT.enabled = before

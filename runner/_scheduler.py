"""Schedules of a deployed app: each function with `schedule=Period(...)` or `schedule=Cron(...)`
is called with no arguments at its times, for as long as the app is deployed.

One thread sleeps until the earliest next time. A run is a `.spawn()` of the function, so it gets
the function's retries and timeout like any call, and runs in the app's containers; its outcome is
logged (a failure with its error), and the next run happens whatever this one did. Runs do not
wait for each other: a slow run does not delay the next one. A Period counts from the deploy; a
Cron is evaluated in its time zone.
"""

from __future__ import annotations

import datetime
import threading
from typing import Any, Callable


class Scheduler:
    def __init__(self, app: Any, log: Callable[[str], None]):
        self.log = log
        self.jobs = [(name, f, f._schedule) for name, f in app._functions.items() if f._schedule is not None]
        self.stopped = threading.Event()
        self.thread: threading.Thread | None = None

    def start(self) -> None:
        if not self.jobs:
            return
        for name, _, schedule in self.jobs:
            self.log(f"schedule: {name} runs {schedule.describe()}")
        self.thread = threading.Thread(target=self._loop, name="runner-scheduler", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.stopped.set()
        if self.thread is not None:
            self.thread.join(5)

    def _loop(self) -> None:
        now = _utcnow()
        due = {name: schedule.next_after(now) for name, _, schedule in self.jobs}
        while not self.stopped.is_set():
            name = min(due, key=due.get)
            wait = (due[name] - _utcnow()).total_seconds()
            if wait > 0:
                self.stopped.wait(min(wait, 60.0))  # re-checked every minute: a clock change is noticed
                continue
            fn, schedule = next((f, s) for n, f, s in self.jobs if n == name)
            at = due[name]
            due[name] = schedule.next_after(at)  # a Period counts from the last time, not from now
            if due[name] <= _utcnow():  # fell behind (a suspended machine): skip missed runs
                due[name] = schedule.next_after(_utcnow())
            threading.Thread(target=self._run, args=(name, fn, at), daemon=True).start()

    def _run(self, name: str, fn: Any, at: datetime.datetime) -> None:
        when = at.strftime("%Y-%m-%dT%H:%M:%SZ")
        try:
            call = fn.spawn()
            call.get()
        except Exception as exc:  # noqa: BLE001 - logged; the next run still happens
            first = str(exc).splitlines()[0] if str(exc) else ""
            notes = "".join(f"\n{note}" for note in getattr(exc, "__notes__", ()))  # the remote traceback
            self.log(f"schedule: {name} run of {when} failed: {type(exc).__name__}: {first}{notes}")
            return
        self.log(f"schedule: {name} run of {when} succeeded")


def _utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)

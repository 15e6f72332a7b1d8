"""What the bench scripts share: percentiles, progress notes, the machine's description, and the
table they print. Standard library only at import (containers import the bench modules too)."""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
import sys


def pct(values: list[float], q: float) -> float:
    """The q-th percentile (0-100), linear between the closest ranks."""
    xs = sorted(values)
    if len(xs) == 1:
        return xs[0]
    pos = (len(xs) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def note(msg: str) -> None:
    print(f"  .. {msg}", file=sys.stderr, flush=True)


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("PASS" if ok else "MISS")


def print_table(title: str, table: list[tuple[str, str, str, str]]) -> None:
    """Rows of (measurement, measured, target, result), with rich when it is there."""
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        print(title)
        for m, v, tg, res in table:
            print(f"  {res:4}  {m}\n        {v}\n        target {tg}")
        return
    t = Table(title=title)
    for col in ("measurement", "measured", "target", "result"):
        t.add_column(col, overflow="fold")
    for m, v, tg, res in table:
        color = {"PASS": "green", "MISS": "red"}.get(res, "default")
        t.add_row(m, v, tg, f"[{color}]{res}[/]")
    Console(width=160).print(t)


def machine() -> dict:
    mem = ""
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal:"):
                mem = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    except OSError:
        pass
    try:
        dv = subprocess.run(["docker", "version", "--format", "{{.Server.Version}}"], capture_output=True,
                            text=True, timeout=10).stdout.strip() or "not answering"
    except (OSError, subprocess.TimeoutExpired):
        dv = "not installed"
    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"nproc": os.cpu_count(), "mem": mem, "docker": dv, "cpu": cpu,
            "python": platform.python_version(), "kernel": platform.release()}


def replace_section(doc_path, start: str, end: str, section: str, intro: str = "# Benchmarks\n") -> None:
    """Put `section` (which begins with `start` and ends with `end`) in the doc, in place of the
    old one, or at the end; the rest of the doc stays as it is."""
    doc = doc_path.read_text() if doc_path.exists() else intro
    if start in doc and end in doc and doc.index(start) < doc.index(end):
        doc = doc[:doc.index(start)] + section + doc[doc.index(end) + len(end):]
    else:
        doc = doc.rstrip("\n") + "\n\n" + section + "\n"
    doc_path.parent.mkdir(parents=True, exist_ok=True)
    doc_path.write_text(doc)


def measured_table(m: dict, wall: float, table: list[tuple[str, str, str, str]]) -> list[str]:
    """The lines every bench section has: when and where it was measured, then its table."""
    when = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    lines = [
        f"Measured {when} on {m['nproc']} CPUs ({m['cpu']}), {m['mem']}, Docker {m['docker']}, Python "
        f"{m['python']}, Linux {m['kernel']}; the whole run took {wall:.0f} s.",
        "",
        "| measurement | measured | target | result |",
        "|---|---|---|---|",
    ]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in table]
    return lines


class OverBudget(Exception):
    """A measurement (or the whole run) went over its time budget."""


def measure_each(steps, results: dict) -> dict:
    """Run each (name, function) measurement into `results` ({name: result, "errors": {name: why}}):
    one that fails does not lose the others; one over budget is recorded and ends the run (the
    OverBudget goes on to the caller)."""
    for name, fn in steps:
        note(f"measuring {name}")
        try:
            results[name] = fn()
        except OverBudget as exc:
            results["errors"][name] = str(exc)
            raise
        except Exception as exc:  # noqa: BLE001 - one failed measurement must not lose the others
            results["errors"][name] = f"{type(exc).__name__}: {exc}"
    return results


def start_budget(seconds: int) -> None:
    """Raise OverBudget in the main thread once the run has taken `seconds` (signal.alarm(0) ends it)."""
    import signal

    def alarm(*_):
        raise OverBudget(f"the whole run went over {seconds} s")

    signal.signal(signal.SIGALRM, alarm)
    signal.alarm(seconds)


def run_sections(steps, budget: int, block, doc, start: str, end: str, write: bool, cleanup=None,
                 show=None) -> int:
    """Measure each step within `budget` seconds (SIGALRM), show the results (`show(results)`, or
    print the section `block` makes of them), and put that section between `start` and `end` in
    `doc` when `write`. Exit status 1 if any failed."""
    import signal
    import time

    start_budget(budget)
    began = time.monotonic()
    results: dict = {"errors": {}}
    try:
        measure_each(steps, results)
    except OverBudget:
        pass  # recorded against the step it stopped
    finally:
        signal.alarm(0)
        if cleanup is not None:
            cleanup()
    text = block(results, machine(), time.monotonic() - began)
    if show is not None:
        show(results)
    else:
        print(text)
    if write:
        replace_section(doc, start, end, text)
        print(f"wrote {doc}")
    return 1 if results["errors"] else 0

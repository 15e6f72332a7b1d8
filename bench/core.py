"""Core benchmarks of runner: call latency, cold start, map throughput, large payloads.

    python bench/core.py                       # docker provider (the default)
    python bench/core.py --provider embedded   # worker subprocesses instead of containers
    python bench/core.py --no-write            # print the table, leave docs/benchmarks.md alone

Each figure is printed beside its target with PASS/MISS, and the table replaces this provider's
part of the section between `<!-- core:start -->` and `<!-- core:end -->` in docs/benchmarks.md
(the other provider's table there is kept). The figures are measured, never asserted in tests.

Every measurement is bounded in count and in time (a per-measurement deadline, and an alarm on
the whole run), so a hang cannot make this run forever.

Containers import this file as the module `core` (its directory is mounted as the app root), so
everything at module level must import in a bare image: only the standard library and runner.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import os
import pathlib
import re
import signal
import statistics
import sys
import time

from _common import OverBudget, machine, measure_each, measured_table, note, pct, replace_section, start_budget, verdict
from _common import print_table as print_table_rows
import runner

app = runner.App("bench-core")


# ---- the functions measured (module level: containers import them by name) -------------------
@app.function()
def noop(x):
    return x


@app.function(min_containers=2, max_containers=2)
def inc(x):
    return x + 1


@app.function()
def echo(data):
    return data


def inc_local(x):
    """The same work as `inc`, for the ProcessPoolExecutor baseline."""
    return x + 1


# ---- sizes, targets and bounds --------------------------------------------------------------
REMOTE_CALLS = 2000
REMOTE_WARMUP = 200
COLD_STARTS = 10
MAP_INPUTS = 10_000
MAP_WARMUP = 400
MAP_REPEATS = 3
PAYLOAD = 100_000_000  # bytes; MB below means 10**6 bytes
PAYLOAD_REPEATS = 3
MILLION = 1_000_000
TARGET_MILLION_GROWTH_MIB = 64.0

TARGET_REMOTE_P50_MS = 3.0
TARGET_COLD_P50_S = 0.6
TARGET_MAP_RATIO = 0.50
TARGET_PAYLOAD_MBPS = 300.0

BUDGET = {"remote": 40.0, "cold": 60.0, "map": 60.0, "payload": 45.0, "million": 60.0}  # seconds per measurement
TOTAL_BUDGET = 270  # seconds for the whole run, enforced with SIGALRM

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "benchmarks.md"
START, END = "<!-- core:start -->", "<!-- core:end -->"





# ---- (a) warm .remote() round trip ----------------------------------------------------------
def bench_remote() -> dict:
    for i in range(REMOTE_WARMUP):
        assert noop.remote(i) == i
    deadline = time.monotonic() + BUDGET["remote"]
    lat = []
    for i in range(REMOTE_CALLS):
        t0 = time.perf_counter()
        noop.remote(i)
        lat.append(time.perf_counter() - t0)
        if time.monotonic() > deadline:
            break
    ms = [x * 1000 for x in lat]
    return {"n": len(ms), "p50": pct(ms, 50), "p95": pct(ms, 95), "p99": pct(ms, 99), "mean": statistics.fmean(ms)}


# ---- (b) first call with a cached image -----------------------------------------------------
def bench_cold(provider: str) -> dict:
    # Untimed: builds (or finds) the image, so every timed start below has it cached.
    with app.run(provider=provider):
        noop.remote(0)
    deadline = time.monotonic() + BUDGET["cold"]
    first, teardown = [], []
    for i in range(COLD_STARTS):
        t0 = time.perf_counter()
        with app.run(provider=provider):
            assert noop.remote(i) == i
            t1 = time.perf_counter()
        t2 = time.perf_counter()
        first.append(t1 - t0)
        teardown.append(t2 - t1)
        if time.monotonic() > deadline:
            break
    note(f"cold: {[round(t, 3) for t in first]} s")
    return {"n": len(first), "p50": pct(first, 50), "p95": pct(first, 95), "min": min(first),
            "teardown_p50": pct(teardown, 50)}


# ---- (c) map throughput against ProcessPoolExecutor -----------------------------------------
def _wait_containers(fn, count: int, timeout: float) -> int:
    """How many containers serve `fn` (waiting up to `timeout` for `count`); read-only peek."""
    end = time.monotonic() + timeout
    pool = fn._pool()
    while True:
        up = len([c for c in pool.containers if not c.stopping])
        if up >= count or time.monotonic() > end:
            return up
        time.sleep(0.05)


def _timed_runner_map(deadline: float) -> float | None:
    t0 = time.perf_counter()
    total = 0
    for n, y in enumerate(inc.map(range(MAP_INPUTS))):
        total += y
        if n % 1000 == 0 and time.monotonic() > deadline:
            return None  # over budget: the generator's close cancels the rest
    elapsed = time.perf_counter() - t0
    assert total == sum(range(1, MAP_INPUTS + 1)), total
    return elapsed


def _timed_pool_map(executor) -> float:
    t0 = time.perf_counter()
    total = sum(executor.map(inc_local, range(MAP_INPUTS), chunksize=64))
    elapsed = time.perf_counter() - t0
    assert total == sum(range(1, MAP_INPUTS + 1)), total
    return elapsed


def bench_map(executor) -> dict:
    for _ in range(2):
        assert len(list(inc.map(range(MAP_WARMUP)))) == MAP_WARMUP
    up = _wait_containers(inc, 2, 30)
    assert len(list(inc.map(range(MAP_WARMUP)))) == MAP_WARMUP  # both containers now see work
    list(executor.map(inc_local, range(MAP_WARMUP), chunksize=64))
    deadline = time.monotonic() + BUDGET["map"]
    runner_rates, pool_rates = [], []
    for _ in range(MAP_REPEATS):
        t = _timed_runner_map(deadline)
        if t is None:
            break
        runner_rates.append(MAP_INPUTS / t)
        pool_rates.append(MAP_INPUTS / _timed_pool_map(executor))
        if time.monotonic() > deadline:
            break
    if not runner_rates:
        raise OverBudget("map: not one repetition finished within its budget")
    note(f"map: {up} containers; runner {[round(x) for x in runner_rates]}/s, pool {[round(x) for x in pool_rates]}/s")
    best_r, best_p = max(runner_rates), max(pool_rates)
    return {"n": len(runner_rates), "containers": up, "runner_best": best_r, "pool_best": best_p,
            "runner_median": statistics.median(runner_rates), "pool_median": statistics.median(pool_rates),
            "ratio": best_r / best_p}


# ---- (d) 100 MB argument round trip ---------------------------------------------------------
def bench_payload() -> dict:
    assert echo.remote(b"x" * 1000) == b"x" * 1000  # the container is up before timing
    payload = os.urandom(1 << 20) * (PAYLOAD >> 20) + os.urandom(PAYLOAD % (1 << 20))
    assert len(payload) == PAYLOAD
    deadline = time.monotonic() + BUDGET["payload"]
    times = []
    for _ in range(PAYLOAD_REPEATS):
        t0 = time.perf_counter()
        back = echo.remote(payload)
        times.append(time.perf_counter() - t0)
        assert len(back) == PAYLOAD and back == payload
        del back
        if time.monotonic() > deadline:
            break
    note(f"payload: {[round(t, 3) for t in times]} s")
    mb = PAYLOAD / 1e6
    return {"n": len(times), "best_s": min(times), "median_s": statistics.median(times),
            "best": 2 * mb / min(times), "median": 2 * mb / statistics.median(times),
            "oneway_best": mb / min(times), "oneway_median": mb / statistics.median(times)}


def _rss_mib() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def bench_million() -> dict:
    """A map over a million inputs: the client's memory must stay flat (bounded window)."""
    before = _rss_mib()
    peak = before
    t0 = time.perf_counter()
    total = 0
    for n, y in enumerate(inc.map(range(MILLION))):
        total += y
        if n % 50_000 == 0:
            peak = max(peak, _rss_mib())
    elapsed = time.perf_counter() - t0
    peak = max(peak, _rss_mib())
    assert total == sum(range(1, MILLION + 1)), total
    return {"rate": MILLION / elapsed, "before": before, "peak": peak, "growth": peak - before}


# ---- reporting ------------------------------------------------------------------------------
def rows(r: dict) -> list[tuple[str, str, str, str]]:
    out = []
    a = r.get("remote")
    if a:
        out.append((f"(a) warm `.remote()` round trip, trivial fn ({a['n']} calls)",
                    f"p50 {a['p50']:.2f} ms, p95 {a['p95']:.2f} ms (p99 {a['p99']:.2f}, mean {a['mean']:.2f})",
                    f"p50 <= {TARGET_REMOTE_P50_MS:g} ms", verdict(a["p50"] <= TARGET_REMOTE_P50_MS)))
    b = r.get("cold")
    if b:
        out.append((f"(b) enter `app.run()` to first `.remote()` back, cached image ({b['n']} runs)",
                    f"p50 {b['p50']:.3f} s, p95 {b['p95']:.3f} s (min {b['min']:.3f}; exit of app.run p50 "
                    f"{b['teardown_p50']:.3f} s, not counted)",
                    f"p50 <= {TARGET_COLD_P50_S:g} s", verdict(b["p50"] <= TARGET_COLD_P50_S)))
    c = r.get("map")
    if c:
        out.append((f"(c) `.map` of {MAP_INPUTS:,} trivial inputs, 2 warm containers, best of {c['n']}",
                    f"runner {c['runner_best']:,.0f}/s vs ProcessPoolExecutor(2) chunksize=64 "
                    f"{c['pool_best']:,.0f}/s: ratio {c['ratio']:.0%} (medians {c['runner_median']:,.0f}/s "
                    f"vs {c['pool_median']:,.0f}/s)",
                    f"ratio >= {TARGET_MAP_RATIO:.0%}", verdict(c["ratio"] >= TARGET_MAP_RATIO)))
    d = r.get("payload")
    if d:
        out.append((f"(d) 100 MB `bytes` argument echoed back, {d['n']} runs",
                    f"best {d['best']:,.0f} MB/s, median {d['median']:,.0f} MB/s (sent+received / time; one way "
                    f"best {d['oneway_best']:,.0f}, median {d['oneway_median']:,.0f} MB/s; best {d['best_s']:.3f} s)",
                    f">= {TARGET_PAYLOAD_MBPS:g} MB/s (sent+received)", verdict(d["best"] >= TARGET_PAYLOAD_MBPS)))
    e = r.get("million")
    if e:
        out.append((f"(e) `.map` of {MILLION:,} trivial inputs: client memory",
                    f"RSS {e['before']:.0f} MiB before, peak {e['peak']:.0f} MiB (growth {e['growth']:.1f} MiB); "
                    f"{e['rate']:,.0f} inputs/s",
                    f"growth <= {TARGET_MILLION_GROWTH_MIB:g} MiB (flat)",
                    verdict(e["growth"] <= TARGET_MILLION_GROWTH_MIB)))
    for name, err in r.get("errors", {}).items():
        out.append((name, f"failed: {err}", "", "MISS"))
    return out


def print_table(provider: str, r: dict) -> None:
    print_table_rows(f"runner core benchmarks, {provider} provider", rows(r))



def block(provider: str, r: dict, m: dict, wall: float) -> str:
    lines = [f"<!-- core:{provider}:start -->", f"### {provider} provider", "", *measured_table(m, wall, rows(r))]
    lines.append(f"<!-- core:{provider}:end -->")
    return "\n".join(lines)


INTRO = """# Benchmarks

Figures measured on this machine by the scripts in `bench/`; they are measured, not asserted in
tests, so a slower machine makes them worse without failing anything.

Machine: {nproc} CPUs (`nproc`; {cpu}), {mem} memory, Docker {docker}, Python {python}, Linux {kernel}.
File created {date}.

"""

SECTION_HELP = """## Core: latency, cold start, map throughput, payloads

The tables below come from `python bench/core.py` (docker provider) and
`python bench/core.py --provider embedded`; each run replaces its own provider's table.

- (a) `.remote()` of a function returning its argument, after {warm} untimed calls; {calls} timed calls.
- (b) From entering `with app.run():` to the first `.remote()` returning: a cold container start with
  the image already built (one untimed run first); {cold} fresh `app.run()`s. The exit of `app.run()`
  (stopping the container) is shown but not counted.
- (c) `f.map(range({n:,}))` of `x + 1` on a function with `min_containers=2, max_containers=2`, both
  containers warmed with maps of {mw} inputs, against `ProcessPoolExecutor(2).map(fn, range({n:,}),
  chunksize=64)` (pool created and warmed first) in the same run; repeated {reps} times, the best
  of each is compared (medians shown too).
- (d) `.remote(data)` of a function returning its 100 MB (10^8 bytes) `bytes` argument;
  throughput = (bytes sent + bytes received) / elapsed, i.e. 2 x 100 MB / time; the one-way
  figure is 100 MB / time. Repeated {preps} times; best and median shown, the target is judged
  on the best.
- (e) `f.map(range(1,000,000))` on the same function: the client's resident memory before and its
  peak during the map (sampled every 50,000 results); the map keeps at most a few thousand inputs
  outstanding, so it must stay flat.

Why (c) can beat the process pool: for a plain fast function, a map sends its items in chunks
sized to about 5 ms of work (measured as results come back), one pickle per chunk each way, and
keeps about 20 ms of work queued per container; the pool's `chunksize=64` is fixed.
"""


def write_doc(provider: str, text: str, m: dict) -> None:
    DOC.parent.mkdir(parents=True, exist_ok=True)
    if DOC.exists():
        doc = DOC.read_text()
    else:
        doc = INTRO.format(date=datetime.date.today().isoformat(), **m)
    keep = {}
    if START in doc and END in doc:
        old = doc[doc.index(START) + len(START):doc.index(END)]
        for p in ("docker", "embedded"):
            found = re.search(rf"<!-- core:{p}:start -->.*?<!-- core:{p}:end -->", old, re.S)
            if found:
                keep[p] = found.group(0)
    keep[provider] = text
    help_text = SECTION_HELP.format(warm=REMOTE_WARMUP, calls=REMOTE_CALLS, cold=COLD_STARTS, n=MAP_INPUTS,
                                    mw=MAP_WARMUP, reps=MAP_REPEATS, preps=PAYLOAD_REPEATS)
    body = "\n\n".join([help_text.rstrip()] + [keep[p] for p in ("docker", "embedded") if p in keep])
    replace_section(DOC, START, END, f"{START}\n{body}\n{END}", intro=doc)
    print(f"wrote {DOC.relative_to(ROOT)}")


# ---- main -----------------------------------------------------------------------------------
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--provider", choices=("docker", "embedded"), default="docker")
    ap.add_argument("--no-write", action="store_true", help="do not update docs/benchmarks.md")
    args = ap.parse_args()

    start_budget(TOTAL_BUDGET)
    started = time.monotonic()
    results: dict = {"errors": {}}
    # The pool forks its workers now, before runner starts any thread in this process.
    executor = concurrent.futures.ProcessPoolExecutor(2)
    try:
        list(executor.map(inc_local, range(MAP_WARMUP), chunksize=64))
        measure_each([("cold", lambda: bench_cold(args.provider))], results)
        with app.run(provider=args.provider):
            measure_each([("remote", bench_remote), ("map", lambda: bench_map(executor)),
                          ("payload", bench_payload), ("million", bench_million)], results)
    except OverBudget as exc:
        if str(exc) not in results["errors"].values():  # over budget outside a step
            results["errors"]["run"] = str(exc)
    finally:
        signal.alarm(0)
        executor.shutdown(cancel_futures=True)
    wall = time.monotonic() - started
    print_table(args.provider, results)
    print(f"total {wall:.1f} s")
    if not args.no_write:
        m = machine()
        write_doc(args.provider, block(args.provider, results, m, wall), m)
    return 1 if results["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())

"""The queue plane (runner._plane): a million trivial inputs through Redis Streams to local
workers, and how soon a warm worker starts an input after it is enqueued.

    python bench/plane.py              # measure, print the table, update docs/benchmarks.md
    python bench/plane.py --no-write   # print the table, leave docs/benchmarks.md alone
    python bench/plane.py --workers 4  # worker processes per function (default 2)

A private redis-server listens on a unix socket in a temporary directory; WORKERS worker
processes (`python -m runner._plane.worker`, each with runner's agent as its child) serve each
function on this host. The client is this process, calling through `QueuePool` with the ordinary
call API:

- throughput: `double.map(range(1_000_000))` (x * 2), every result checked, end to end from the
  first input enqueued to the last result yielded; the client's RSS is sampled every 50,000
  results (flat memory: the map keeps MAP_WINDOW items outstanding and results are trimmed from
  the stream as they are read). Target >= 20,000 inputs/s.
- per entry: SINGLES inputs of a function with a retry policy, which keeps map items out of chunks,
  so each is its own stream entry, read, run, answered and acknowledged on its own (no target:
  it shows what chunking saves).
- latency: LATENCY_CALLS sequential `.remote()` calls of a function returning `time.time()` when
  it starts, after warm-up calls, so a worker is waiting in XREADGROUP BLOCK; enqueue-to-start is
  that time minus the time just before `.remote()` (one clock: same host). Target p50 <= 5 ms.

The table replaces the section between `<!-- plane:start -->` and `<!-- plane:end -->` in
docs/benchmarks.md. The whole run is bounded by SIGALRM; redis-server and the workers are stopped
on the way out, whatever happened.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # this tree's runner, for the client and the workers alike

from _common import measured_table, note, pct, run_sections, verdict

import runner
from runner._plane import start_local_worker, through_queue

MILLION = 1_000_000
SINGLES = 50_000
LATENCY_CALLS = 300
WARMUP_CALLS = 30
TARGET_RATE = 20_000
TARGET_P50_MS = 5.0
TOTAL_BUDGET = 240
DOC = ROOT / "docs" / "benchmarks.md"
START, END = "<!-- plane:start -->", "<!-- plane:end -->"

app = runner.App("bench-plane")


@app.function(serialized=True)
def double(x: int) -> int:
    return x * 2


@app.function(serialized=True, retries=runner.Retries(max_retries=0))
def double_single(x: int) -> int:
    """The same work, but a retry policy keeps map items out of chunks: one stream entry each."""
    return x * 2


@app.function(serialized=True)
def stamp() -> float:
    import time as _t

    return _t.time()


def _rss_mib() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class Plane:
    """redis-server and the workers, started once for every measurement and stopped at the end."""

    def __init__(self, workers: int):
        self.dir = tempfile.mkdtemp(prefix="rqb-", dir="/tmp")
        self.sock = os.path.join(self.dir, "redis.sock")
        self.url = f"unix://{self.sock}?db=0"
        self.procs: list[subprocess.Popen] = []
        self.bound: list = []
        self.workers = workers
        self.log = open(os.path.join(self.dir, "workers.log"), "ab")

    def start(self) -> None:
        self.procs.append(subprocess.Popen(
            ["redis-server", "--port", "0", "--unixsocket", self.sock, "--unixsocketperm", "700", "--save", "",
             "--appendonly", "no", "--dir", self.dir], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        deadline = time.monotonic() + 10
        while not os.path.exists(self.sock):
            if time.monotonic() > deadline or self.procs[0].poll() is not None:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.02)
        for fn in ("double", "double_single", "stamp"):
            for _ in range(self.workers):
                self.procs.append(start_local_worker(self.url, f"bench.{fn}", env={"PYTHONPATH": str(ROOT)},
                                                     log=self.log))

    def bind(self, fn):
        q = through_queue(fn, self.url, key=f"bench.{fn._name}")
        self.bound.append(q)
        return q

    def stop(self) -> None:
        for q in self.bound:
            try:
                q._queue_pool.close()
            except Exception:  # noqa: BLE001 - the rest must still stop
                pass
        for p in reversed(self.procs):  # workers first, then the server
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def bench_throughput(plane: Plane) -> dict:
    q = plane.bind(double)
    assert sum(q.map(range(20_000))) == 2 * sum(range(20_000))  # warm: workers up, chunk size known
    before = _rss_mib()
    peak = before
    samples = []
    total = 0
    t0 = time.perf_counter()
    for n, y in enumerate(q.map(range(MILLION))):
        total += y
        if n % 50_000 == 0:
            rss = _rss_mib()
            peak = max(peak, rss)
            samples.append(rss)
    elapsed = time.perf_counter() - t0
    peak = max(peak, _rss_mib())
    assert total == 2 * sum(range(MILLION)), total
    note(f"{MILLION / elapsed:,.0f} inputs/s; duplicates dropped {q._queue_pool.duplicates}")
    return {"rate": MILLION / elapsed, "elapsed": elapsed, "before": before, "peak": peak, "growth": peak - before,
            "first_half": max(samples[: len(samples) // 2]), "second_half": max(samples[len(samples) // 2 :]),
            "chunk": q._queue_pool.chunk_size()}


def bench_single(plane: Plane) -> dict:
    q = plane.bind(double_single)
    assert sum(q.map(range(2_000))) == 2 * sum(range(2_000))
    t0 = time.perf_counter()
    assert sum(q.map(range(SINGLES))) == 2 * sum(range(SINGLES))
    elapsed = time.perf_counter() - t0
    return {"rate": SINGLES / elapsed, "elapsed": elapsed}


def bench_latency(plane: Plane) -> dict:
    q = plane.bind(stamp)
    for _ in range(WARMUP_CALLS):
        q.remote()
    lags = []
    for _ in range(LATENCY_CALLS):
        t0 = time.time()
        started = q.remote()
        lags.append((started - t0) * 1000)
        time.sleep(0.002)  # the worker is idle, blocked in XREADGROUP, when the next input arrives
    return {"p50": pct(lags, 50), "p90": pct(lags, 90), "p99": pct(lags, 99), "n": len(lags)}


def rows(r: dict, workers: int) -> list[tuple[str, str, str, str]]:
    out = []
    t = r.get("throughput")
    if t:
        out.append((f"1,000,000 trivial inputs (x * 2) through `.map`, Redis Streams, {workers} local worker processes",
                    f"{t['rate']:,.0f} inputs/s end to end ({t['elapsed']:.1f} s; {t['chunk']} items per stream entry)",
                    f">= {TARGET_RATE:,} inputs/s", verdict(t["rate"] >= TARGET_RATE)))
        out.append(("client RSS during that map (sampled every 50,000 results)",
                    (f"{t['before']:.0f} MiB before, peak {t['peak']:.0f} MiB (+{t['growth']:.1f} MiB); max "
                     f"{t['first_half']:.0f} MiB in the first half, {t['second_half']:.0f} MiB in the second"),
                    "flat", verdict(t["second_half"] - t["first_half"] < 20)))
    s = r.get("single")
    if s:
        out.append((f"{SINGLES:,} inputs of the same function, one stream entry each (a retry policy disables chunks)",
                    f"{s['rate']:,.0f} inputs/s ({s['elapsed']:.1f} s)", "n/a (per-entry cost)", "n/a"))
    lat = r.get("latency")
    if lat:
        out.append((f"enqueue-to-start, warm idle worker ({lat['n']} sequential `.remote()` calls)",
                    f"p50 {lat['p50']:.2f} ms, p90 {lat['p90']:.2f} ms, p99 {lat['p99']:.2f} ms",
                    f"p50 <= {TARGET_P50_MS:g} ms", verdict(lat["p50"] <= TARGET_P50_MS)))
    for name, err in r.get("errors", {}).items():
        out.append((name, f"failed: {err}", "", "MISS"))
    return out


SECTION_HELP = """## Queue plane: Redis Streams to pulling workers

The table below comes from `python bench/plane.py`. A private redis-server on a unix socket, and
{workers} worker processes per function (`python -m runner._plane.worker`, each running runner's
agent as its child) on this host; the client is the benchmark's process, calling through
`runner._plane.QueuePool` with the ordinary call API. Client, server and workers share the
machine's CPUs. Throughput counts from the first input enqueued to the last result yielded, every
result checked; map items travel in chunks sized from the workers' measured time per item. The
per-entry row runs the same work with a retry policy, which keeps every item its own stream entry.
Enqueue-to-start is the function's own `time.time()` at its start minus the client's just before
`.remote()`, with the worker idle in `XREADGROUP BLOCK`.
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--no-write", action="store_true", help="do not update docs/benchmarks.md")
    ap.add_argument("--workers", type=int, default=2, help="worker processes per function (default 2)")
    args = ap.parse_args()
    if not shutil.which("redis-server"):
        print("error: this benchmark needs redis-server on PATH (apt-get install -y redis-server)", file=sys.stderr)
        return 2
    plane = Plane(args.workers)

    def block(r: dict, m: dict, wall: float) -> str:
        return "\n".join([START, SECTION_HELP.format(workers=args.workers).rstrip(), "",
                          *measured_table(m, wall, rows(r, args.workers)), END])

    started = []

    def ensure():
        if not started:
            plane.start()
            started.append(True)

    steps = (("throughput", lambda: (ensure(), bench_throughput(plane))[1]),
             ("single", lambda: (ensure(), bench_single(plane))[1]),
             ("latency", lambda: (ensure(), bench_latency(plane))[1]))
    return run_sections(steps, TOTAL_BUDGET, block, DOC, START, END, not args.no_write, cleanup=plane.stop)


if __name__ == "__main__":
    sys.exit(main())

"""Requests per second through the front door, beside the same app hit directly, in one run.

    python bench/web.py              # measure, print the table, update docs/benchmarks.md
    python bench/web.py --no-write   # print the table, leave docs/benchmarks.md alone

A trivial ASGI app answering a small JSON body (`app` below) runs under uvicorn in a subprocess on
127.0.0.1, as a web function's container would. The front door (`runner._frontdoor.FrontDoor`)
runs in this process, as it does in `runner run`, with a router that always hands out that
uvicorn. `wrk` (keep-alive, CONNECTIONS connections, one thread) loads each for DURATION seconds,
ROUNDS times, interleaved direct / door so both see the same machine; the median round counts.
Target: the door serves at least 70% of the requests per second the app serves directly.

The table replaces the section between `<!-- web:start -->` and `<!-- web:end -->` in
docs/benchmarks.md. Every run of wrk is bounded in time, the whole run by SIGALRM, and uvicorn
and the door are stopped on the way out.
"""

from __future__ import annotations

import argparse
import pathlib
import re
import shutil
import socket
import statistics
import subprocess
import sys
import time

from _common import measured_table, run_sections, verdict

ROUNDS = 3
DURATION = 5  # seconds of load per round and target
CONNECTIONS = 16
TARGET_RATIO = 0.70
TOTAL_BUDGET = 180  # seconds for the whole run, enforced with SIGALRM
ROOT = pathlib.Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "benchmarks.md"
START, END = "<!-- web:start -->", "<!-- web:end -->"
BODY = b'{"ok":true}'


async def app(scope, receive, send):
    """The app under load: a fixed JSON answer, as small as an endpoint gets."""
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(BODY))]})
    await send({"type": "http.response.body", "body": BODY})


class OneBackend:
    """The router: every request goes to the one uvicorn."""

    def __init__(self, port: int):
        self.port = port

    async def acquire(self, label: str):
        if label != "api":
            raise KeyError(label)
        return "127.0.0.1", self.port, lambda: None

    def labels(self) -> list[str]:
        return ["api"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_uvicorn() -> tuple[subprocess.Popen, int]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "web:app", "--app-dir", str(ROOT / "bench"), "--host",
                             "127.0.0.1", "--port", str(port), "--log-level", "warning", "--no-access-log"])
    deadline = time.monotonic() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, port
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"uvicorn did not start on port {port} (exit {proc.poll()})") from None
            time.sleep(0.05)


def wrk(url: str) -> dict:
    out = subprocess.run(["wrk", "-t1", f"-c{CONNECTIONS}", f"-d{DURATION}s", "--latency", url],
                         capture_output=True, text=True, timeout=DURATION + 30, check=False)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out.stdout)
    if out.returncode or not rps or "Non-2xx" in out.stdout or "Socket errors" in out.stdout:
        raise RuntimeError(f"wrk {url} failed: {out.stdout.strip()} {out.stderr.strip()}")
    lat = dict(re.findall(r"^\s+(50|99)%\s+([\d.]+\w+)$", out.stdout, re.MULTILINE))
    return {"rps": float(rps.group(1)), "p50": lat.get("50", "?"), "p99": lat.get("99", "?")}


def bench_door() -> dict:
    from runner._frontdoor import FrontDoor

    proc, port = start_uvicorn()
    door = FrontDoor(OneBackend(port))
    try:
        door.start()
        direct_url, door_url = f"http://127.0.0.1:{port}/", f"{door.url}/api/"
        wrk(direct_url), wrk(door_url)  # one untimed round each
        direct, through = [], []
        for _ in range(ROUNDS):
            direct.append(wrk(direct_url))
            through.append(wrk(door_url))
    finally:
        door.stop()
        proc.terminate()
        proc.wait(10)

    def median(runs):
        return sorted(runs, key=lambda r: r["rps"])[len(runs) // 2]

    return {"direct": median(direct), "door": median(through),
            "ratio": statistics.median(t["rps"] / d["rps"] for d, t in zip(direct, through))}


COLD_RUNS = 5
TARGET_COLD_S = 1.0


def bench_cold() -> dict:
    """First request to a web function at zero containers (docker, image cached): the front door
    holds it while a container starts, its server comes up, and it answers."""
    import os
    import urllib.request

    import runner

    os.environ["RUNNER_PROVIDER"] = "docker"
    app = runner.App("bench-web-cold", image=runner.Image.debian_slim().pip_install("fastapi[standard]"))

    @app.function(serialized=True, scaledown_window=1)
    @runner.fastapi_endpoint()
    def ping() -> dict:
        return {"ok": True}

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    times = []
    with app.run():
        pool = app._session.web_pools["ping"]
        url = ping.get_web_url()
        opener.open(url, timeout=600).read()  # builds or finds the image: untimed
        for _ in range(COLD_RUNS):
            deadline = time.monotonic() + 30
            while any(not c.stopping for c in pool.containers) or pool.starting:
                if time.monotonic() > deadline:
                    raise RuntimeError("the function did not scale to zero within 30 s")
                time.sleep(0.05)
            began = time.perf_counter()
            opener.open(url, timeout=60).read()
            times.append(time.perf_counter() - began)
    times.sort()
    return {"p50": times[len(times) // 2], "min": times[0], "max": times[-1], "n": len(times)}


def rows(r: dict) -> list[tuple[str, str, str, str]]:
    out = []
    w = r.get("door")
    if w:
        d, t = w["direct"], w["door"]
        out.append(((f"trivial ASGI app under uvicorn, directly (wrk, {CONNECTIONS} keep-alive connections, "
                     f"median of {ROUNDS})"),
                    f"{d['rps']:,.0f} req/s, latency p50 {d['p50']}, p99 {d['p99']}", "baseline", "n/a"))
        out.append(("the same app through the front door (`http://127.0.0.1:PORT/api/`)",
                    (f"{t['rps']:,.0f} req/s, latency p50 {t['p50']}, p99 {t['p99']}; "
                     f"{w['ratio']:.0%} of direct (median of the rounds' ratios)"),
                    f">= {TARGET_RATIO:.0%} of direct", verdict(w["ratio"] >= TARGET_RATIO)))
    c = r.get("cold")
    if c:
        out.append((f"first request to a `fastapi_endpoint` at zero containers, docker, image cached ({c['n']} wakes)",
                    f"p50 {c['p50']:.3f} s (min {c['min']:.3f}, max {c['max']:.3f}): container start, uvicorn start, answer",
                    f"p50 <= {TARGET_COLD_S:g} s", verdict(c["p50"] <= TARGET_COLD_S)))
    for name, err in r.get("errors", {}).items():
        out.append((name, f"failed: {err}", "", "MISS"))
    return out


SECTION_HELP = f"""## Web endpoints: the front door

The table below comes from `python bench/web.py`. A trivial ASGI app (a fixed 11-byte JSON answer)
runs under uvicorn in a subprocess, as in a web function's container; the front door runs in the
benchmark's process, as in `runner run`, routing `/api/...` to it. `wrk` loads each with
{CONNECTIONS} keep-alive connections for {DURATION} s, {ROUNDS} rounds interleaved (direct, door, ...), after
one untimed round each; the median counts. Load generator, door and app share the machine's CPUs,
so the door's share of them is part of what is measured.

The first-request row: a `@fastapi_endpoint` function on the docker provider with
`scaledown_window=1`, its image built once beforehand; each time it has scaled to zero, one request
is timed from sending to the answer, through the front door, which holds it while a container starts.
"""


def block(r: dict, m: dict, wall: float) -> str:
    return "\n".join([START, SECTION_HELP.rstrip(), "", *measured_table(m, wall, rows(r)), END])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--no-write", action="store_true", help="do not update docs/benchmarks.md")
    args = ap.parse_args()
    if not shutil.which("wrk"):
        print("error: this benchmark drives load with wrk, which is not installed; install it "
              "(`apt-get install -y wrk`, `brew install wrk`) and run it again", file=sys.stderr)
        return 2

    return run_sections((("door", bench_door), ("cold", bench_cold)), TOTAL_BUDGET, block, DOC, START, END,
                        not args.no_write)

if __name__ == "__main__":
    sys.exit(main())

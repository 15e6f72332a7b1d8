"""Deployed apps: calls from another process, and a redeploy under load.

    python bench/deploy.py              # measure, print the table, update docs/benchmarks.md
    python bench/deploy.py --no-write   # print the table, leave docs/benchmarks.md alone

An app is deployed on the docker provider (`runner deploy`, its own RUNNER_HOME under /tmp) and
called from this process with `Function.from_name`, beside the same function called in a run of
its own (`with app.run():`), so the cost of the extra hop (client -> the app's daemon -> its warm
container) shows against the in-run call. Then, while two threads request a web endpoint in a loop
and calls are in flight, the app is redeployed: every request must get an answer.

The table replaces the section between `<!-- deploy:start -->` and `<!-- deploy:end -->` in
docs/benchmarks.md. The whole run is bounded by SIGALRM; the deployed app is stopped on the way out.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import urllib.request

from _common import measured_table, pct, run_sections, verdict

CALLS = 300
MAP_ITEMS = 20_000
LOAD_SECONDS = 6.0
TOTAL_BUDGET = 420
ROOT = pathlib.Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "benchmarks.md"
START, END = "<!-- deploy:start -->", "<!-- deploy:end -->"
NAME = "bench-deploy"
WORK = pathlib.Path(tempfile.mkdtemp(prefix="rb-dep-", dir="/tmp"))
os.environ["RUNNER_HOME"] = str(WORK / "home")
os.environ["RUNNER_PROVIDER"] = "docker"

APP = '''
import time
import modal

app = modal.App("bench-deploy", image=modal.Image.debian_slim().pip_install("fastapi[standard]"))

@app.function(min_containers=1)
def square(x: int) -> int:
    return x * x

@app.function()
def slow(seconds: float) -> str:
    time.sleep(seconds)
    return "VERSION"

@app.function(min_containers=1)
@modal.fastapi_endpoint()
def version():
    return {"version": "VERSION"}
'''


def write_app(version: str) -> None:
    (WORK / "app.py").write_text(textwrap.dedent(APP).replace("VERSION", version))


def deploy() -> float:
    began = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "runner", "deploy", "app.py"], cwd=WORK, capture_output=True,
                          text=True, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"runner deploy failed: {proc.stderr.strip().splitlines()[-1:]}")
    return time.perf_counter() - began


def bench_calls() -> dict:
    import runner

    write_app("v1")
    first = deploy()  # builds the image (or finds it cached)
    again = deploy()  # a redeploy with the image cached: the figure users wait for
    square = runner.Function.from_name(NAME, "square")
    square.remote(1)
    times = []
    for i in range(CALLS):
        began = time.perf_counter()
        square.remote(i)
        times.append(time.perf_counter() - began)
    began = time.perf_counter()
    assert sum(square.map(range(MAP_ITEMS))) == sum(i * i for i in range(MAP_ITEMS))
    map_rate = MAP_ITEMS / (time.perf_counter() - began)

    app = runner.App("bench-deploy-run")

    @app.function(serialized=True, min_containers=1)
    def local_square(x: int) -> int:
        return x * x

    local = []
    with app.run():
        local_square.remote(1)
        for i in range(CALLS):
            began = time.perf_counter()
            local_square.remote(i)
            local.append(time.perf_counter() - began)
    return {"first": first, "again": again, "p50": pct(times, 50), "p99": pct(times, 99),
            "local_p50": pct(local, 50), "map_rate": map_rate}


def bench_redeploy() -> dict:
    import runner
    from runner._deploy import read_state

    url = read_state(NAME)["web"]["version"]
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    slow = runner.Function.from_name(NAME, "slow")
    answers: list[tuple[float, str]] = []
    errors: list[str] = []
    stop = threading.Event()

    def hammer():
        while not stop.is_set():
            began = time.perf_counter()
            try:
                version = json.loads(opener.open(url, timeout=60).read())["version"]
                answers.append((time.perf_counter() - began, version))
            except Exception as exc:  # noqa: BLE001 - counted
                errors.append(repr(exc))

    calls: list[str] = []

    def call():
        try:
            calls.append(slow.remote(2.0))
        except Exception as exc:  # noqa: BLE001 - counted
            errors.append(repr(exc))

    threads = [threading.Thread(target=hammer) for _ in range(2)] + [threading.Thread(target=call) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    write_app("v2")
    took = deploy()
    time.sleep(max(0.0, LOAD_SECONDS - took))
    stop.set()
    for t in threads:
        t.join(120)
    latencies = [a[0] for a in answers]
    return {"requests": len(answers), "errors": len(errors), "first_error": errors[0] if errors else "",
            "v1": sum(1 for a in answers if a[1] == "v1"), "v2": sum(1 for a in answers if a[1] == "v2"),
            "max": max(latencies), "p50": pct(latencies, 50), "calls_v1": calls.count("v1"), "deploy": took}


def rows(r: dict) -> list[tuple[str, str, str, str]]:
    out = []
    c = r.get("calls")
    if c:
        out.append(("`runner deploy` of a new app / a redeploy, docker, image cached after the first",
                    f"{c['first']:.2f} s / {c['again']:.2f} s", "n/a", "n/a"))
        out.append((f"`Function.from_name(...).remote()` from another process, warm container ({CALLS} calls)",
                    f"p50 {c['p50'] * 1e3:.2f} ms, p99 {c['p99'] * 1e3:.2f} ms; in-run `.remote()` p50 "
                    f"{c['local_p50'] * 1e3:.2f} ms", "n/a", "n/a"))
        out.append((f"`.map` of {MAP_ITEMS:,} trivial inputs through the deployed app",
                    f"{c['map_rate']:,.0f} inputs/s", "n/a", "n/a"))
    d = r.get("redeploy")
    if d:
        ok = d["errors"] == 0 and d["calls_v1"] == 4 and d["v2"] > 0
        out.append(("redeploy under load: 2 threads requesting a web endpoint in a loop, 4 calls of 2 s in flight",
                    (f"{d['requests']:,} requests ({d['v1']:,} answered by v1, {d['v2']:,} by v2), {d['errors']} "
                     f"failed{': ' + d['first_error'] if d['errors'] else ''}; latency p50 {d['p50'] * 1e3:.1f} ms, "
                     f"max {d['max'] * 1e3:.0f} ms; {d['calls_v1']}/4 calls answered by v1; deploy took "
                     f"{d['deploy']:.2f} s"),
                    "0 failed, every accepted call answered", verdict(ok)))
    for name, err in r.get("errors", {}).items():
        out.append((name, f"failed: {err}", "", "MISS"))
    return out


SECTION_HELP = """## Deployed apps

The table below comes from `python bench/deploy.py` (docker provider). An app is deployed with
`runner deploy` and called from the benchmark's process with `Function.from_name`: each call goes
to the app's daemon over its control socket, then to a warm container; the in-run figure is the
same function called inside `with app.run():` in the same process, for comparison. The last row
redeploys the app while requests and calls are in flight (see docs/web.md for how the handover
works)."""


def block(r: dict, m: dict, wall: float) -> str:
    return "\n".join([START, SECTION_HELP, "", *measured_table(m, wall, rows(r)), END])


def cleanup() -> None:
    subprocess.run([sys.executable, "-m", "runner", "app", "stop", NAME], cwd=WORK, capture_output=True, timeout=120)
    from runner._store import stop_managed_server

    stop_managed_server()
    shutil.rmtree(WORK, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--no-write", action="store_true", help="do not update docs/benchmarks.md")
    args = ap.parse_args()
    return run_sections((("calls", bench_calls), ("redeploy", bench_redeploy)), TOTAL_BUDGET, block, DOC, START,
                        END, not args.no_write, cleanup=cleanup)


if __name__ == "__main__":
    sys.exit(main())

"""Sandbox benchmarks on the docker provider, each beside the same operation done with the docker CLI.

    python bench/sandbox.py              # measure, print the table, update docs/benchmarks.md
    python bench/sandbox.py --no-write   # print the table, leave docs/benchmarks.md alone

(a) `Sandbox.create()` with the image present (one untimed create first), CREATES times, each
    terminated untimed; interleaved with `docker run -d IMAGE sleep 300` through the CLI.
(b) `sb.exec("echo", "hi").stdout.read()` on one warm sandbox, EXECS times (after EXEC_WARMUP
    untimed); beside `docker exec CONTAINER echo hi` through the CLI, as many times.
(c) PARALLEL sandboxes created by a pool of WORKERS threads, then all terminated by it; beside
    `docker run -d` and `docker rm -f` through the CLI from the same pool. Containers left
    afterwards are counted by label for both; it must be 0.

The table replaces the section between `<!-- sandbox:start -->` and `<!-- sandbox:end -->` in
docs/benchmarks.md; the rest of the file is kept. Every measurement is bounded in count and in time
(a deadline each, and SIGALRM on the whole run), and whatever it started is removed on the way out.
Sandboxes are created with a timeout too, so even a killed run leaves nothing for long. They use the
user's RUNNER_HOME, as any program would.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import pathlib
import subprocess
import sys
import time
import uuid

from _common import OverBudget, measured_table, pct, run_sections, verdict

import runner

CREATES = 20
EXEC_WARMUP = 20
EXECS = 200
PARALLEL = 100
WORKERS = 16
TARGET_CREATE_P50_S = 0.25
TARGET_EXEC_P50_MS = 15.0
BUDGET = {"create": 60.0, "exec": 60.0, "parallel": 120.0}  # seconds per measurement
TOTAL_BUDGET = 420  # seconds for the whole run, enforced with SIGALRM
SANDBOX_TIMEOUT = 600  # a sandbox of a killed run ends by itself after this

IMAGE = runner.Image.debian_slim()
BASE = IMAGE.base  # runner's default sandbox image has no steps: the same image for the CLI
ROOT = pathlib.Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "benchmarks.md"
START, END = "<!-- sandbox:start -->", "<!-- sandbox:end -->"
LABEL = f"org.runner.bench={uuid.uuid4().hex[:12]}"  # the CLI baseline's containers, to count and remove




MADE: list = []  # every sandbox this run created, terminated again on the way out whatever happens


def new_sandbox():
    sb = runner.Sandbox.create(timeout=SANDBOX_TIMEOUT)
    MADE.append(sb)
    return sb


def cleanup() -> None:
    """Remove whatever the run started: its sandboxes, and the CLI baseline's containers (by label)."""
    for sb in MADE:
        try:
            sb.terminate()
        except Exception:  # noqa: BLE001 - keep removing the others
            pass
    leftovers = docker("ps", "-aq", "--filter", f"label={LABEL}").split()
    if leftovers:
        docker("rm", "-f", *leftovers)


def docker(*args: str) -> str:
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=True, timeout=60).stdout.strip()


def cli_run() -> str:
    return docker("run", "-d", "--label", LABEL, BASE, "sleep", "300")


def left(ids: set[str], label: str) -> int:
    return len(set(docker("ps", "-aq", "--no-trunc", "--filter", f"label={label}").split()) & ids) if ids else 0


def timed(fn, n: int, budget: float) -> list[float]:
    deadline = time.monotonic() + budget
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
        if time.monotonic() > deadline:
            break
    return out


# ---- (a) create -------------------------------------------------------------------------------
def bench_create() -> dict:
    new_sandbox().terminate()  # untimed: finds the image, starts the provider
    create, term, cli = [], [], []
    deadline = time.monotonic() + BUDGET["create"]
    for _ in range(CREATES):
        t0 = time.perf_counter()
        sb = new_sandbox()
        t1 = time.perf_counter()
        sb.terminate()
        create.append(t1 - t0)
        term.append(time.perf_counter() - t1)
        t0 = time.perf_counter()
        container = cli_run()
        cli.append(time.perf_counter() - t0)
        docker("rm", "-f", container)
        if time.monotonic() > deadline:
            break
    return {"n": len(create), "p50": pct(create, 50), "p95": pct(create, 95), "term_p50": pct(term, 50),
            "cli_p50": pct(cli, 50), "cli_p95": pct(cli, 95)}


# ---- (b) exec -----------------------------------------------------------------------------------
def bench_exec() -> dict:
    sb = new_sandbox()
    cid = docker("ps", "-q", "--no-trunc", "--filter", f"label=org.runner.sandbox={sb.object_id}")
    for _ in range(EXEC_WARMUP):
        assert sb.exec("echo", "hi").stdout.read() == "hi\n"
    ours = timed(lambda: sb.exec("echo", "hi").stdout.read(), EXECS, BUDGET["exec"] / 2)
    theirs = timed(lambda: docker("exec", cid, "echo", "hi"), EXECS, BUDGET["exec"] / 2)
    sb.terminate()
    ms, cli = [x * 1000 for x in ours], [x * 1000 for x in theirs]
    return {"n": len(ms), "p50": pct(ms, 50), "p95": pct(ms, 95), "cli_n": len(cli), "cli_p50": pct(cli, 50),
            "cli_p95": pct(cli, 95)}


# ---- (c) many at once -----------------------------------------------------------------------------
def bench_parallel() -> dict:
    deadline = time.monotonic() + BUDGET["parallel"]

    def bounded(fn):
        return lambda _: None if time.monotonic() > deadline else fn()

    with concurrent.futures.ThreadPoolExecutor(WORKERS) as pool:
        t0 = time.perf_counter()
        made = [sb for sb in pool.map(bounded(new_sandbox), range(PARALLEL)) if sb is not None]
        t1 = time.perf_counter()
        list(pool.map(lambda sb: sb.terminate(), made))
        t2 = time.perf_counter()
        ours_left = left({sb._meta["container"] for sb in made}, "org.runner.sandbox")
        cli = [c for c in pool.map(bounded(cli_run), range(PARALLEL)) if c is not None]
        t3 = time.perf_counter()
        list(pool.map(lambda c: docker("rm", "-f", c), cli))
        t4 = time.perf_counter()
        cli_left = left(set(cli), LABEL)
    if len(made) < PARALLEL or len(cli) < PARALLEL:
        raise OverBudget(f"parallel: only {len(made)} sandboxes and {len(cli)} docker runs within {BUDGET['parallel']:g} s")
    return {"create": t1 - t0, "terminate": t2 - t1, "left": ours_left, "cli_create": t3 - t2, "cli_rm": t4 - t3,
            "cli_left": cli_left}


# ---- reporting ----------------------------------------------------------------------------------
def rows(r: dict) -> list[tuple[str, str, str, str]]:
    out = []
    a = r.get("create")
    if a:
        out.append((f"(a) `Sandbox.create()`, image present ({a['n']} creates)",
                    f"p50 {a['p50']:.3f} s, p95 {a['p95']:.3f} s (terminate p50 {a['term_p50']:.3f} s, not counted); "
                    f"`docker run -d` CLI p50 {a['cli_p50']:.3f} s, p95 {a['cli_p95']:.3f} s",
                    f"p50 <= {TARGET_CREATE_P50_S:g} s", verdict(a["p50"] <= TARGET_CREATE_P50_S)))
    b = r.get("exec")
    if b:
        out.append((f"(b) `sb.exec('echo', 'hi').stdout.read()`, warm sandbox ({b['n']} execs)",
                    f"p50 {b['p50']:.2f} ms, p95 {b['p95']:.2f} ms; `docker exec` CLI p50 {b['cli_p50']:.1f} ms, "
                    f"p95 {b['cli_p95']:.1f} ms",
                    f"p50 <= {TARGET_EXEC_P50_MS:g} ms", verdict(b["p50"] <= TARGET_EXEC_P50_MS)))
    c = r.get("parallel")
    if c:
        out.append((f"(c) {PARALLEL} sandboxes created by {WORKERS} threads, then terminated",
                    f"create {c['create']:.1f} s + terminate {c['terminate']:.1f} s, {c['left']} containers left; "
                    f"`docker run -d` {c['cli_create']:.1f} s + `docker rm -f` {c['cli_rm']:.1f} s, "
                    f"{c['cli_left']} left",
                    "0 containers left", verdict(c["left"] == 0)))
    for name, err in r.get("errors", {}).items():
        out.append((name, f"failed: {err}", "", "MISS"))
    return out


SECTION_HELP = f"""## Sandboxes: create, exec, many at once

The table below comes from `python bench/sandbox.py` (docker provider). Each figure stands beside the
same operation done with the docker CLI (`subprocess`) in the same run; the CLI figures include the
CLI's own start (a Go binary, some tens of ms), runner's do not start any process on the host.

- (a) `Sandbox.create()` on `Image.debian_slim()` (present already; one untimed create first) until
  its supervisor answers, {CREATES} times, each terminated untimed; beside `docker run -d IMAGE sleep 300`.
- (b) `sb.exec("echo", "hi").stdout.read()` on one sandbox after {EXEC_WARMUP} untimed execs, {EXECS}
  times: over the sandbox's one connection to its supervisor; beside `docker exec CONTAINER echo hi`.
- (c) {PARALLEL} sandboxes created by {WORKERS} threads, then all terminated by them; beside `docker run -d`
  and `docker rm -f` from the same pool. Containers left are counted by label afterwards.
"""


def block(r: dict, m: dict, wall: float) -> str:
    lines = [START, SECTION_HELP.rstrip(), "", *measured_table(m, wall, rows(r))]
    lines.append(END)
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--no-write", action="store_true", help="do not update docs/benchmarks.md")
    args = ap.parse_args()
    os.environ["RUNNER_PROVIDER"] = "docker"

    steps = (("create", bench_create), ("exec", bench_exec), ("parallel", bench_parallel))
    return run_sections(steps, TOTAL_BUDGET, block, DOC, START, END, not args.no_write, cleanup=cleanup)

if __name__ == "__main__":
    sys.exit(main())

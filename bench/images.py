"""Image benchmarks of runner on the docker provider: client-side start-up with a cached image, and
rebuilding after a change to the last step against a full build.

    python bench/images.py              # measure, print the table, update docs/benchmarks.md
    python bench/images.py --no-write   # print the table, leave docs/benchmarks.md alone

(i) With the image built already (one untimed run first), each of RUNS fresh `with app.run():`
    calls `.remote()` once. `DockerProvider.start` is wrapped to note when it is called: the time
    from entering `app.run()` to that call is runner's own client-side work before a container
    starts (provider choice, Docker client, session, image lookup). The time to the first result
    is shown too. A fresh `runner run` process is also timed from its launch to the same call,
    which adds the interpreter's start and runner's imports (docker-py, the user's module).
(ii) A 3-step image (pip_install six, apt_install jq, run_commands with a uuid): a full build with
    every step's tag removed first, then REBUILDS rebuilds each with only the last step's uuid
    changed. Both go through `DockerProvider.prepare`, as `runner run` and `runner image build` do.

The table replaces the section between `<!-- images:start -->` and `<!-- images:end -->` in
docs/benchmarks.md; the rest of the file is kept. The whole run is bounded (SIGALRM).

Containers import this file as the module `images` (its directory is the app root), so the
module level uses only the standard library and runner.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

from _common import measured_table, pct, run_sections, verdict
from _common import print_table as print_table_rows
import runner

CACHED_IMAGE = runner.Image.debian_slim().run_commands("echo bench-images-cached > /bench-marker")
app = runner.App("bench-images", image=CACHED_IMAGE)


@app.function()
def ping(x):
    return x


# ---- sizes, targets and bounds --------------------------------------------------------------
RUNS = 10
FRESH_RUNS = 3
REBUILDS = 3
TARGET_CLIENT_MS = 100.0
TOTAL_BUDGET = 300  # seconds for the whole run, enforced with SIGALRM
BUDGET = {"start": 60.0, "fresh": 60.0}

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "benchmarks.md"
START, END = "<!-- images:start -->", "<!-- images:end -->"




# ---- (i) client-side work before the first container starts ---------------------------------
class Marks:
    """Timestamps of the provider's calls during one `app.run()`, from wrapped methods."""

    def __init__(self):
        self.t: dict[str, float] = {}

    def mark(self, name: str) -> None:
        self.t.setdefault(name, time.perf_counter())


def _instrument(marks: Marks) -> None:
    import runner._providers as providers
    from runner._providers._docker import DockerProvider

    def wrap(owner, attr, before, after=None):
        original = getattr(owner, attr)

        def wrapper(*args, **kwargs):
            marks.mark(before)
            try:
                return original(*args, **kwargs)
            finally:
                if after:
                    marks.mark(after)

        setattr(owner, attr, wrapper)

    wrap(providers, "docker_answers", "ping_begin", "ping_end")
    wrap(DockerProvider, "__init__", "provider_begin", "provider_end")
    wrap(DockerProvider, "prepare", "prepare_begin", "prepare_end")
    wrap(DockerProvider, "start", "start_called", "start_returned")


def bench_start() -> dict:
    os.environ.pop("RUNNER_PROVIDER", None)  # the default choice, as a bare `runner run` makes it
    marks = Marks()
    _instrument(marks)
    with app.run():  # untimed: builds the image if it is not there yet
        assert ping.remote(0) == 0
    deadline = time.monotonic() + BUDGET["start"]
    runs = []
    for i in range(RUNS):
        marks.t.clear()
        t0 = time.perf_counter()
        with app.run():
            entered = time.perf_counter()
            assert ping.remote(i) == i
            result = time.perf_counter()
        t = marks.t
        if "start_called" not in t:
            raise RuntimeError("DockerProvider.start was never called: is the docker provider the default here?")
        runs.append({
            "client": t["start_called"] - t0,
            "result": result - t0,
            "ping": t.get("ping_end", t0) - t.get("ping_begin", t0),
            "provider": t["provider_end"] - t["provider_begin"],
            "enter": entered - t0,
            "prepare": t["prepare_end"] - t["prepare_begin"],
            "docker_run": t["start_returned"] - t["start_called"],
        })
        if time.monotonic() > deadline:
            break
    ms = lambda k: [r[k] * 1000 for r in runs]
    out = {"n": len(runs)}
    for k in runs[0]:
        out[k] = pct(ms(k), 50)
    out["client_p95"] = pct(ms("client"), 95)
    out["client_min"] = min(ms("client"))
    out["result_p95"] = pct(ms("result"), 95)
    return out


FRESH_SCRIPT = r"""
import json, os, sys, time
from runner._providers._docker import DockerProvider
original = DockerProvider.start
def start(self, *a, **k):
    with open(os.environ["BENCH_MARKS"], "a") as f:
        f.write(json.dumps({"start_called": time.time()}) + "\n")
    return original(self, *a, **k)
DockerProvider.start = start
from runner._cli import main
main(["run", *sys.argv[1:]])
"""


def bench_fresh() -> dict:
    """A whole `runner run FILE::ping` process: launch to the first DockerProvider.start call."""
    env = dict(os.environ)
    env.pop("RUNNER_PROVIDER", None)
    deadline = time.monotonic() + BUDGET["fresh"]
    to_start, to_exit = [], []
    for _ in range(FRESH_RUNS):
        with tempfile.NamedTemporaryFile("r", suffix=".jsonl") as marks:
            env["BENCH_MARKS"] = marks.name
            t0 = time.time()
            proc = subprocess.run([sys.executable, "-c", FRESH_SCRIPT, f"{__file__}::ping", "--x", "1"],
                                  env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
            t1 = time.time()
            lines = [json.loads(line) for line in marks.read().splitlines() if line.strip()]
        if proc.returncode != 0 or not lines:
            raise RuntimeError(f"runner run failed ({proc.returncode}): {proc.stderr.strip()[-300:]}")
        to_start.append((lines[0]["start_called"] - t0) * 1000)
        to_exit.append((t1 - t0) * 1000)
        if time.monotonic() > deadline:
            break
    bare = []
    for _ in range(3):  # the interpreter alone, for scale
        t0 = time.time()
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        bare.append((time.time() - t0) * 1000)
    return {"n": len(to_start), "start": statistics.median(to_start), "exit": statistics.median(to_exit),
            "python": statistics.median(bare), "imports": import_costs()}


IMPORTED = ("runner._cli", "typer._adapters", "docker")  # in the order `runner run` first imports them


def import_costs() -> dict[str, float]:
    """Cumulative import time (ms) of what a fresh `runner run` imports before its first container:
    runner with typer, typer's pydantic adapter (imported when typer converts the arguments), and
    docker-py (imported when the provider is chosen); median of 3 fresh interpreters."""
    samples: dict[str, list[float]] = {m: [] for m in IMPORTED}
    for _ in range(3):
        proc = subprocess.run([sys.executable, "-X", "importtime", "-c", "import " + ", ".join(IMPORTED)],
                              capture_output=True, text=True, timeout=60, cwd=ROOT)
        for line in proc.stderr.splitlines():
            parts = [x.strip() for x in line.removeprefix("import time:").split("|")]
            if len(parts) == 3 and parts[2] in samples and parts[1].isdigit():
                samples[parts[2]].append(int(parts[1]) / 1000)
    return {m: statistics.median(v) for m, v in samples.items() if v}


# ---- (ii) rebuild after changing only the last step vs a full build -------------------------
def three_steps(token: str) -> runner.Image:
    return (runner.Image.debian_slim().pip_install("six").apt_install("jq")
            .run_commands(f"echo bench-images-{token} > /bench-last"))


def _tags(image: runner.Image) -> list[str]:
    from runner._providers._docker import IMAGE_REPO

    return [f"{IMAGE_REPO}:{digest[:40]}" for _, digest in image.chain()]


def _remove(client, refs: list[str]) -> None:
    import docker.errors

    for ref in refs:
        try:
            client.images.remove(ref)
        except docker.errors.ImageNotFound:
            pass


def bench_rebuild() -> dict:
    from runner._providers._docker import DockerProvider

    provider = DockerProvider()
    steps_run = [0]
    original_step = DockerProvider._step

    def counting_step(self, *args, **kwargs):
        steps_run[0] += 1
        return original_step(self, *args, **kwargs)

    DockerProvider._step = counting_step
    built: list[runner.Image] = []
    try:
        full_image = three_steps(uuid.uuid4().hex)
        _remove(provider.client, list(reversed(_tags(full_image))))  # nothing of it cached
        steps_run[0] = 0
        t0 = time.perf_counter()
        provider.prepare(full_image)
        full = time.perf_counter() - t0
        built.append(full_image)
        if steps_run[0] != 3:
            raise RuntimeError(f"the full build ran {steps_run[0]} steps, not 3: the step tags were not found to remove")
        rebuilds = []
        for _ in range(REBUILDS):
            image = three_steps(uuid.uuid4().hex)
            steps_run[0] = 0
            t0 = time.perf_counter()
            provider.prepare(image)
            rebuilds.append(time.perf_counter() - t0)
            built.append(image)
            if steps_run[0] != 1:
                raise RuntimeError(f"a last-step rebuild ran {steps_run[0]} steps, not 1")
        t0 = time.perf_counter()
        provider.prepare(built[-1])
        cached = time.perf_counter() - t0
    finally:
        DockerProvider._step = original_step
        # Leave no bench images behind: the last steps, then the shared first two.
        last = [_tags(i)[-1] for i in built]
        _remove(provider.client, last + list(reversed(_tags(built[0])[:-1])) if built else [])
        provider.close()
    rebuild = statistics.median(rebuilds)
    return {"full": full, "rebuild": rebuild, "rebuild_min": min(rebuilds), "rebuild_max": max(rebuilds),
            "n": len(rebuilds), "ratio": rebuild / full, "cached": cached}


# ---- reporting ------------------------------------------------------------------------------
def rows(r: dict) -> list[tuple[str, str, str, str]]:
    out = []
    s = r.get("start")
    if s:
        out.append((f"(i) enter `app.run()` to `DockerProvider.start` called, cached image ({s['n']} runs)",
                    f"p50 {s['client']:.1f} ms, p95 {s['client_p95']:.1f} ms (min {s['client_min']:.1f}); of the p50s: "
                    f"daemon ping {s['ping']:.1f}, DockerProvider() {s['provider']:.1f}, image lookup "
                    f"{s['prepare']:.1f} ms",
                    f"p50 <= {TARGET_CLIENT_MS:g} ms", verdict(s["client"] <= TARGET_CLIENT_MS)))
        out.append(("(i) enter `app.run()` to the first `.remote()` result, same runs",
                    f"p50 {s['result']:.0f} ms, p95 {s['result_p95']:.0f} ms (of the p50s: `docker run` call "
                    f"{s['docker_run']:.0f} ms, the rest is the container's start and the call)",
                    "", "info"))
    f = r.get("fresh")
    if f:
        out.append((f"(i) a fresh `runner run FILE::ping` process: launch to `DockerProvider.start` called ({f['n']} runs)",
                    f"median {f['start']:.0f} ms (a bare `python -c pass` takes {f['python']:.0f} ms; imports: "
                    + ", ".join(f"{m} {v:.0f} ms" for m, v in f["imports"].items())
                    + f"); whole process {f['exit']:.0f} ms",
                    "", "info"))
    b = r.get("rebuild")
    if b:
        out.append(("(ii) 3-step image (pip six, apt jq, run uuid): rebuild after changing the last step vs full build",
                    f"rebuild median {b['rebuild']:.2f} s ({b['n']} runs, {b['rebuild_min']:.2f}-{b['rebuild_max']:.2f}) "
                    f"vs full {b['full']:.1f} s: ratio {b['ratio']:.1%}; unchanged image found in {b['cached'] * 1000:.0f} ms",
                    "", "info"))
    for name, err in r.get("errors", {}).items():
        out.append((name, f"failed: {err}", "", "MISS"))
    return out


def print_table(r: dict) -> None:
    print_table_rows("runner image benchmarks, docker provider", rows(r))



SECTION_HELP = f"""## Images: start-up with a cached image, rebuilds

The table below comes from `python bench/images.py` (docker provider).

- (i) {RUNS} fresh `with app.run():` blocks in one process, each calling `.remote()` once on a function
  whose image is built already (one untimed run first). `DockerProvider.start` is wrapped to note
  when it is called: from entering `app.run()` to that call is runner's client-side work before a
  container starts (choosing the provider, which pings the daemon; the Docker client and its sweep
  of leftover containers; the session; finding the image). The time to the first result adds
  `docker run` and the container's own start. A fresh `runner run` process is timed the same way
  from its launch, which adds the interpreter's start and the imports.
- (ii) An image of 3 steps: `pip_install("six")`, `apt_install("jq")`, `run_commands` with a uuid.
  Full build: all 3 step tags removed first. Rebuild: only the uuid of the last step changed, so the
  first two steps come from their tags; median of {REBUILDS}. Both through `DockerProvider.prepare`,
  as `runner run` and `runner image build` build. The bench removes its images afterwards.
"""


def block(r: dict, m: dict, wall: float) -> str:
    lines = [START, SECTION_HELP.rstrip(), "", *measured_table(m, wall, rows(r))]
    f, st = r.get("fresh"), r.get("start")
    if f and st and f.get("imports"):
        imports = sum(f["imports"].values())
        lines += ["", (
            f"Where a fresh `runner run` spends its {f['start']:.0f} ms before the first container starts: the "
            f"interpreter's start (~{f['python']:.0f} ms) and imports (~{imports:.0f} ms: "
            + ", ".join(f"`{m}` {v:.0f}" for m, v in f["imports"].items())
            + f" ms, measured with `-X importtime`; typer's adapter imports pydantic), against "
            f"{st['client']:.0f} ms of runner's own work once imported (row (i) above)."
        )]
    lines.append(END)
    return "\n".join(lines)


# ---- main -----------------------------------------------------------------------------------
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--no-write", action="store_true", help="do not update docs/benchmarks.md")
    args = ap.parse_args()

    steps = (("start", bench_start), ("fresh", bench_fresh), ("rebuild", bench_rebuild))
    return run_sections(steps, TOTAL_BUDGET, block, DOC, START, END, not args.no_write, show=print_table)

if __name__ == "__main__":
    sys.exit(main())

"""The queue plane (runner._plane) end to end: a private redis-server on a unix socket, worker
containers started with `docker run --network none` that reach it through a bind mount, and the
call API (`.remote`, `.map`, `.spawn`) through QueuePool.

Level 1 of issue 7's tests: throughput (20,000 trivial inputs complete), redelivery after
`docker kill` of the worker holding inputs (each completes exactly once, retries untouched),
spawn in one client process and get from another, and retries counting real failures only.
Every container and process started here is removed by the fixtures, pass or fail.
"""

from __future__ import annotations

import itertools
import os
import pathlib
import subprocess
import sys
import textwrap
import time
import uuid

import pytest
import redis
from conftest import require_docker
from helpers import redis_on_socket, stop_process

import runner
from runner._plane import docker_worker_args, find_call, start_local_worker, through_queue
from runner.exception import FunctionTimeoutError, InputCancellation

pytestmark = pytest.mark.timeout(120)
docker = pytest.mark.docker

ROOT = pathlib.Path(__file__).resolve().parent.parent
IMAGE = "python:3.11-slim-bookworm"
LEASE = 2.0  # seconds: a killed worker's inputs go elsewhere this long after its last heartbeat
RUN = uuid.uuid4().hex[:6]
LABEL = "org.runner.plane-test"


def _functions():
    """The functions the workers run, defined in here so they travel by value (the worker image
    has no pytest to import this module with)."""
    import socket as _socket
    import time as _time

    def work(op, x):
        if op == "double":
            return x * 2
        if op == "sleepdouble":
            _time.sleep(3)
            return x * 2
        raise ValueError(f"unknown op {op!r}")

    def slow(x):
        host = _socket.gethostname()
        with open("/run/runner-plane/slow.log", "a") as f:
            f.write(f"{x} {host}\n")
        _time.sleep(2)
        return x, host

    def flaky(tag):
        path = f"/run/runner-plane/flaky-{tag}"
        with open(path, "a") as f:
            f.write("x\n")
        with open(path) as f:
            n = len(f.read().split())
        raise RuntimeError(f"attempt {n} failed")

    return work, slow, flaky


def _sleepy(s):
    import time as _time

    _time.sleep(s)
    return s


def _app():
    app = runner.App(f"plane-{RUN}")
    work, slow, flaky = _functions()
    fns = {
        "work": app.function(serialized=True)(work),
        # retries=0: if a redelivery were charged as a failure, the input would fail
        "slow": app.function(serialized=True, retries=runner.Retries(max_retries=0))(runner.concurrent(max_inputs=4)(slow)),
        "flaky": app.function(serialized=True, retries=runner.Retries(max_retries=2, backoff_coefficient=1.0,
                                                                      initial_delay=0.1, max_delay=1.0))(flaky),
    }
    return app, fns


@pytest.fixture(scope="module")
def redis_server():
    """A private redis-server on a unix socket in a short directory of its own."""
    with redis_on_socket("rqt-") as (sock, d):
        yield {"url": f"unix://{sock}?db=0", "sock": sock, "dir": d}


@pytest.fixture(scope="module")
def plane(redis_server):
    """Worker containers (work x2, slow x2, flaky x1) and the client side bound to them."""
    require_docker()
    started: list[str] = []
    app, fns = _app()
    bound = {}
    try:
        for fn, count in (("work", 2), ("slow", 2), ("flaky", 1)):
            for k in range(count):
                name = f"rqt-{RUN}-{fn}-{k}"
                args = docker_worker_args(IMAGE, redis_server["sock"], f"{app.name}.{fn}", name=name,
                                          labels={LABEL: RUN})
                out = subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)
                assert out.returncode == 0, f"docker run failed: {out.stderr}"
                started.append(name)
        for fn, f in fns.items():
            bound[fn] = through_queue(f, redis_server["url"], key=f"{app.name}.{fn}", lease=LEASE)
        yield {**redis_server, "fns": bound, "containers": started, "app": app}
    finally:
        for f in bound.values():
            f._queue_pool.close()
        if started:
            subprocess.run(["docker", "rm", "-f", *started], capture_output=True, timeout=60, check=False)


@docker
def test_remote_and_map(plane):
    work = plane["fns"]["work"]
    assert work.remote("double", 21) == 42
    assert list(work.map(itertools.repeat("double"), range(100))) == [2 * x for x in range(100)]
    with pytest.raises(ValueError, match="unknown op"):
        work.remote("nope", 1)


@docker
def test_twenty_thousand_inputs(plane):
    work = plane["fns"]["work"]
    n = 20_000
    began = time.monotonic()
    out = list(work.map(itertools.repeat("double"), range(n)))
    took = time.monotonic() - began
    assert out == [2 * x for x in range(n)]
    print(f"{n} inputs in {took:.2f} s ({n / took:,.0f}/s)")
    r = redis.Redis.from_url(plane["url"])
    key = f"rq:f:{plane['app'].name}.work:in"
    assert r.xlen(key) == 0  # acknowledged entries are deleted: the stream holds only work to do
    assert r.xpending(key, "workers")["pending"] == 0


@docker
def test_redelivery_after_docker_kill(plane):
    slow = plane["fns"]["slow"]
    log = plane["dir"] / "slow.log"
    inputs = list(range(8))
    results = slow.map(inputs)  # a lazy generator: the inputs are enqueued at the first next()

    def holders() -> dict[int, str]:
        lines = log.read_text().split() if log.exists() else []
        return dict(zip(map(int, lines[0::2]), lines[1::2]))

    import threading

    got: list = []
    reader = threading.Thread(target=lambda: got.extend(results))
    reader.start()
    deadline = time.monotonic() + 30
    while not holders() and time.monotonic() < deadline:
        time.sleep(0.05)
    first = holders()
    assert first, "no slow input started"
    victim = next(iter(first.values()))
    subprocess.run(["docker", "kill", victim], capture_output=True, timeout=30, check=True)
    reader.join(60)
    assert not reader.is_alive(), "the map did not finish after the worker was killed"
    assert sorted(x for x, _ in got) == inputs  # every input exactly once, none failed
    lost = [x for x, host in first.items() if host == victim]
    assert lost, "the killed worker held nothing"
    by_input = dict(got)
    for x in lost:
        assert by_input[x] != victim, f"input {x} was answered by the killed worker"
    runs = log.read_text().split()
    redone = [int(x) for x, host in zip(runs[0::2], runs[1::2]) if host != victim and int(x) in lost]
    assert sorted(set(redone)) == sorted(lost)  # run again elsewhere, with retries=0 untouched


@docker
def test_spawn_survives_its_client(plane):
    script = textwrap.dedent(f"""
        import runner
        from runner._plane import through_queue
        app = runner.App({plane['app'].name!r})
        def work(op, x):
            raise AssertionError("the workers run their own copy")
        work = app.function(serialized=True)(work)
        q = through_queue(work, {plane['url']!r}, key={plane['app'].name + '.work'!r}, lease={LEASE})
        call = q.spawn("sleepdouble", 21)
        q._queue_pool.close()
        print(call.object_id)
    """)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    began = time.monotonic()
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, env=env, check=False)
    assert out.returncode == 0, out.stderr
    call_id = out.stdout.strip().splitlines()[-1]
    call = find_call(call_id, plane["url"])
    assert call is not None
    if time.monotonic() - began < 2.5:
        assert call._result_now(redis.Redis.from_url(plane["url"])) is None  # still running
    assert call.get(timeout=30) == 42
    assert find_call("fc-" + "0" * 20, plane["url"]) is None


@docker
def test_user_exception_retried_then_raised(plane):
    flaky = plane["fns"]["flaky"]
    with pytest.raises(RuntimeError, match="attempt 3 failed"):
        flaky.remote("t1")
    assert (plane["dir"] / "flaky-t1").read_text().split() == ["x"] * 3  # the first try and two retries


def test_timeout_and_cancel_on_a_local_worker(redis_server):
    """A worker as a host process: a sync input past its timeout ends the agent, which the worker
    restarts; the inputs queued behind it run at no cost; a hard cancel reaches a running call."""
    app = runner.App(f"plane-local-{RUN}")
    key = f"{app.name}.sleepy"
    sleepy = app.function(serialized=True, timeout=1)(_sleepy)
    worker = start_local_worker(redis_server["url"], key, env={"PYTHONPATH": str(ROOT)})
    q = None
    try:
        q = through_queue(sleepy, redis_server["url"], key=key, lease=LEASE)
        with pytest.raises(FunctionTimeoutError, match="timed out after 1s"):
            q.remote(3)
        assert q.remote(0.1) == 0.1  # a new agent serves the next input
        out = list(q.map([0.1, 2.5, 0.2], return_exceptions=True))
        assert out[0] == 0.1 and out[2] == 0.2 and isinstance(out[1], FunctionTimeoutError)
        call = q.spawn(0.9)
        time.sleep(0.3)
        call.cancel()
        with pytest.raises(InputCancellation):
            call.get(timeout=10)
        assert find_call(q.spawn(0.2).object_id, redis_server["url"]).get(timeout=10) == 0.2
    finally:
        if q is not None:
            q._queue_pool.close()
        stop_process(worker, 15)


def test_a_worker_whose_python_differs_from_the_client_fails_every_input_with_the_reason(redis_server):
    """cloudpickle's bytes are only good between equal Python versions: a worker whose image runs
    another version than the client that registered the function fails its inputs, saying why."""
    import pickle

    from runner._plane import _wire as W
    from runner.exception import VersionError

    app = runner.App(f"plane-version-{RUN}")
    key = f"{app.name}.sleepy"
    sleepy = app.function(serialized=True)(_sleepy)
    q = through_queue(sleepy, redis_server["url"], key=key, lease=LEASE)
    r = redis.Redis.from_url(redis_server["url"])
    spec = pickle.loads(r.hget(W.Keys(key).spec, "spec"))
    assert spec["client_python"] == f"{sys.version_info[0]}.{sys.version_info[1]}"
    r.hset(W.Keys(key).spec, "spec", pickle.dumps({**spec, "client_python": "3.99"}))  # as from another client
    worker = start_local_worker(redis_server["url"], key, env={"PYTHONPATH": str(ROOT)})
    try:
        with pytest.raises(VersionError, match="runs Python 3.99; they must match"):
            q.remote(0.1)
    finally:
        q._queue_pool.close()
        r.close()
        stop_process(worker, 15)

"""Functions and classes the public-API tests call remotely.

Everything here is defined at module level so containers import it by name (`apps.core`).

Containers see none of the host's files, so nothing here writes to a path the test passes in:
- state that must outlast one input (retry counters, notes left by for_each / spawn_map inputs,
  an armed "die here" flag) lives in the container's own memory, keyed by a token the test makes
  up; the functions that keep it have max_containers=1, so later calls, retries included, reach
  the same warm container and a test can read the state back with another call;
- what a test must see as it happens (an input started, an @exit hook ran) is printed with the
  test's tag first: container output reaches the client's stdout on every provider.
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import time
import uuid

import runner

app = runner.App("tests-core")

# Different in every process that imports this module: tells containers apart on any provider
# (a pid alone does not, where every container has its own pid namespace).
PROCESS_TOKEN = f"{os.getpid()}-{uuid.uuid4().hex}"


class UserError(Exception):
    """An exception type of the user's own, defined in an importable module."""


_STATE = threading.Lock()
_ATTEMPTS: dict[str, int] = {}  # token -> attempts counted in this container
_NOTES: dict[str, dict[str, float]] = {}  # tag -> {name: time.time() when it was left}
_ARMED: set[str] = set()  # tokens for which this container dies


def _bump(token: str) -> int:
    """Count one more attempt for `token` in this container and return the count."""
    with _STATE:
        _ATTEMPTS[token] = _ATTEMPTS.get(token, 0) + 1
        return _ATTEMPTS[token]


_SAY = threading.Lock()


def say(tag: str, *words) -> None:
    """Print one line starting with `tag`, at once, for the test to find in the client's output.
    One write under a lock: lines of concurrent inputs never run into each other."""
    line = " ".join(str(w) for w in (tag, *words)) + "\n"
    with _SAY:
        sys.stdout.write(line)
        sys.stdout.flush()


# ---- plain calls -------------------------------------------------------------------------------
@app.function()
def square(x: int) -> int:
    return x * x


@app.function()
def add(x: int, y: int = 0) -> int:
    return x + y


@app.function(max_containers=2)
@runner.concurrent(max_inputs=8)
def sleep_then_return(seconds: float, value):
    time.sleep(seconds)
    return value


@app.function()
def fail_if_odd(x: int) -> int:
    if x % 2:
        raise UserError(f"odd input {x}")
    return x


@app.function()
def raise_user_error(message: str):
    raise UserError(message)


@app.function(max_containers=1)
def touch(tag: str, name=None) -> dict[str, float]:
    """Leave note `name` under `tag` (stamped with the time it was left) and return every note
    under `tag` so far: `touch(tag)` alone reads them back from the one warm container."""
    with _STATE:
        notes = _NOTES.setdefault(tag, {})
        if name is not None:
            notes[str(name)] = time.time()
        return dict(notes)


@app.function()
def where_am_i() -> dict:
    return {
        "is_local": runner.is_local(),
        "input_id": runner.current_input_id(),
        "token": PROCESS_TOKEN,
    }


@app.function()
def input_id(_: int) -> str | None:
    return runner.current_input_id()


@app.function(
    env={"CORE_ENV_VAR": "from-env"},
    secrets=[runner.Secret.from_dict({"CORE_SECRET": "s3cr3t"})],
    image=runner.Image.debian_slim().env({"CORE_IMAGE_VAR": "from-image"}),
)
def read_env(names: list[str]) -> dict:
    return {n: os.environ.get(n) for n in names}


# ---- spawn / cancel ----------------------------------------------------------------------------
@app.function()
def mark_then_sleep(tag: str, seconds: float) -> str:
    say(tag, "started", PROCESS_TOKEN)
    time.sleep(seconds)
    return "finished"


@app.function()
async def async_mark_then_sleep(tag: str, seconds: float) -> str:
    say(tag, "started", PROCESS_TOKEN)
    await asyncio.sleep(seconds)
    return PROCESS_TOKEN


# ---- generators --------------------------------------------------------------------------------
@app.function()
def count_up(n: int):
    for i in range(n):
        yield i


@app.function()
async def async_count_up(n: int):
    for i in range(n):
        await asyncio.sleep(0)
        yield i * 10


# ---- async -------------------------------------------------------------------------------------
@app.function()
async def async_square(x: int) -> int:
    await asyncio.sleep(0.01)
    return x * x


@app.function(max_containers=1)
@runner.concurrent(max_inputs=8)
async def async_sleep(seconds: float, value):
    await asyncio.sleep(seconds)
    return value


# ---- timeouts ----------------------------------------------------------------------------------
@app.function(timeout=1)
def sleepy(seconds: float) -> str:
    time.sleep(seconds)
    return "awake"


@app.function(timeout=1)
async def async_sleepy(seconds: float) -> str:
    await asyncio.sleep(seconds)
    return "awake"


# ---- retries -----------------------------------------------------------------------------------
@app.function(max_containers=1, retries=runner.Retries(max_retries=3, initial_delay=0.1, backoff_coefficient=1.0))
def flaky(token: str, succeed_on: int) -> int:
    attempt = _bump(token)
    if attempt < succeed_on:
        raise UserError(f"transient failure on attempt {attempt}")
    return attempt


@app.function(max_containers=1, retries=runner.Retries(max_retries=2, initial_delay=0.1, backoff_coefficient=1.0))
def always_fails(token: str) -> None:
    attempt = _bump(token)
    raise UserError(f"failure on attempt {attempt}")


@app.function()
def die() -> None:
    os._exit(1)


@app.function(max_containers=1, retries=1)
def die_once(token: str, arm: bool = False) -> str:
    """With arm=True, mark this container to die on the next call for `token`; that call kills it,
    and a retry, on a new container, returns that container's PROCESS_TOKEN."""
    with _STATE:
        if arm:
            _ARMED.add(token)
            return PROCESS_TOKEN
        armed = token in _ARMED
    if armed:
        os._exit(1)
    return PROCESS_TOKEN


# ---- concurrency, batching, containers ---------------------------------------------------------
@app.function(max_containers=1)
@runner.concurrent(max_inputs=4)
def sleep_one_second(x: int) -> tuple[int, str]:
    time.sleep(1)
    return x, PROCESS_TOKEN


@app.function(max_containers=1)
@runner.batched(max_batch_size=4, wait_ms=200)
def batch_sizes(xs: list[int]) -> list[tuple[int, int, str]]:
    return [(x, len(xs), type(xs).__name__) for x in xs]


@app.function(max_containers=1)
def token_one_container(_: int) -> str:
    return PROCESS_TOKEN


@app.function()
def token_warm() -> str:
    return PROCESS_TOKEN


# ---- serialization -----------------------------------------------------------------------------
@app.function()
def echo(payload):
    return payload


@app.function()
def returns_lock():
    return threading.Lock()


# ---- scale -------------------------------------------------------------------------------------
@app.function()
def identity(x: int) -> int:
    return x


@app.function(max_containers=1)
@runner.concurrent(max_inputs=2)
def slow_unless_zero(tag: str, x: int) -> int:
    """Input 0 returns at once; the others take a second. Each prints when it starts and ends."""
    say(tag, "start", x, PROCESS_TOKEN)
    if x:
        time.sleep(1)
    say(tag, "done", x, PROCESS_TOKEN)
    return x


# ---- classes -----------------------------------------------------------------------------------
@app.cls(max_containers=1)
class Counter:
    name: str = runner.parameter()
    start: int = runner.parameter(default=100)

    @runner.enter()
    def setup(self):
        self.enters = getattr(self, "enters", 0) + 1
        self.calls = 0

    @runner.method()
    def bump(self, by: int = 1) -> int:
        self.calls += 1
        return self.start + by

    @runner.method()
    def describe(self) -> dict:
        return {
            "name": self.name,
            "start": self.start,
            "enters": self.enters,
            "token": PROCESS_TOKEN,
            "is_local": runner.is_local(),
        }

    @runner.method()
    def fail(self, message: str):
        raise UserError(message)

    @runner.method()
    def countdown(self, n: int):
        for i in range(n, 0, -1):
            yield f"{self.name}:{i}"

    @runner.method()
    async def async_greet(self, who: str) -> str:
        await asyncio.sleep(0.01)
        return f"{self.name} greets {who}"

    @runner.method()
    async def async_gen(self, n: int):
        for i in range(n):
            await asyncio.sleep(0)
            yield self.start + i


@app.cls()
class Sleeper:
    @runner.method()
    def nap(self, seconds: float) -> str:
        time.sleep(seconds)
        return "rested"


@app.cls()
class Lifecycle:
    tag: str = runner.parameter()

    @runner.enter()
    def opened(self):
        say(self.tag, "enter", PROCESS_TOKEN)

    @runner.method()
    def ping(self) -> str:
        return "pong"

    @runner.exit()
    def closed(self):
        say(self.tag, "exit", PROCESS_TOKEN)


@app.cls()
class Typed:
    label: str = runner.parameter(default="x")
    count: int = runner.parameter(default=0)
    ratio: float = runner.parameter(default=1.0)
    flag: bool = runner.parameter(default=False)

    @runner.method()
    def values(self) -> tuple:
        return self.label, self.count, self.ratio, self.flag


@app.cls()
class AsyncSetup:
    @runner.enter()
    async def setup(self):
        await asyncio.sleep(0)
        self.ready = "set up asynchronously"

    @runner.method()
    def status(self) -> str:
        return self.ready


@app.cls()
class AsyncTeardown:
    tag: str = runner.parameter()

    @runner.method()
    def ping(self) -> str:
        return "pong"

    @runner.exit()
    async def closed(self):
        await asyncio.sleep(0)
        say(self.tag, "async exit", PROCESS_TOKEN)


@app.cls()
class BrokenEnter:
    @runner.enter()
    def setup(self):
        raise UserError("enter failed")

    @runner.method()
    def ping(self) -> str:
        return "pong"


@app.cls(scaledown_window=0.5)
class QuickToIdle:
    tag: str = runner.parameter()

    @runner.method()
    def ping(self) -> str:
        return PROCESS_TOKEN

    @runner.exit()
    def closed(self):
        say(self.tag, "exit", PROCESS_TOKEN)


@app.cls(max_containers=1)
@runner.concurrent(max_inputs=4)
class ConcurrentSleeper:
    @runner.method()
    def nap(self, seconds: float) -> str:
        time.sleep(seconds)
        return PROCESS_TOKEN

"""Scaling policy: min_containers kept warm, max_containers never exceeded, buffer_containers
added while busy, idle containers stopped after scaledown_window. These look at the pool's own
count of ready containers, which is what the policy decides."""

from __future__ import annotations

import time


def _ready(fn) -> int:
    pool = fn._pool()
    with pool.lock:
        return len([c for c in pool.containers if not c.stopping])


def _wait_for(predicate, within: float) -> bool:
    end = time.monotonic() + within
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def test_min_containers_are_started_and_kept_through_idle_time(provider):
    from apps import scaling

    with scaling.app.run():
        scaling.warm.remote(0)
        assert _wait_for(lambda: _ready(scaling.warm) == 2, 30)
        time.sleep(2.5)  # well past scaledown_window=1
        assert _ready(scaling.warm) == 2


def test_max_containers_caps_parallelism_and_idle_ones_scale_down(provider):
    from apps import scaling

    with scaling.app.run():
        started = time.monotonic()
        pids = list(scaling.sleepy.map([0.5] * 6))
        took = time.monotonic() - started
        assert len(set(pids)) <= 3
        assert took >= 1.0  # 6 inputs of 0.5 s on at most 3 containers: two rounds at least
        assert _ready(scaling.sleepy) <= 3
        assert _wait_for(lambda: _ready(scaling.sleepy) == 0, 15)  # scaledown_window=1
        assert scaling.sleepy.remote(0) > 0  # and it comes back on demand


def test_buffer_containers_start_while_busy(provider):
    from apps import scaling

    with scaling.app.run():
        call = scaling.buffered.spawn(2.0)
        # One input needs one container; two more are kept as a buffer while the function is busy.
        assert _wait_for(lambda: _ready(scaling.buffered) == 3, 30)
        call.get(timeout=30)

"""User-visible behaviour of functions: every way to call one, errors, options and limits."""

from __future__ import annotations

import asyncio
import os
import threading
import time

import pytest

import runner
from runner.exception import (
    ExecutionError,
    FunctionTimeoutError,
    InputCancellation,
    InvalidError,
    RemoteError,
    SerializationError,
)
from runner.exception import TimeoutError as RunnerTimeoutError

from apps import core
from helpers import ContainerOutput, printed_lines  # noqa: F401
from helpers import tag as _tag

pytestmark = pytest.mark.timeout(60)


# ---- calling -----------------------------------------------------------------------------------
def test_remote(provider):
    with core.app.run():
        assert core.square.remote(7) == 49
        assert core.add.remote(2, y=3) == 5


def test_local_runs_in_this_process():
    # No app is running: .local and a direct call need none, and run on the client.
    assert core.square.local(6) == 36
    info = core.where_am_i.local()
    assert info["is_local"] is True
    assert info["token"] == core.PROCESS_TOKEN


def test_direct_call_runs_locally():
    assert core.square(5) == 25
    assert core.add(1, y=2) == 3
    assert core.where_am_i()["token"] == core.PROCESS_TOKEN


def test_map_is_ordered_by_default(provider):
    # Earlier inputs sleep longer, so they finish last; the map still yields in input order.
    delays = [0.4, 0.3, 0.2, 0.1, 0.0]
    with core.app.run():
        got = list(core.sleep_then_return.map(delays, range(len(delays))))
    assert got == [0, 1, 2, 3, 4]


def test_map_unordered_gives_all_results(provider):
    delays = [0.4, 0.3, 0.2, 0.1, 0.0] * 2
    with core.app.run():
        got = list(core.sleep_then_return.map(delays, range(len(delays)), order_outputs=False))
    assert sorted(got) == list(range(len(delays)))


def test_map_with_several_iterables(provider):
    with core.app.run():
        assert list(core.add.map([1, 2, 3], [10, 20, 30])) == [11, 22, 33]
        # Iterables of different lengths stop at the shortest, as zip does.
        assert list(core.add.map([1, 2, 3], [10, 20])) == [11, 22]


def test_map_with_kwargs(provider):
    with core.app.run():
        assert list(core.add.map([1, 2, 3], kwargs={"y": 100})) == [101, 102, 103]


def test_starmap(provider):
    with core.app.run():
        assert list(core.add.starmap([(1, 2), (3, 4), (5, 6)])) == [3, 7, 11]


def test_for_each_runs_every_input_and_waits(provider):
    tag = _tag()
    with core.app.run():
        assert core.touch.for_each([tag] * 6, range(6)) is None
        returned = time.time()
        notes = core.touch.remote(tag)  # read back from touch's one warm container
    assert sorted(notes) == [str(i) for i in range(6)]
    # for_each returns only when every input has run: each note was left before it returned.
    assert max(notes.values()) <= returned


def test_map_return_exceptions_gives_user_exception_objects(provider):
    with core.app.run():
        got = list(core.fail_if_odd.map(range(6), return_exceptions=True))
    assert len(got) == 6
    assert [got[i] for i in (0, 2, 4)] == [0, 2, 4]
    for i in (1, 3, 5):
        assert type(got[i]) is core.UserError
        assert f"odd input {i}" in str(got[i])


def test_map_raises_user_exception(provider):
    with core.app.run():
        with pytest.raises(core.UserError, match="odd input 1"):
            list(core.fail_if_odd.map([0, 1, 2]))
        # The app keeps working after a map failed.
        assert core.square.remote(3) == 9


# ---- spawn -------------------------------------------------------------------------------------
def test_spawn_get(provider):
    with core.app.run():
        call = core.square.spawn(9)
        assert isinstance(call, runner.FunctionCall)
        assert call.object_id.startswith("fc-")
        assert call.get() == 81
        assert call.get() == 81  # a result can be read again


def test_spawn_get_timeout(provider):
    with core.app.run():
        call = core.mark_then_sleep.spawn(_tag(), 1.0)
        t0 = time.monotonic()
        with pytest.raises(RunnerTimeoutError):
            call.get(timeout=0.1)
        assert time.monotonic() - t0 < 1.0
        # The call itself was not harmed by the client giving up waiting.
        assert call.get(timeout=15) == "finished"


def test_function_call_from_id(provider):
    with core.app.run():
        call = core.square.spawn(12)
        again = runner.FunctionCall.from_id(call.object_id)
        assert again.object_id == call.object_id
        assert again.get() == 144


def test_function_call_from_unknown_id(provider):
    with core.app.run():
        with pytest.raises(runner.exception.NotFoundError):
            runner.FunctionCall.from_id("fc-does-not-exist")


def test_function_call_gather(provider):
    with core.app.run():
        calls = [core.sleep_then_return.spawn(0.3 - 0.1 * i, i) for i in range(3)] + [core.square.spawn(4)]
        assert runner.FunctionCall.gather(*calls) == [0, 1, 2, 16]


def test_function_call_gather_raises_user_error(provider):
    with core.app.run():
        calls = [core.fail_if_odd.spawn(2), core.fail_if_odd.spawn(3)]
        with pytest.raises(core.UserError, match="odd input 3"):
            runner.FunctionCall.gather(*calls)


def test_cancel_running_call(provider):
    tag = _tag()
    with printed_lines() as printed, core.app.run():
        call = core.mark_then_sleep.spawn(tag, 30)
        printed.wait_for(f"{tag} started")  # it is running now
        t0 = time.monotonic()
        call.cancel()
        with pytest.raises(InputCancellation):
            call.get(timeout=10)
        assert time.monotonic() - t0 < 10
        # The function serves new inputs after the cancel.
        assert core.mark_then_sleep.remote(_tag(), 0) == "finished"


def test_cancel_before_it_runs(provider):
    tag = _tag()
    with core.app.run():
        call = core.touch.spawn(tag, "never")
        call.cancel()  # no container is up yet: the input is still queued
        with pytest.raises(InputCancellation):
            call.get(timeout=5)
        time.sleep(0.5)
        assert core.square.remote(3) == 9
        # touch's one container, where it would have run, holds no note from it.
        assert core.touch.remote(tag) == {}  # the cancelled input never ran


def test_cancel_running_async_call_keeps_the_container(provider):
    tag = _tag()
    with printed_lines() as printed, core.app.run():
        call = core.async_mark_then_sleep.spawn(tag, 30)
        (line,) = printed.wait_for(f"{tag} started")
        running_in = line.split()[2]
        call.cancel()
        with pytest.raises(InputCancellation):
            call.get(timeout=10)
        # An async input is cancelled as a task: the same container serves the next call.
        assert core.async_mark_then_sleep.remote(_tag(), 0) == running_in


def test_cancel_after_finish_keeps_the_result(provider):
    with core.app.run():
        call = core.square.spawn(3)
        assert call.get(timeout=15) == 9
        call.cancel()
        assert call.get() == 9


def test_spawn_map(provider):
    tag = _tag()
    with core.app.run():
        assert core.touch.spawn_map([tag] * 5, range(5)) is None
        deadline = time.monotonic() + 15
        while len(notes := core.touch.remote(tag)) < 5:  # read back from touch's one container
            assert time.monotonic() < deadline, f"only {sorted(notes)} ran"
            time.sleep(0.05)
    assert sorted(notes) == [str(i) for i in range(5)]


# ---- generators --------------------------------------------------------------------------------
def test_remote_gen(provider):
    with core.app.run():
        assert list(core.count_up.remote_gen(5)) == [0, 1, 2, 3, 4]
        assert list(core.count_up.remote_gen(0)) == []
        assert list(core.async_count_up.remote_gen(3)) == [0, 10, 20]


def test_remote_on_generator_is_invalid(provider):
    with core.app.run():
        with pytest.raises(InvalidError, match="remote_gen"):
            core.count_up.remote(3)


def test_remote_gen_on_plain_function_is_invalid(provider):
    with core.app.run():
        with pytest.raises(InvalidError):
            list(core.square.remote_gen(3))


# ---- async -------------------------------------------------------------------------------------
def test_remote_aio(provider):
    async def main():
        return await core.square.remote.aio(11), await core.async_square.remote.aio(5)

    with core.app.run():
        assert asyncio.run(main()) == (121, 25)


def test_sync_remote_of_async_function(provider):
    with core.app.run():
        assert core.async_square.remote(6) == 36


def test_map_aio(provider):
    async def main():
        return [x async for x in core.square.map.aio(range(6))]

    with core.app.run():
        assert asyncio.run(main()) == [0, 1, 4, 9, 16, 25]


def test_remote_gen_aio(provider):
    async def main():
        return [x async for x in core.count_up.remote_gen.aio(4)], [x async for x in core.async_count_up.remote_gen.aio(2)]

    with core.app.run():
        assert asyncio.run(main()) == ([0, 1, 2, 3], [0, 10])


def test_spawn_aio_get_aio(provider):
    async def main():
        call = await core.square.spawn.aio(8)
        assert isinstance(call, runner.FunctionCall)
        return await call.get.aio()

    with core.app.run():
        assert asyncio.run(main()) == 64


def test_gather_of_remote_aio_runs_concurrently(provider):
    async def main():
        return await asyncio.gather(*(core.async_sleep.remote.aio(0.5, i) for i in range(8)))

    with core.app.run():
        core.async_sleep.remote(0, -1)  # warm the one container, so the bound measures the calls
        t0 = time.monotonic()
        got = asyncio.run(main())
        elapsed = time.monotonic() - t0
    assert got == list(range(8))
    assert elapsed < 3.0, f"8 concurrent 0.5 s calls took {elapsed:.2f}s"


def test_aio_starmap_for_each_spawn_map_and_gather(provider):
    each, spawned = _tag(), _tag()

    async def main():
        pairs = [x async for x in core.add.starmap.aio([(1, 2), (3, 4)])]
        await core.touch.for_each.aio([each] * 3, range(3))
        returned = time.time()
        notes = await core.touch.remote.aio(each)  # read back from touch's one warm container
        assert sorted(notes) == ["0", "1", "2"]
        assert max(notes.values()) <= returned  # every input ran before for_each.aio returned
        await core.touch.spawn_map.aio([spawned] * 3, range(3))
        calls = [await core.square.spawn.aio(i) for i in range(4)]
        gathered = await runner.FunctionCall.gather.aio(*calls)
        return pairs, gathered

    with core.app.run():
        assert asyncio.run(main()) == ([3, 7], [0, 1, 4, 9])
        deadline = time.monotonic() + 15
        while len(notes := core.touch.remote(spawned)) < 3:
            assert time.monotonic() < deadline, f"only {sorted(notes)} ran"
            time.sleep(0.05)
        assert sorted(notes) == ["0", "1", "2"]


# ---- errors and context ------------------------------------------------------------------------
def test_user_exception_keeps_its_class_and_remote_traceback(provider):
    with core.app.run():
        with pytest.raises(core.UserError) as info:
            core.raise_user_error.remote("boom")
    exc = info.value
    assert type(exc) is core.UserError
    assert str(exc) == "boom"
    notes = getattr(exc, "__notes__", [])
    remote = [n for n in notes if n.startswith("Remote traceback")]
    assert remote, f"no remote traceback note in {notes!r}"
    assert "raise_user_error" in remote[0]
    assert "UserError" in remote[0]


def test_is_local_and_current_input_id(provider):
    assert runner.is_local() is True
    assert runner.current_input_id() is None
    with core.app.run():
        info = core.where_am_i.remote()
        ids = list(core.input_id.map(range(5)))
    assert info["is_local"] is False
    assert info["token"] != core.PROCESS_TOKEN  # it ran in another process
    assert isinstance(info["input_id"], str) and info["input_id"].startswith("in-")
    assert all(isinstance(i, str) and i.startswith("in-") for i in ids)
    assert len(set(ids)) == 5
    assert runner.is_local() is True


def test_env_secrets_and_image_env_reach_the_function(provider):
    with core.app.run():
        got = core.read_env.remote(["CORE_ENV_VAR", "CORE_SECRET", "CORE_IMAGE_VAR"])
    assert got == {"CORE_ENV_VAR": "from-env", "CORE_SECRET": "s3cr3t", "CORE_IMAGE_VAR": "from-image"}


def test_secret_values_not_in_repr():
    s = runner.Secret.from_dict({"TOKEN": "hunter2"})
    assert "TOKEN" in repr(s)
    assert "hunter2" not in repr(s)


# ---- timeouts ----------------------------------------------------------------------------------
def test_timeout_sync_function(provider):
    with core.app.run():
        t0 = time.monotonic()
        with pytest.raises(FunctionTimeoutError):
            core.sleepy.remote(30)
        elapsed = time.monotonic() - t0
        assert elapsed < 15, f"timeout=1 took {elapsed:.1f}s to end the call"
        # The next call of the same function still works.
        assert core.sleepy.remote(0) == "awake"


def test_timeout_async_function(provider):
    with core.app.run():
        t0 = time.monotonic()
        with pytest.raises(FunctionTimeoutError):
            core.async_sleepy.remote(30)
        elapsed = time.monotonic() - t0
        assert elapsed < 15, f"timeout=1 took {elapsed:.1f}s to end the call"
        assert core.async_sleepy.remote(0) == "awake"


def test_timeout_in_a_map_with_return_exceptions(provider):
    with core.app.run():
        got = list(core.sleepy.map([0, 30, 0], return_exceptions=True))
    assert got[0] == got[2] == "awake"
    assert isinstance(got[1], FunctionTimeoutError)


def test_function_timeout_error_is_a_builtin_timeout_error():
    assert issubclass(FunctionTimeoutError, TimeoutError)
    assert issubclass(FunctionTimeoutError, runner.Error)


# ---- retries -----------------------------------------------------------------------------------
def test_retries_until_success(provider):
    # flaky counts attempts per token in its one warm container (max_containers=1).
    token = _tag()
    with core.app.run():
        assert core.flaky.remote(token, 3) == 3
        # Exactly three attempts ran: the next call on that container counts the fourth.
        assert core.flaky.remote(token, 0) == 4


def test_retries_exhausted_raise_after_max_retries_plus_one(provider):
    # always_fails counts attempts per token in its one warm container (max_containers=1).
    token = _tag()
    with core.app.run():
        with pytest.raises(core.UserError, match="failure on attempt 3$"):
            core.always_fails.remote(token)
        # max_retries=2, plus the first attempt: exactly three ran, so the next call's three
        # attempts on that container are the fourth to the sixth.
        with pytest.raises(core.UserError, match="failure on attempt 6$"):
            core.always_fails.remote(token)


def test_int_retries_accepted():
    app = runner.App("tests-int-retries")

    @app.function(retries=2)
    def f():
        pass

    retries = f._options.retries
    assert isinstance(retries, runner.Retries)
    assert retries.max_retries == 2


def test_container_death_raises_remote_error_naming_input(provider):
    with core.app.run():
        with pytest.raises(RemoteError) as info:
            core.die.remote()
        assert "in-" in str(info.value)
        # A dead container does not take the app with it.
        assert core.square.remote(2) == 4


def test_container_death_is_retried(provider):
    token = _tag()
    with core.app.run():
        armed = core.die_once.remote(token, arm=True)  # the one container will die on the next call
        # The call kills its container; die_once has retries=1 (an int), so it runs again, on a new one.
        survivor = core.die_once.remote(token)
    assert survivor != armed
    assert core.PROCESS_TOKEN not in (armed, survivor)


# ---- concurrency, batching, containers ---------------------------------------------------------
def test_concurrent_inputs_share_one_container(provider):
    with core.app.run():
        t0 = time.monotonic()
        got = list(core.sleep_one_second.map(range(4)))
        elapsed = time.monotonic() - t0
    assert [x for x, _ in got] == [0, 1, 2, 3]
    assert len({token for _, token in got}) == 1  # max_containers=1
    assert elapsed < 3.0, f"4 concurrent 1 s inputs took {elapsed:.2f}s"


def test_batched_function_receives_lists(provider):
    with core.app.run():
        got = list(core.batch_sizes.map(range(12)))
    assert [x for x, _, _ in got] == list(range(12))  # results map back in input order
    assert {kind for _, _, kind in got} == {"list"}
    sizes = [size for _, size, _ in got]
    assert all(1 <= s <= 4 for s in sizes), sizes
    assert max(sizes) > 1, f"no input was batched with another: {sizes}"


def test_batched_function_remote_single_input(provider):
    with core.app.run():
        assert core.batch_sizes.remote(7) == (7, 1, "list")


def test_max_containers_one_serves_map_from_one_process(provider):
    with core.app.run():
        tokens = set(core.token_one_container.map(range(50)))
    assert len(tokens) == 1
    assert core.PROCESS_TOKEN not in tokens


def test_warm_container_is_reused(provider):
    with core.app.run():
        first = core.token_warm.remote()
        second = core.token_warm.remote()
    assert first == second
    assert first != core.PROCESS_TOKEN


# ---- serialization -----------------------------------------------------------------------------
def test_unpicklable_argument(provider):
    with core.app.run():
        with pytest.raises(SerializationError, match="payload"):
            core.echo.remote(threading.Lock())
        with pytest.raises(SerializationError, match="payload"):
            core.echo.remote(payload=threading.Lock())
        assert core.echo.remote([1, "two"]) == [1, "two"]


def test_unpicklable_argument_in_map_and_spawn(provider):
    with core.app.run():
        with pytest.raises(SerializationError, match="payload"):
            list(core.echo.map([1, threading.Lock()]))
        with pytest.raises(SerializationError, match="payload"):
            core.echo.spawn(threading.Lock())


def test_large_payload_round_trip(provider):
    blob = os.urandom(20 * 1024 * 1024)
    with core.app.run():
        assert core.echo.remote(blob) == blob
        assert list(core.echo.map([blob[:1000], blob[-3_000_000:]])) == [blob[:1000], blob[-3_000_000:]]


def test_unpicklable_return_value(provider):
    with core.app.run():
        with pytest.raises(SerializationError):
            core.returns_lock.remote()
        assert core.square.remote(5) == 25


# ---- misuse ------------------------------------------------------------------------------------
def test_remote_outside_app_run():
    with pytest.raises(ExecutionError, match=r"app\.run\(\)"):
        core.square.remote(2)


def test_map_and_spawn_outside_app_run():
    with pytest.raises(ExecutionError, match=r"app\.run\(\)"):
        list(core.square.map([1, 2]))
    with pytest.raises(ExecutionError, match=r"app\.run\(\)"):
        core.square.spawn(1)


def test_app_run_twice_is_invalid(provider):
    with core.app.run():
        with pytest.raises(InvalidError):
            with core.app.run():
                pass
        assert core.square.remote(4) == 16


@pytest.mark.parametrize(
    "options",
    [
        {"gpu": "X100"},
        {"timeout": -1},
        {"timeout": 0},
        {"retries": "3"},
        {"max_containers": 0},
        {"min_containers": 3, "max_containers": 2},
        {"cpu": -1},
        {"memory": "lots"},
        {"no_such_option": 1},
    ],
    ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()),
)
def test_invalid_function_options(options):
    app = runner.App("tests-invalid")
    with pytest.raises(InvalidError):

        @app.function(**options)
        def f():
            pass

    assert "f" not in app.registered_functions


def test_duplicate_function_name_is_invalid():
    app = runner.App("tests-dup")

    @app.function()
    def f():
        pass

    with pytest.raises(InvalidError):

        @app.function(name="f")
        def g():
            pass


# ---- scale -------------------------------------------------------------------------------------
def test_large_map(provider):
    n = 20_000
    with core.app.run():
        t0 = time.monotonic()
        total = sum(core.identity.map(range(n)))
        elapsed = time.monotonic() - t0
    assert total == n * (n - 1) // 2
    assert elapsed < 30


def test_large_map_from_a_generator_is_fed_lazily(provider):
    pulled = 0

    def inputs():
        nonlocal pulled
        for i in range(1_000_000):
            pulled += 1
            yield i

    with core.app.run():
        it = core.identity.map(inputs())
        assert [next(it) for _ in range(3)] == [0, 1, 2]
        # A bounded window: the map did not drain a million-item iterator to get going.
        assert pulled < 50_000
        it.close()
        assert core.square.remote(3) == 9


def test_breaking_out_of_a_map_early(provider):
    with core.app.run():
        t0 = time.monotonic()
        got = []
        for x in core.identity.map(range(10_000)):
            got.append(x)
            if len(got) == 5:
                break
        elapsed = time.monotonic() - t0
        assert got == [0, 1, 2, 3, 4]
        assert elapsed < 10
        # The app still works afterwards.
        assert core.square.remote(12) == 144
        assert list(core.identity.map(range(3))) == [0, 1, 2]


def test_leaving_a_map_does_not_rerun_cancelled_inputs(provider):
    # slow_unless_zero: input 0 returns at once, every other input takes 1 s; each prints a line
    # "<tag> start <x> <container>" as it starts. One container, two at a time: when input 0's
    # result arrives, inputs 1 and 2 are in flight.
    tag = _tag()
    with printed_lines() as printed:

        def starts() -> list[tuple[int, str]]:
            return [(int(line.split()[2]), line.split()[3]) for line in printed.lines(f"{tag} start ")]

        with core.app.run():
            for x in core.slow_unless_zero.map([tag] * 20, range(20)):
                assert x == 0
                break
            left = time.monotonic()
            # Long enough for an input put back in the queue to start again, here or on a new container.
            while time.monotonic() - left < 2.5:
                started = [x for x, _ in starts()]
                assert len(started) == len(set(started)), f"an input ran again after the map was left: {started}"
                time.sleep(0.05)
            assert core.square.remote(2) == 4
        seen = starts()
    started = [x for x, _ in seen]
    assert 0 in started
    assert len(started) == len(set(started)), f"an input ran again after the map was left: {started}"
    # Only inputs in flight when the loop was left ran (to their end, on the same container);
    # the ones still queued were dropped.
    assert set(started) <= {0, 1, 2}, f"inputs still queued when the map was left ran: {sorted(started)}"
    assert len({container for _, container in seen}) == 1, f"inputs ran on a new container: {seen}"


def test_get_aio_timeout_message_names_the_timeout(provider):
    async def main(call):
        with pytest.raises(RunnerTimeoutError) as info:
            await call.get.aio(timeout=0.1)
        return str(info.value)

    with core.app.run():
        call = core.mark_then_sleep.spawn(_tag(), 1.0)
        message = asyncio.run(main(call))
        assert call.get(timeout=15) == "finished"
    assert "0.1" in message, message

"""User-visible behaviour of `@app.cls` classes: parameters, lifecycle hooks and method calls."""

from __future__ import annotations

import asyncio
import time

import pytest

import runner
from runner.exception import ExecutionError, FunctionTimeoutError, InvalidError

from apps import core
from helpers import ContainerOutput, printed_lines  # noqa: F401
from helpers import tag as _tag

pytestmark = pytest.mark.timeout(60)


# ---- parameters --------------------------------------------------------------------------------
def test_parameters_with_and_without_defaults(provider):
    with core.app.run():
        default = core.Counter(name="a").describe.remote()
        given = core.Counter(name="b", start=5).describe.remote()
    assert (default["name"], default["start"]) == ("a", 100)
    assert (given["name"], given["start"]) == ("b", 5)
    assert default["is_local"] is False


def test_different_parameters_get_separate_instances(provider):
    with core.app.run():
        a1 = core.Counter(name="a").describe.remote()
        b = core.Counter(name="b").describe.remote()
        a2 = core.Counter(name="a").describe.remote()
    assert a1["token"] != b["token"]  # a separate container per set of parameter values
    assert a1["token"] == a2["token"]  # same values: the same warm instance
    assert (a1["name"], b["name"]) == ("a", "b")


def test_typed_parameters(provider):
    with core.app.run():
        assert core.Typed().values.remote() == ("x", 0, 1.0, False)
        assert core.Typed(label="y", count=3, ratio=2.5, flag=True).values.remote() == ("y", 3, 2.5, True)
        assert core.Typed(ratio=2).values.remote()[2] == 2  # an int is a fine float


def test_unknown_parameter_is_invalid():
    with pytest.raises(InvalidError, match="nope"):
        core.Counter(name="a", nope=1)


def test_positional_parameters_are_invalid():
    with pytest.raises(InvalidError):
        core.Counter("a")


def test_missing_required_parameter_is_invalid():
    with pytest.raises(InvalidError, match="name"):
        core.Counter()


@pytest.mark.parametrize(
    "kwargs",
    [{"count": "3"}, {"label": 3}, {"ratio": "fast"}, {"flag": 1}, {"count": True}],
    ids=lambda k: ",".join(f"{n}={v!r}" for n, v in k.items()),
)
def test_wrong_parameter_type_is_invalid(kwargs):
    with pytest.raises(InvalidError):
        core.Typed(**kwargs)


def test_parameter_default_must_be_a_simple_type():
    with pytest.raises(InvalidError):
        runner.parameter(default=[1, 2])


def test_unknown_method_is_an_attribute_error():
    with pytest.raises(AttributeError):
        core.Counter(name="a").no_such_method


# ---- lifecycle ---------------------------------------------------------------------------------
def test_enter_runs_once_per_container(provider):
    with core.app.run():
        c = core.Counter(name="once")
        counts = [c.describe.remote()["enters"] for _ in range(3)]
        assert list(c.bump.map(range(20))) == [100 + i for i in range(20)]
        tokens = {c.describe.remote()["token"] for _ in range(3)}
        # Another handle with the same parameters reaches the same container.
        counts.append(core.Counter(name="once").describe.remote()["enters"])
    assert counts == [1, 1, 1, 1]
    assert len(tokens) == 1


def test_exit_runs_when_the_app_stops(provider):
    # Lifecycle prints "<tag> enter <container>" from @enter and "<tag> exit <container>" from @exit.
    tag = _tag()
    with printed_lines() as printed:
        with core.app.run():
            assert core.Lifecycle(tag=tag).ping.remote() == "pong"
            assert core.Lifecycle(tag=tag).ping.remote() == "pong"
            printed.wait_for(f"{tag} enter")
            lines = printed.lines(tag)
            assert [line.split()[1] for line in lines] == ["enter"]  # no exit while the app runs
        printed.wait_for(f"{tag} exit")
        lines = printed.lines(tag)
    assert [line.split()[1] for line in lines] == ["enter", "exit"]
    assert lines[0].split()[2] == lines[1].split()[2]  # the same container entered and exited


def test_exit_runs_when_an_idle_container_scales_down(provider):
    tag = _tag()
    with printed_lines() as printed, core.app.run():
        first = core.QuickToIdle(tag=tag).ping.remote()  # scaledown_window=0.5
        printed.wait_for(
            f"{tag} exit", seconds=10, why="the idle container was not stopped, or its @exit did not run"
        )
        assert printed.lines(tag) == [f"{tag} exit {first}"]
        # A new call starts a new container.
        second = core.QuickToIdle(tag=tag).ping.remote()
        assert second != first


# ---- calling methods ---------------------------------------------------------------------------
def test_method_remote(provider):
    with core.app.run():
        assert core.Counter(name="r", start=10).bump.remote(5) == 15
        assert core.Counter(name="r", start=10).bump.remote(by=1) == 11


def test_method_map_and_starmap(provider):
    with core.app.run():
        c = core.Counter(name="m", start=1)
        assert list(c.bump.map([1, 2, 3])) == [2, 3, 4]
        assert list(c.bump.starmap([(10,), (20,)])) == [11, 21]


def test_method_spawn(provider):
    with core.app.run():
        call = core.Counter(name="s", start=0).bump.spawn(7)
        assert isinstance(call, runner.FunctionCall)
        assert call.get(timeout=15) == 7


def test_method_spawn_from_id_and_gather(provider):
    with core.app.run():
        c = core.Counter(name="calls", start=1)
        calls = [c.bump.spawn(i) for i in range(3)]
        again = runner.FunctionCall.from_id(calls[0].object_id)
        assert again.get(timeout=15) == 1
        assert runner.FunctionCall.gather(*calls) == [1, 2, 3]


def test_concurrent_class(provider):
    with core.app.run():
        sleeper = core.ConcurrentSleeper()
        sleeper.nap.remote(0)  # warm the one container
        t0 = time.monotonic()
        tokens = list(sleeper.nap.map([1, 1, 1, 1]))
        elapsed = time.monotonic() - t0
    assert len(set(tokens)) == 1
    assert elapsed < 3.0, f"4 concurrent 1 s method calls took {elapsed:.2f}s"


def test_method_local():
    c = core.Counter(name="here", start=3)
    assert c.bump.local(4) == 7
    info = c.describe.local()
    assert info["is_local"] is True
    assert info["token"] == core.PROCESS_TOKEN
    assert (info["name"], info["start"], info["enters"]) == ("here", 3, 1)
    assert c.describe.local()["enters"] == 1  # @enter ran once for the local instance too


def test_method_user_exception(provider):
    with core.app.run():
        with pytest.raises(core.UserError, match="from a method") as info:
            core.Counter(name="e").fail.remote("from a method")
    assert any(n.startswith("Remote traceback") for n in getattr(info.value, "__notes__", []))


def test_method_outside_app_run():
    with pytest.raises(ExecutionError, match=r"app\.run\(\)"):
        core.Counter(name="x").bump.remote(1)


def test_generator_method(provider):
    with core.app.run():
        assert list(core.Counter(name="g").countdown.remote_gen(3)) == ["g:3", "g:2", "g:1"]
        with pytest.raises(InvalidError):
            core.Counter(name="g").countdown.remote(3)


def test_async_method(provider):
    async def main():
        c = core.Counter(name="async", start=7)
        greeting = await c.async_greet.remote.aio("you")
        items = [x async for x in c.async_gen.remote_gen.aio(3)]
        mapped = [x async for x in c.bump.map.aio([1, 2])]
        return greeting, items, mapped

    with core.app.run():
        assert core.Counter(name="async").async_greet.remote("me") == "async greets me"
        assert asyncio.run(main()) == ("async greets you", [7, 8, 9], [8, 9])


# ---- options -----------------------------------------------------------------------------------
def test_with_options_timeout(provider):
    short = core.Sleeper.with_options(timeout=1)
    with core.app.run():
        t0 = time.monotonic()
        with pytest.raises(FunctionTimeoutError):
            short().nap.remote(30)
        assert time.monotonic() - t0 < 15
        # The original class keeps its own (default) timeout.
        assert core.Sleeper().nap.remote(1.2) == "rested"
        assert short().nap.remote(0) == "rested"


def test_with_options_rejects_unknown_and_invalid_options():
    with pytest.raises(InvalidError):
        core.Sleeper.with_options(no_such_option=1)
    with pytest.raises(InvalidError):
        core.Sleeper.with_options(timeout=0)


@pytest.mark.parametrize(
    "options",
    [{"gpu": "X100"}, {"timeout": -1}, {"retries": "3"}, {"max_containers": 0}, {"memory": "lots"}],
    ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()),
)
def test_invalid_cls_options(options):
    app = runner.App("tests-invalid-cls")
    with pytest.raises(InvalidError):

        @app.cls(**options)
        class C:
            @runner.method()
            def f(self):
                pass


def test_cls_decorator_on_a_function_is_invalid():
    app = runner.App("tests-cls-on-fn")
    with pytest.raises(InvalidError):
        app.cls()(lambda: None)


def test_async_exit_hook_runs_when_the_app_stops(provider):
    tag = _tag()
    with printed_lines() as printed:
        with core.app.run():
            assert core.AsyncTeardown(tag=tag).ping.remote() == "pong"
            assert printed.lines(tag) == []  # no exit while the app runs
        printed.wait_for(f"{tag} async exit")
        lines = printed.lines(tag)
    assert [line.rsplit(" ", 1)[0] for line in lines] == [f"{tag} async exit"]


def test_async_enter_hook(provider):
    with core.app.run():
        assert core.AsyncSetup().status.remote() == "set up asynchronously"


def test_enter_hook_failure_reaches_the_caller(provider):
    # A failing @enter hook fails the calls waiting for the container, with the hook's own error.
    with core.app.run():
        with pytest.raises(core.UserError, match="enter failed"):
            core.BrokenEnter().ping.remote()
        assert core.square.remote(3) == 9  # the rest of the app is unaffected

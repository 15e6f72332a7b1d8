"""`runner deploy` and the deployed-app lookups: an app keeps running after the deploying client
exits; other processes call it with Function.from_name / Cls.from_name, find spawned calls with
FunctionCall.from_id; a redeploy replaces it without dropping what it accepted; `runner app
list|stop|logs`; schedules; and the bad inputs (a taken port, racing deploys, unknown names)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request

import pytest

from helpers import RUNNER, assert_one_line_error, run_cli, write

APP = """
    import time
    import modal

    app = modal.App("NAME", image=modal.Image.debian_slim())

    @app.function()
    def square(x: int) -> int:
        return x * x

    @app.function()
    def slow(seconds: float) -> str:
        time.sleep(seconds)
        return "VERSION"

    @app.function()
    def count(n: int):
        for i in range(n):
            yield i

    @app.function()
    def fails():
        raise ValueError("broken on purpose")

    @app.function()
    def mark(directory: str, i: int) -> None:
        import os
        time.sleep(0.5)
        open(os.path.join(directory, str(i)), "w").close()

    @app.function()
    def shout(word: str) -> str:
        print("shouting", word)
        return word.upper()

    @app.cls()
    class Greeter:
        greeting: str = modal.parameter(default="hello")

        @modal.method()
        def greet(self, who: str) -> str:
            return f"{self.greeting}, {who} (VERSION)"
"""

WEB_APP = """
    import modal

    app = modal.App("NAME", image=modal.Image.debian_slim().pip_install("fastapi[standard]"))

    @app.function()
    @modal.fastapi_endpoint()
    def version(wait: float = 0.0):
        import time
        time.sleep(wait)
        return {"version": "VERSION"}

    @app.function()
    def slow(seconds: float) -> str:
        import time
        time.sleep(seconds)
        return "VERSION"
"""


def _app(tmp_path, name: str, version: str = "v1", source: str = APP, file: str = "app.py"):
    return write(tmp_path, file, source.replace("NAME", name).replace("VERSION", version))


def _client(tmp_path, code: str, provider: str, timeout: float = 180) -> subprocess.CompletedProcess:
    """Run `code` in a fresh Python process (another client than the one that deployed)."""
    script = tmp_path / f"client_{time.monotonic_ns()}.py"
    script.write_text("import runner as modal\n" + textwrap.dedent(code))
    env = {**os.environ, "RUNNER_PROVIDER": provider}
    return subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def _state(name: str) -> dict:
    from runner._deploy import read_state

    state = read_state(name)
    assert state is not None, f"{name} is not deployed"
    return state


def _get(url: str, timeout: float = 120) -> bytes:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=timeout) as resp:
        return resp.read()


@pytest.fixture
def deployed():
    """Names deployed by the test; each is stopped afterwards, and its daemon must be gone."""
    names: list[str] = []
    yield names
    from runner._deploy import deployed_apps, stop

    for name in names:
        state = deployed_apps().get(name)
        if state is not None:
            stop(name)
        if state and state.get("pid"):
            assert not _alive(state["pid"]), f"the daemon of {name} is still running"


def _alive(pid: int) -> bool:
    from runner._context import pid_alive

    deadline = time.monotonic() + 10
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return pid_alive(pid)


def _deploy(tmp_path, *args, provider: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return run_cli(["deploy", *args], cwd=tmp_path, env={"RUNNER_PROVIDER": provider}, timeout=timeout)


def test_deployed_app_serves_other_processes_after_the_client_exits(tmp_path, provider, deployed):
    name = f"dep-{provider}"
    deployed.append(name)
    _app(tmp_path, name)
    proc = _deploy(tmp_path, "app.py", provider=provider)
    assert proc.returncode == 0, proc.stderr
    assert f"Deployed app {name}" in proc.stdout

    client = _client(tmp_path, f"""
        sq = modal.Function.from_name("{name}", "square")
        print("remote", sq.remote(7))
        print("map", sum(sq.map(range(1000))))
        print("starmap", list(sq.starmap([(2,), (3,)])))
        print("gen", list(modal.Function.from_name("{name}", "count").remote_gen(4)))
        Greeter = modal.Cls.from_name("{name}", "Greeter")
        print("cls", Greeter(greeting="hi").greet.remote("bob"), Greeter().greet.remote("ann"))
        print("shout", modal.Function.from_name("{name}", "shout").remote("marker-{provider}"))
        try:
            modal.Function.from_name("{name}", "fails").remote()
        except ValueError as exc:
            print("error", type(exc).__name__, exc)
        import asyncio
        async def main():
            print("aio", await sq.remote.aio(5), [x async for x in sq.map.aio(range(4))])
        asyncio.run(main())
        call = modal.Function.from_name("{name}", "slow").spawn(1.0)
        print("spawned", call.object_id)
    """, provider)
    assert client.returncode == 0, client.stderr
    out = client.stdout
    assert "remote 49" in out and "map 332833500" in out and "starmap [4, 9]" in out
    assert "gen [0, 1, 2, 3]" in out
    assert "cls hi, bob (v1) hello, ann (v1)" in out
    assert "shout MARKER-" in out
    assert "error ValueError broken on purpose" in out
    assert "aio 25 [0, 1, 4, 9]" in out

    # The spawning client has exited; another process gets the result by id.
    call_id = next(line.split()[1] for line in out.splitlines() if line.startswith("spawned"))
    getter = _client(tmp_path, f"print('got', modal.FunctionCall.from_id({call_id!r}).get(timeout=60))", provider)
    assert getter.returncode == 0, getter.stderr
    assert "got v1" in getter.stdout

    listing = run_cli(["app", "list"], cwd=tmp_path)
    row = next(line for line in listing.stdout.splitlines() if line.startswith(name + " "))
    assert "deployed" in row and "square" in row and "Greeter" in row

    logs = run_cli(["app", "logs", name], cwd=tmp_path)
    assert logs.returncode == 0 and f"shouting marker-{provider}" in logs.stdout  # container output lands there

    daemon_pid = _state(name)["pid"]
    if provider == "docker":
        assert _containers_of(daemon_pid)  # its warm containers
    stopped = run_cli(["app", "stop", name], cwd=tmp_path)
    assert stopped.returncode == 0, stopped.stderr
    after = _client(tmp_path, f"""
        try:
            modal.Function.from_name("{name}", "square").remote(1)
        except modal.exception.NotFoundError as exc:
            print("gone:", exc)
    """, provider)
    assert f"gone: no deployed app named {name!r}" in after.stdout, after.stderr
    if provider == "docker":
        assert _containers_of(daemon_pid) == []


def _containers_of(pid: int) -> list[str]:
    """Containers (running or not) owned by the process `pid` on this host."""
    from runner._providers._docker import LABEL

    out = subprocess.run(["docker", "ps", "-a", "--filter", f"label={LABEL}.owner", "--format",
                          f'{{{{.ID}}}} {{{{.Label "{LABEL}.owner"}}}}'], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if line.endswith(f":{pid}")]


def test_redeploy_keeps_the_url_and_drops_nothing_accepted(tmp_path, provider, deployed):
    name = f"redep-{provider}"
    deployed.append(name)
    _app(tmp_path, name, "v1", WEB_APP)
    assert _deploy(tmp_path, "app.py", provider=provider).returncode == 0
    url = _state(name)["web"]["version"]
    assert json.loads(_get(url)) == {"version": "v1"}

    from runner import Function

    slow = Function.from_name(name, "slow")
    results, errors = [], []
    stop = threading.Event()

    def call():
        try:
            results.append(("call", slow.remote(3.0)))
        except Exception as exc:  # noqa: BLE001 - recorded, asserted below
            errors.append(repr(exc))

    def hammer():
        while not stop.is_set():
            try:
                results.append(("web", json.loads(_get(url))["version"]))
            except Exception as exc:  # noqa: BLE001
                errors.append(repr(exc))

    def long_request():
        try:
            results.append(("long", json.loads(_get(url + "?wait=2"))["version"]))
        except Exception as exc:  # noqa: BLE001
            errors.append(repr(exc))

    threads = [threading.Thread(target=call) for _ in range(2)] + [threading.Thread(target=long_request)]
    threads += [threading.Thread(target=hammer) for _ in range(2)]
    for t in threads:
        t.start()
    time.sleep(0.5)  # the long calls and requests are in the old version now
    old_pid = _state(name)["pid"]
    _app(tmp_path, name, "v2", WEB_APP)
    proc = _deploy(tmp_path, "app.py", provider=provider)
    assert proc.returncode == 0, proc.stderr
    assert "Redeployed (version 2)" in proc.stdout
    new = _state(name)
    assert new["web"]["version"] == url  # the same port
    deadline = time.monotonic() + 60
    while not any(r == ("web", "v2") for r in list(results)) and time.monotonic() < deadline:
        time.sleep(0.05)
    stop.set()
    for t in threads:
        t.join(120)
    assert errors == []
    assert results.count(("call", "v1")) == 2, [r for r in results if r[0] != "web"]  # accepted by v1, answered by v1
    assert ("long", "v1") in results
    assert ("web", "v2") in results
    assert not _alive(old_pid)  # the old version exited once it had answered everything
    assert slow.remote(0) == "v2"  # the same lookup object now reaches the new version
    assert json.loads(_get(url)) == {"version": "v2"}


def test_spawned_work_outlives_the_client_and_the_app_run(tmp_path, deployed):
    """spawn_map inputs and spawned calls go on when their client exits at once; a spawned call's
    result can still be read by id after the app is stopped."""
    name = "detached"
    deployed.append(name)
    _app(tmp_path, name)
    assert _deploy(tmp_path, "app.py", provider="embedded").returncode == 0
    marks = tmp_path / "marks"
    marks.mkdir()
    client = _client(tmp_path, f"""
        modal.Function.from_name("{name}", "mark").spawn_map([{str(marks)!r}] * 5, range(5))
        print("spawned", modal.Function.from_name("{name}", "slow").spawn(1.0).object_id)
    """, "embedded")  # exits right away, while the inputs run
    assert client.returncode == 0, client.stderr
    call_id = client.stdout.split()[-1]
    getter = _client(tmp_path, f"print('got', modal.FunctionCall.from_id({call_id!r}).get(timeout=60))", "embedded")
    assert "got v1" in getter.stdout, getter.stderr
    deadline = time.monotonic() + 30
    while len(list(marks.iterdir())) < 5 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert sorted(p.name for p in marks.iterdir()) == ["0", "1", "2", "3", "4"]
    assert run_cli(["app", "stop", name], cwd=tmp_path).returncode == 0
    later = _client(tmp_path, f"print('still', modal.FunctionCall.from_id({call_id!r}).get())", "embedded")
    assert "still v1" in later.stdout, later.stderr


def test_racing_deploys_leave_one_version_running(tmp_path, deployed):
    name = "race"
    deployed.append(name)
    _app(tmp_path, name)
    env = {**os.environ, "RUNNER_PROVIDER": "embedded"}
    procs = [subprocess.Popen([*RUNNER, "deploy", "app.py"], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL) for _ in range(2)]
    outs = [p.communicate(timeout=180) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert sorted("Redeployed" in out for out, _ in outs) == [False, True]
    assert any("waiting for another deploy" in err for _, err in outs)
    state = _state(name)
    assert state["version"] == 2
    daemons = subprocess.run(["pgrep", "-f", "runner._deploy"], capture_output=True, text=True).stdout.split()
    ours = [pid for pid in daemons if _deploy_name(pid) == name]
    deadline = time.monotonic() + 30
    while len(ours) > 1 and time.monotonic() < deadline:  # the first one retires
        time.sleep(0.1)
        ours = [pid for pid in ours if _deploy_name(pid) == name]
    assert ours == [str(state["pid"])]


def _deploy_name(pid: str) -> str | None:
    try:
        args = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")
    except OSError:
        return None
    for arg in args:
        if arg.startswith(b"{"):
            return json.loads(arg)["name"]
    return None


def test_schedules_run_and_a_failed_run_does_not_stop_the_next(tmp_path, deployed):
    name = "sched"
    deployed.append(name)
    marker = tmp_path / "runs"
    write(tmp_path, "app.py", f"""
        import modal

        app = modal.App("{name}")

        @app.function(schedule=modal.Period(seconds=1))
        def tick():
            with open({str(marker)!r}, "a") as f:
                f.write("run\\n")
            runs = len(open({str(marker)!r}).read().splitlines())
            if runs == 2:
                raise RuntimeError("run 2 fails on purpose")
            print("tick", runs)

        @app.function(schedule=modal.Cron("0 9 * * 1-5", timezone="Europe/Paris"))
        def weekdays():
            pass
    """)
    proc = _deploy(tmp_path, "app.py", provider="embedded")
    assert proc.returncode == 0, proc.stderr
    assert "tick runs every 1s" in proc.stdout
    assert "weekdays runs cron 0 9 * * 1-5 (Europe/Paris)" in proc.stdout
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if marker.exists() and len(marker.read_text().splitlines()) >= 4:
            break
        time.sleep(0.2)
    time.sleep(0.5)
    log = run_cli(["app", "logs", name], cwd=tmp_path).stdout
    assert "failed: RuntimeError: run 2 fails on purpose" in log
    assert "tick 3" in log and "tick 4" in log  # the schedule went on after the failure
    assert log.count("succeeded") >= 3


def test_app_logs_follow_ends_when_the_app_stops(tmp_path, deployed):
    name = "follow"
    deployed.append(name)
    _app(tmp_path, name)
    assert _deploy(tmp_path, "app.py", provider="embedded").returncode == 0
    env = {**os.environ}
    follower = subprocess.Popen([*RUNNER, "app", "logs", name, "-f"], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    client = _client(tmp_path, f"print(modal.Function.from_name('{name}', 'shout').remote('followed'))", "embedded")
    assert client.returncode == 0, client.stderr
    time.sleep(0.5)
    assert run_cli(["app", "stop", name], cwd=tmp_path).returncode == 0
    out, _ = follower.communicate(timeout=30)
    assert follower.returncode == 0
    assert "shouting followed" in out and f"{name} stopped" in out


def test_app_lookup(tmp_path, deployed):
    deployed.append("looked-up")
    client = _client(tmp_path, """
        try:
            modal.App.lookup("looked-up")
        except modal.exception.NotFoundError as exc:
            print("missing:", exc)
        app = modal.App.lookup("looked-up", create_if_missing=True)
        again = modal.App.lookup("looked-up")
        print("ids", app.app_id == again.app_id, app.app_id.startswith("ap-"))
    """, "embedded")
    assert client.returncode == 0, client.stderr
    assert "missing: no deployed app named 'looked-up'" in client.stdout
    assert "ids True True" in client.stdout
    listing = run_cli(["app", "list"], cwd=tmp_path).stdout
    assert any(line.startswith("looked-up ") and "empty" in line for line in listing.splitlines())


# ---- bad input ----------------------------------------------------------------------------------
def test_deploy_on_a_taken_port_says_so_and_leaves_nothing(tmp_path, deployed):
    deployed.append("porty")
    _app(tmp_path, "porty", "v1", WEB_APP)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = _deploy(tmp_path, "app.py", "--port", str(port), provider="embedded")
        assert_one_line_error(proc, f"127.0.0.1:{port}", "choose another port")
        serve = run_cli(["serve", "app.py", "--port", str(port)], cwd=tmp_path, timeout=60)
        assert_one_line_error(serve, f"127.0.0.1:{port}")
    from runner._deploy import deployed_apps

    assert "porty" not in deployed_apps()


def test_lookups_of_unknown_names(tmp_path, deployed):
    name = "known"
    deployed.append(name)
    _app(tmp_path, name)
    assert _deploy(tmp_path, "app.py", provider="embedded").returncode == 0
    client = _client(tmp_path, f"""
        from runner.exception import NotFoundError, InvalidError
        for make in (lambda: modal.Function.from_name("nope", "square").remote(1),
                     lambda: modal.Function.from_name("{name}", "nope").remote(1),
                     lambda: modal.Cls.from_name("{name}", "Nope")(),
                     lambda: modal.Function.from_name("{name}", "Greeter").hydrate(),
                     lambda: modal.FunctionCall.from_id("fc-0123456789abcdef0123")):
            try:
                make()
            except NotFoundError as exc:
                print("NotFound:", exc)
        try:
            modal.Cls.from_name("{name}", "Greeter")(colour="red")
        except InvalidError as exc:
            print("Invalid:", exc)
        try:
            modal.Function.from_name("bad name!", "x")
        except InvalidError as exc:
            print("Invalid:", exc)
    """, "embedded")
    assert client.returncode == 0, client.stderr
    lines = [line for line in client.stdout.splitlines() if line.startswith(("NotFound:", "Invalid:"))]
    assert lines[0].startswith(f"NotFound: no deployed app named 'nope'") and name in lines[0]
    assert lines[1] == (f"NotFound: deployed app {name!r} has no function 'nope' (its functions: square, slow, "
                        "count, fails, mark, shout); it has classes Greeter (use Cls.from_name)")
    assert lines[2] == f"NotFound: deployed app {name!r} has no class 'Nope' (its classes: Greeter)"
    assert lines[3].startswith(f"NotFound: deployed app {name!r} has no function 'Greeter'")
    assert lines[4].startswith("NotFound: no function call 'fc-0123456789abcdef0123'")
    assert lines[5] == "Invalid: Greeter has no parameter colour (its parameters: greeting)"
    assert lines[6].startswith("Invalid: invalid app name 'bad name!'")


def test_deploy_bad_inputs(tmp_path):
    write(tmp_path, "anon.py", """
        import modal
        app = modal.App()

        @app.function()
        def f():
            pass
    """)
    assert_one_line_error(run_cli(["deploy", "anon.py"], cwd=tmp_path), "has no name", "--name")
    assert_one_line_error(run_cli(["deploy", "missing.py"], cwd=tmp_path), "no such file: missing.py")
    assert_one_line_error(run_cli(["deploy", "anon.py", "--name", "no/slash"], cwd=tmp_path), "invalid app name")
    assert_one_line_error(run_cli(["app", "stop", "never-deployed"], cwd=tmp_path), "no deployed app named")
    assert_one_line_error(run_cli(["app", "logs", "never-deployed"], cwd=tmp_path), "no deployed app named")
    write(tmp_path, "sched.py", """
        import modal
        app = modal.App("s")

        @app.function(schedule=modal.Period(minutes=5))
        def needs(x):
            pass
    """)
    assert_one_line_error(run_cli(["deploy", "sched.py"], cwd=tmp_path), "requires x", "give them defaults")
    write(tmp_path, "bad_cron.py", """
        import modal
        app = modal.App("s")

        @app.function(schedule=modal.Cron("61 * * * *"))
        def f():
            pass
    """)
    assert_one_line_error(run_cli(["deploy", "bad_cron.py"], cwd=tmp_path), "minute field value 61")


def test_cancel_reaches_the_version_running_the_call(tmp_path, deployed):
    """A call started before a redeploy is cancelled in the old version, which is running it."""
    name = "cancelled"
    deployed.append(name)
    _app(tmp_path, name)
    assert _deploy(tmp_path, "app.py", provider="embedded").returncode == 0
    from runner import Function
    from runner.exception import InputCancellation

    call = Function.from_name(name, "slow").spawn(60.0)
    time.sleep(1.0)  # running in v1
    _app(tmp_path, name, "v2")
    assert _deploy(tmp_path, "app.py", provider="embedded").returncode == 0
    began = time.monotonic()
    call.cancel()
    with pytest.raises(InputCancellation):
        call.get(timeout=30)
    assert time.monotonic() - began < 30

"""Dict and Queue, through the public API, on both stores: the managed redis-server and SQLite.

Each test runs once per store. The redis variant uses the server runner manages under a private
RUNNER_HOME (started on first use, stopped when the module ends); the SQLite variant points
RUNNER_STORE_URL at a file. Several tests use a second Python process, because persistence,
ownership and hand-over between processes are the point of a store.
"""

from __future__ import annotations

import asyncio
import base64
import os
import queue
import shutil
import socket
import subprocess
import sys
import textwrap
import threading
import time
import uuid

import cloudpickle
import pytest

import runner as modal
from helpers import own_runner_home, run_cli, write
from runner.exception import InvalidError, NotFoundError


@pytest.fixture(scope="module")
def store_home():
    """A RUNNER_HOME for this module."""
    with own_runner_home("rd-") as home:
        yield home


@pytest.fixture(params=["redis", "sqlite"])
def store(request, store_home, monkeypatch):
    """The store the test runs on; RUNNER_STORE_URL is set for anything the test starts."""
    if request.param == "redis":
        if not shutil.which("redis-server"):
            if os.environ.get("CI"):
                pytest.fail("redis-server is missing; CI installs it")
            pytest.skip("redis-server is not on PATH")
        monkeypatch.delenv("RUNNER_STORE_URL", raising=False)
    else:
        monkeypatch.setenv("RUNNER_STORE_URL", f"sqlite://{store_home}/sqlite/store.sqlite3")
    return request.param


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def python(source: str, timeout: float = 60) -> str:
    """Run Python source in a new process (with this environment); its stdout."""
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(source)], capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


# ---- Dict ---------------------------------------------------------------------------------------
def test_dict_operations(store):
    d = modal.Dict.from_name(unique("ops"), create_if_missing=True)
    assert d.put("a", 1) is True
    assert d.put("a", 2, skip_if_exists=True) is False
    assert d["a"] == 1 and d.get("a") == 1
    assert d.get("missing") is None and d.get("missing", 7) == 7
    d[("t", 1)] = {"nested": [1, 2]}
    d[b"raw"] = None
    assert d[("t", 1)] == {"nested": [1, 2]} and d[b"raw"] is None and b"raw" in d
    assert "a" in d and d.contains("a") and "zzz" not in d
    d.update({"b": 2}, c=3)
    d.update([("e", 5)])
    assert d.len() == 6
    assert sorted(map(repr, d.keys())) == sorted(map(repr, ["a", ("t", 1), b"raw", "b", "c", "e"]))
    assert sorted(v for v in d.values() if isinstance(v, int)) == [1, 2, 3, 5]
    assert dict(d.items())["c"] == 3
    assert d.pop("b") == 2
    del d["c"]
    with pytest.raises(KeyError):
        d["c"]
    with pytest.raises(KeyError):
        d.pop("c")
    with pytest.raises(KeyError):
        del d["c"]
    d.clear()
    assert d.len() == 0 and list(d.items()) == []


def test_dict_iterates_every_entry_of_a_big_dict(store):
    with modal.Dict.ephemeral({i: str(i) for i in range(1500)}) as d:
        keys = list(d.keys())
        assert sorted(keys) == list(range(1500))
        assert d.len() == 1500


def test_dict_aio(store):
    async def main():
        async with modal.Dict.ephemeral() as d:
            assert await d.put.aio("k", "v") is True
            assert await d.get.aio("k") == "v"
            await d.update.aio(x=1)
            assert await d.len.aio() == 2
            assert sorted([k async for k in d.keys.aio()]) == ["k", "x"]
            assert dict([kv async for kv in d.items.aio()]) == {"k": "v", "x": 1}
            assert await d.pop.aio("k") == "v"
            assert await d.contains.aio("k") is False
            return d

    d = asyncio.run(main())
    with pytest.raises(NotFoundError):
        d.len()  # gone with its context


def test_bad_keys_values_and_names(store):
    with modal.Dict.ephemeral() as d:
        with pytest.raises(InvalidError, match="lock.*store plain data"):
            d["lock"] = threading.Lock()
        with socket.socket() as s, pytest.raises(InvalidError, match="socket.*store plain data"):
            d.put("sock", s)
        with pytest.raises(InvalidError, match="key of type set"):
            d[{1, 2}] = 1
        with pytest.raises(InvalidError, match="key of type tuple"):
            d[(1, frozenset())] = 1
        assert d.len() == 0
    with modal.Queue.ephemeral() as q:
        with pytest.raises(InvalidError, match="lock.*store plain data"):
            q.put(threading.Lock())
        with pytest.raises(InvalidError, match="a list of values"):
            q.put_many("abc")
    for bad in ("", "a" * 65, "has space", "slash/es", 3):
        with pytest.raises(InvalidError, match="invalid Dict name"):
            modal.Dict.from_name(bad)
    with pytest.raises(InvalidError, match="from_name"):
        modal.Queue()


def test_unknown_name_is_not_found_on_first_use(store):
    name = unique("nobody")
    d = modal.Dict.from_name(name)  # lazy: nothing is asked yet
    with pytest.raises(NotFoundError, match=f"Dict '{name}' not found; create it with "
                                            rf"Dict.from_name\('{name}', create_if_missing=True\)"):
        d.get("x")
    with pytest.raises(NotFoundError, match=f"Queue '{name}' not found"):
        modal.Queue.from_name(name).put(1)
    with pytest.raises(NotFoundError):
        modal.Dict.delete(name)
    modal.Dict.delete(name, allow_missing=True)


def test_deleted_named_objects_are_gone_for_old_handles(store):
    name = unique("deleted")
    d = modal.Dict.from_name(name, create_if_missing=True)
    d["k"] = 1
    modal.Dict.delete(name)
    with pytest.raises(NotFoundError, match="no longer exists"):
        d["k"] = 2  # not silently recreated
    fresh = modal.Dict.from_name(name, create_if_missing=True)
    assert fresh.len() == 0


# ---- Queue --------------------------------------------------------------------------------------
def test_queue_fifo_get_and_get_many(store):
    with modal.Queue.ephemeral() as q:
        q.put("first")
        q.put_many([1, 2, 3])
        assert q.len() == 4
        assert q.get() == "first"
        assert q.get_many(2) == [1, 2]
        assert q.get_many(10) == [3]  # what there is, as soon as there is something
        assert q.get(block=False) is None
        assert q.get_many(5, block=False) == []


def test_queue_blocking_get_times_out_with_queue_empty(store):
    with modal.Queue.ephemeral() as q:
        with pytest.raises(queue.Empty):
            q.get(timeout=0.2)
        with pytest.raises(queue.Empty):
            q.get_many(3, timeout=0)
        threading.Timer(0.2, q.put, args=("late",)).start()
        assert q.get(timeout=30) == "late"


def test_queue_partitions(store):
    with modal.Queue.ephemeral() as q:
        q.put(0)
        q.put_many([1, 2], partition="a")
        q.put(3, partition="b")
        assert (q.len(), q.len(partition="a"), q.len(total=True)) == (1, 2, 4)
        assert q.get(partition="b") == 3 and q.get(partition="b", block=False) is None
        q.clear(partition="a")
        assert q.len(partition="a") == 0 and q.len(total=True) == 1
        q.put(4, partition="c")
        q.clear(all=True)
        assert q.len(total=True) == 0
        for bad in ("", "x" * 65, "é" * 33, 7):
            with pytest.raises(InvalidError, match="partition"):
                q.put(1, partition=bad)
        assert q.len(partition="x" * 64) == 0
        with pytest.raises(InvalidError, match="not both"):
            q.len(partition="a", total=True)
        with pytest.raises(InvalidError, match="not both"):
            q.clear(partition="a", all=True)


def test_queue_iterate_does_not_consume(store):
    with modal.Queue.ephemeral() as q:
        q.put_many(list(range(250)))
        assert list(q.iterate()) == list(range(250))
        assert q.len() == 250
        q.clear()
        q.put("x", partition="p")
        threading.Timer(0.2, q.put, args=("y",), kwargs={"partition": "p"}).start()
        seen = []
        for value in q.iterate(partition="p", item_poll_timeout=20):
            seen.append(value)
            if len(seen) == 2:
                break
        assert seen == ["x", "y"] and q.len(partition="p") == 2


def test_queue_full_partition(store):
    with modal.Queue.ephemeral() as q:
        q.put_many(list(range(5000)))
        with pytest.raises(queue.Full):
            q.put("one more", block=False)
        with pytest.raises(queue.Full):
            q.put("one more", timeout=0.1)
        q.put("elsewhere", partition="other")  # each partition has its own room
        with pytest.raises(InvalidError, match="at most 5000"):
            q.put_many([0] * 5001, partition="third")
        assert q.get() == 0
        q.put("fits now", timeout=30)
        assert q.len() == 5000


def test_partition_ttl_clears_the_partition(store):
    with modal.Queue.ephemeral() as q:
        q.put("short", partition="p", partition_ttl=1)
        q.put("long", partition="q")
        deadline = time.monotonic() + 30
        while q.len(partition="p") and time.monotonic() < deadline:
            time.sleep(0.1)
        assert q.len(partition="p") == 0 and q.len(partition="q") == 1
        with pytest.raises(InvalidError, match="partition_ttl"):
            q.put(1, partition_ttl=0)


def test_queue_aio_and_cancelled_get_loses_nothing(store):
    async def main(q):
        await q.put.aio(1)
        await q.put_many.aio([2, 3])
        assert await q.get.aio() == 1
        assert await q.get_many.aio(5) == [2, 3]
        with pytest.raises(queue.Empty):
            await q.get.aio(timeout=0.1)
        waiting = asyncio.create_task(q.get.aio())
        await asyncio.sleep(0.2)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        await q.put.aio("after cancel")  # the cancelled get's thread may take it, then puts it back
        assert [v async for v in q.iterate.aio(item_poll_timeout=0)] in (["after cancel"], [])

    with modal.Queue.ephemeral() as q:
        asyncio.run(main(q))
        assert q.get(timeout=30) == "after cancel"


# ---- across processes ---------------------------------------------------------------------------
def test_named_objects_persist_across_processes(store):
    name = unique("persist")
    python(f"""
        import runner as modal
        modal.Dict.from_name({name!r}, create_if_missing=True)["answer"] = 42
        modal.Queue.from_name({name!r}, create_if_missing=True).put_many(["a", "b"], partition="p")
    """)
    out = python(f"""
        import runner as modal
        q = modal.Queue.from_name({name!r})
        print(modal.Dict.from_name({name!r})["answer"], q.get(partition="p"))
    """)
    assert out.split() == ["42", "a"]
    assert modal.Queue.from_name(name).get_many(5, partition="p") == ["b"]
    modal.Dict.delete(name)
    modal.Queue.delete(name)


def test_ephemeral_objects_go_with_their_owner(store):
    with modal.Dict.ephemeral({"k": "v"}) as d:
        assert d["k"] == "v"
    with pytest.raises(NotFoundError, match="no longer exists"):
        d.get("k")
    modal.Dict.from_name(unique("connect"), create_if_missing=True).len()  # this process is connected now
    out = python("""
        import base64, os, cloudpickle
        import runner as modal
        q = modal.Queue.ephemeral().__enter__()
        q.put("left behind")
        print(base64.b64encode(cloudpickle.dumps(q)).decode(), flush=True)
        os._exit(0)  # dies without leaving the context
    """)
    orphan = cloudpickle.loads(base64.b64decode(out))
    assert orphan.len() == 1  # its owner is dead, but no client has connected since
    python("import runner as modal; modal.Dict.from_name('any').name")  # a handle alone connects nothing
    assert orphan.len() == 1
    python(f"import runner as modal; modal.Dict.delete({unique('x')!r}, allow_missing=True)")  # connects: sweeps
    with pytest.raises(NotFoundError, match="no longer exists"):
        orphan.len()


def test_producer_and_consumer_in_two_processes(store):
    name = unique("pipe")
    q = modal.Queue.from_name(name, create_if_missing=True)
    producer = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import runner as modal
        q = modal.Queue.from_name({name!r})
        for i in range(300):
            q.put({{"n": i}})
        q.put(None)
    """)], stderr=subprocess.PIPE, text=True)
    try:
        received = []
        while (item := q.get(timeout=60)) is not None:
            received.append(item["n"])
        assert received == list(range(300))
    finally:
        _, err = producer.communicate(timeout=60)
    assert producer.returncode == 0, err
    modal.Queue.delete(name)


# ---- inside containers --------------------------------------------------------------------------
APP = """
import runner as modal

app = modal.App("store-app")
results = modal.Dict.from_name("{name}", create_if_missing=True)


@app.function()
def square_into(q, n):
    q.put_many([i * i for i in range(n)])
    results["by-function"] = n
    return q.len()


@app.function()
def take(q):
    return q.get(timeout=30)


@app.local_entrypoint()
def main():
    with modal.Queue.ephemeral() as q:
        print("length", square_into.remote(q, 4))
        print("values", q.get_many(10))
        q.put("from the client")
        print("took", take.remote(q))
    print("dict", results["by-function"])
"""


def test_functions_use_dict_and_queue_inside_containers(store, provider, tmp_path):
    name = unique("app")
    write(tmp_path, "store_app.py", APP.format(name=name))
    proc = run_cli(["run", "store_app.py"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    for expected in ("length 4", "values [0, 1, 4, 9]", "took from the client", "dict 4"):
        assert expected in lines, (expected, proc.stdout, proc.stderr)
    modal.Dict.delete(name)

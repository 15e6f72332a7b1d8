"""Functions and the ways to call them: `.remote`, `.local`, `.map`, `.starmap`, `.for_each`,
`.spawn`, `.spawn_map`, `.remote_gen`, each with an `.aio` variant, and `FunctionCall`.

Every call turns into `Input`s submitted to the function's pool in the running app's session;
sync callers wait on a thread-safe queue, async callers on their own event loop. Maps keep at most
`MAP_WINDOW` inputs outstanding, so a million inputs take the memory of a few thousand, and yield
in input order unless `order_outputs=False`.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import json
import os
import pathlib
import queue
import secrets
import sys
import threading
import weakref
from typing import Any, AsyncIterator, Callable, Iterable, Iterator

from . import _protocol as P
from ._aio import twin
from ._output import output
from ._resources import FunctionOptions
from ._serialization import decode_error, deserialize, serialize_args, serialize_chunk
from ._context import is_local
from ._session import LOCAL_ERR, WEB_URLS_ENV, AsyncSink, Input, QueueSink
from .exception import InvalidError, NotFoundError, OutputExpiredError, TimeoutError

MAP_WINDOW = 4096  # map items outstanding at most: what bounds a map's memory
FEED_CHUNK = 1024  # items read from the input per submit
MIN_FEED = 256  # refill the window only once this many slots are free


# ---- where the user's code lives ---------------------------------------------------------------
def _module_root(module_name: str, file: str) -> str:
    path = pathlib.Path(file).resolve()
    root = path.parent.parent if path.name == "__init__.py" else path.parent
    for _ in range(module_name.count(".")):
        root = root.parent
    return str(root)


def locate(obj: Any, serialized: bool) -> tuple[str | None, str, str | None]:
    """(module to import, qualified name, host root to make importable); module None: by value."""
    module_name = getattr(obj, "__module__", None) or "__main__"
    qualname = getattr(obj, "__qualname__", getattr(obj, "__name__", "f"))
    module = sys.modules.get(module_name)
    file = getattr(module, "__file__", None)
    if file is None:
        return None, qualname, None
    if module_name == "__main__":
        module_name = pathlib.Path(file).stem
        if not module_name.isidentifier():
            return None, qualname, _module_root("x", file)
        # The script is imported under its own name in containers; alias it here so classes and
        # exceptions defined in it come back as the very same objects.
        sys.modules.setdefault(module_name, module)
    root = _module_root(module_name, file)
    if serialized or "<locals>" in qualname:
        return None, qualname, root
    return module_name, qualname, root


class Target:
    """What one pool of containers serves: a function, or a class with its parameters."""

    def __init__(self, *, name: str, options: FunctionOptions, obj: Any, is_class: bool, params: dict | None,
                 max_inputs: int, batch_size: int, key: Any):
        self.name = name
        self.options = options
        self.image = options.image
        self.obj = obj
        self.is_class = is_class
        self.params = params or {}
        self.max_inputs = max(max_inputs, batch_size)
        self.concurrency = max_inputs
        self.key = key
        self.module, self.qualname, self.app_root = locate(obj, options.serialized)
        self.web = getattr(obj, "__runner_web__", None) if not is_class else None  # runner._web.WebSpec
        self.web_method: str | None = None  # a web endpoint on a method of a class: its name
        self.label = ""  # the web function's label, set when its app registers it

    def env(self) -> dict[str, str]:
        env = dict(self.image.env_vars()) if self.image is not None else {}
        env.update(dict(self.options.env))
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def secret_env(self) -> dict[str, str]:
        """Secret values: sent to the agent when it starts, never put in the container's config."""
        env: dict[str, str] = {}
        for secret in self.options.secrets:
            env.update(secret.env())
        return env

    def web_listen(self, provider: Any) -> tuple[str, int] | None:
        """Where the web function's server listens in its container (None: not a web function)."""
        if self.web is None:
            return None
        return provider.web_bind(self.web.port if self.web.kind == "web_server" else 0)

    def web_ports(self, provider: Any) -> tuple[int, ...]:
        """Container ports the provider must make reachable from this host."""
        listen = self.web_listen(provider)
        return (listen[1],) if listen and listen[1] else ()

    def init_message(self, provider: Any) -> tuple[dict, list[bytes]]:
        import cloudpickle

        by_value = self.module is None
        spec = {
            "name": self.name,
            "module": self.module,
            "qualname": self.qualname,
            "by_value": by_value,
            "is_class": self.is_class,
            "sys_path": [provider.container_path(self.app_root)] if self.app_root else [],
            "timeout": self.options.timeout,
            "max_inputs": self.concurrency,
            "secret_env": self.secret_env(),
            "web": None,
        }
        listen = self.web_listen(provider)
        if listen is not None:
            w = self.web
            spec["web"] = {"kind": w.kind, "method": w.method, "docs": w.docs, "port": listen[1], "host": listen[0],
                           "startup_timeout": w.startup_timeout, "root_path": f"/{self.label}",
                           "method_name": self.web_method}
        blobs = [cloudpickle.dumps(self.obj) if by_value else b"", cloudpickle.dumps(self.params)]
        return spec, blobs


# ---- outcomes ----------------------------------------------------------------------------------
def _outcome(name: str, status: str, payload: Any, tb: str | None) -> Any:
    if status == P.OK or status == P.GEN_ITEM:
        return deserialize(payload, f"the result of {name}")
    if status == LOCAL_ERR:
        raise payload
    raise decode_error(payload, tb, name)


def _outcome_or_exc(name: str, status: str, payload: Any, tb: str | None, return_exceptions: bool) -> Any:
    if not return_exceptions:
        return _outcome(name, status, payload, tb)
    try:
        return _outcome(name, status, payload, tb)
    except Exception as exc:  # noqa: BLE001 - returned to the caller as asked
        return exc


class _MapDriver:
    """The bookkeeping of one map, shared by the sync and async drivers.

    Items are numbered in input order. For plain fast functions they travel in chunks (one Input
    covering `weight` consecutive items, see `Pool.chunk_size`), otherwise one Input each. Results
    are buffered by first item number until everything before them has been yielded."""

    def __init__(self, fn: _Invocable, order_outputs: bool, return_exceptions: bool, kwargs: dict, sink: Any):
        self.fn = fn
        self.pool = fn._pool()
        self.order = order_outputs
        self.return_exceptions = return_exceptions
        self.kwargs = kwargs
        self.sink = sink
        self.next_index = 0  # items submitted
        self.next_out = 0  # items accepted (yielded, or ready to be)
        self.buffered: dict[int, tuple] = {}
        self.live: dict[str, Input] = {}
        self.exhausted = False

    def want(self) -> int:
        """How many more items to read from the input now (0: wait for results first)."""
        free = MAP_WINDOW - (self.next_index - self.next_out)
        if self.exhausted or (free < MIN_FEED and self.next_index > self.next_out):
            return 0
        return min(FEED_CHUNK, free)

    def submit(self, arg_tuples: list[tuple], short: bool) -> None:
        name, raw, method = self.fn._name, self.fn._raw, self.fn._method
        size = self.pool.chunk_size() if len(arg_tuples) > 1 else 1
        batch = []
        for at in range(0, len(arg_tuples), size):
            part = arg_tuples[at : at + size]
            if size == 1:
                inp = Input(method, serialize_args(name, raw, part[0], self.kwargs), self.sink, index=self.next_index)
            else:
                blob = serialize_chunk(name, raw, part, self.kwargs)
                inp = Input(method, blob, self.sink, index=self.next_index, kind="chunk", weight=len(part))
            self.next_index += inp.weight
            self.live[inp.id] = inp
            batch.append(inp)
        if batch:
            self.pool.submit(batch)
        if short:
            self.exhausted = True

    def _expand(self, item: tuple) -> list[Any]:
        """The results an Input stands for, in item order (exceptions raised or returned)."""
        inp, status, payload, tb = item
        name, rx = self.fn._name, self.return_exceptions
        if inp.kind != "chunk":
            return [_outcome_or_exc(name, status, payload, tb, rx)]
        if status != P.OK:  # the whole chunk failed, e.g. the app stopped
            return [_outcome_or_exc(name, status, payload, tb, rx) for _ in range(inp.weight)]
        out = []
        for outcome in deserialize(payload, f"the results of {name}"):
            if outcome[0] == 0:
                out.append(outcome[1])
            else:
                out.append(_outcome_or_exc(name, P.ERR, outcome[1], outcome[2], rx))
        return out

    def accept(self, item: tuple) -> list[Any]:
        """Results ready to yield after one delivery, in input order when asked."""
        inp = item[0]
        self.live.pop(inp.id, None)
        if not self.order:
            self.next_out += inp.weight
            return self._expand(item)
        self.buffered[inp.index] = item
        ready: list[Any] = []
        while self.next_out in self.buffered:
            head = self.buffered.pop(self.next_out)
            self.next_out += head[0].weight
            ready.extend(self._expand(head))
        return ready

    @property
    def done(self) -> bool:
        return self.exhausted and self.next_out == self.next_index

    def close(self) -> None:
        self.sink.closed = True
        for inp in list(self.live.values()):
            self.pool.cancel(inp, soft=True)


def _arg_tuples(iterables: tuple, starmap: bool) -> Iterator[tuple]:
    if starmap:
        (it,) = iterables
        return (tuple(a) for a in it)
    if not iterables:
        raise InvalidError("map needs at least one iterable of inputs")
    return zip(*iterables)


def is_generator(fn: Any) -> bool:
    """A generator function, sync or async: called with .remote_gen(), not .remote()."""
    return inspect.isgeneratorfunction(fn) or inspect.isasyncgenfunction(fn)


def container_web_url(name: str) -> str | None:
    """Inside a container: the URL of the run's web endpoint `name` ("fn" or "Cls.method")."""
    return json.loads(os.environ.get(WEB_URLS_ENV) or "{}").get(name)


class _Invocable:
    """The call API, shared by functions and methods of class instances."""

    _name: str
    _method: str | None
    _raw: Callable | None

    def _target(self) -> Target:
        raise NotImplementedError

    def _app(self):
        raise NotImplementedError

    def _pool(self):
        return self._app()._require_session(self._name).pool(self._target())

    def _is_gen(self) -> bool:
        return is_generator(self._raw)

    def _check(self, gen: bool, how: str) -> None:
        if gen and not self._is_gen():
            raise InvalidError(f"{self._name} is not a generator function: call it with .remote(), not .{how}()")
        if not gen and self._is_gen():
            raise InvalidError(f"{self._name} is a generator function: call it with .remote_gen(), not .{how}()")

    # ---- remote ----------------------------------------------------------------------------
    def _remote(self, *args, **kwargs):
        self._check(False, "remote")
        sink = QueueSink()
        self._pool().submit([Input(self._method, serialize_args(self._name, self._raw, args, kwargs), sink)])
        _, status, payload, tb = sink.q.get()
        return _outcome(self._name, status, payload, tb)

    async def _remote_aio(self, *args, **kwargs):
        self._check(False, "remote")
        sink = AsyncSink(asyncio.get_running_loop())
        inp = Input(self._method, serialize_args(self._name, self._raw, args, kwargs), sink)
        pool = self._pool()
        pool.submit([inp])
        try:
            _, status, payload, tb = await sink.q.get()
        except asyncio.CancelledError:
            pool.cancel(inp)
            raise
        return _outcome(self._name, status, payload, tb)

    remote = twin("_remote_aio")(_remote)

    # ---- generators ------------------------------------------------------------------------
    def _remote_gen(self, *args, **kwargs) -> Iterator:
        self._check(True, "remote_gen")  # here, not at the first next()
        return self._remote_gen_iter(args, kwargs)

    def _remote_gen_iter(self, args: tuple, kwargs: dict) -> Iterator:
        sink = QueueSink()
        inp = Input(self._method, serialize_args(self._name, self._raw, args, kwargs), sink, kind="gen")
        pool = self._pool()
        pool.submit([inp])
        finished = False
        try:
            while True:
                _, status, payload, tb = sink.q.get()
                if status == P.GEN_DONE:
                    finished = True
                    return
                if status != P.GEN_ITEM:
                    finished = True
                yield _outcome(self._name, status, payload, tb)
        finally:
            if not finished:
                sink.closed = True
                pool.cancel(inp)

    async def _remote_gen_aio(self, *args, **kwargs) -> AsyncIterator:
        self._check(True, "remote_gen")
        sink = AsyncSink(asyncio.get_running_loop())
        inp = Input(self._method, serialize_args(self._name, self._raw, args, kwargs), sink, kind="gen")
        pool = self._pool()
        pool.submit([inp])
        finished = False
        try:
            while True:
                _, status, payload, tb = await sink.q.get()
                if status == P.GEN_DONE:
                    finished = True
                    return
                if status != P.GEN_ITEM:
                    finished = True
                yield _outcome(self._name, status, payload, tb)
        finally:
            if not finished:
                sink.closed = True
                pool.cancel(inp)

    remote_gen = twin("_remote_gen_aio")(_remote_gen)

    # ---- map -------------------------------------------------------------------------------
    def _map(self, *iterables, order_outputs: bool = True, return_exceptions: bool = False,
             kwargs: dict | None = None, _starmap: bool = False) -> Iterator:
        self._check(False, "map")
        driver = _MapDriver(self, order_outputs, return_exceptions, kwargs or {}, QueueSink())
        args = _arg_tuples(iterables, _starmap)
        q = driver.sink.q
        with output().map_progress(self._name) as progress:
            try:
                while not driver.done:
                    want = driver.want()
                    if want > 0:
                        chunk = list(itertools.islice(args, want))
                        driver.submit(chunk, short=len(chunk) < want)
                        if driver.exhausted:
                            progress.total(driver.next_index)
                        if driver.done:
                            break
                        if driver.want() > 0:
                            try:
                                item = q.get_nowait()
                            except queue.Empty:
                                continue
                        else:
                            item = q.get()
                    else:
                        item = q.get()
                    for value in driver.accept(item):
                        progress.advance()
                        yield value
            finally:
                driver.close()

    async def _map_aio(self, *iterables, order_outputs: bool = True, return_exceptions: bool = False,
                       kwargs: dict | None = None, _starmap: bool = False) -> AsyncIterator:
        self._check(False, "map")
        driver = _MapDriver(self, order_outputs, return_exceptions, kwargs or {}, AsyncSink(asyncio.get_running_loop()))
        source = _async_args(iterables, _starmap)
        q = driver.sink.q
        try:
            while not driver.done:
                want = driver.want()
                if want > 0:
                    chunk = []
                    async for args in source:
                        chunk.append(args)
                        if len(chunk) >= want:
                            break
                    driver.submit(chunk, short=len(chunk) < want)
                    if driver.done:
                        break
                    if driver.want() > 0 and q.empty():
                        continue
                for value in driver.accept(await q.get()):
                    yield value
        finally:
            driver.close()

    map = twin("_map_aio")(_map)

    def _starmap(self, input_iterator: Iterable, *, kwargs: dict | None = None, order_outputs: bool = True,
                 return_exceptions: bool = False) -> Iterator:
        return self._map(input_iterator, kwargs=kwargs, order_outputs=order_outputs,
                         return_exceptions=return_exceptions, _starmap=True)

    def _starmap_aio(self, input_iterator, *, kwargs: dict | None = None, order_outputs: bool = True,
                     return_exceptions: bool = False) -> AsyncIterator:
        return self._map_aio(input_iterator, kwargs=kwargs, order_outputs=order_outputs,
                             return_exceptions=return_exceptions, _starmap=True)

    starmap = twin("_starmap_aio")(_starmap)

    def _for_each(self, *iterables, kwargs: dict | None = None, ignore_exceptions: bool = False) -> None:
        for _ in self._map(*iterables, kwargs=kwargs, order_outputs=False, return_exceptions=ignore_exceptions):
            pass

    async def _for_each_aio(self, *iterables, kwargs: dict | None = None, ignore_exceptions: bool = False) -> None:
        async for _ in self._map_aio(*iterables, kwargs=kwargs, order_outputs=False, return_exceptions=ignore_exceptions):
            pass

    for_each = twin("_for_each_aio")(_for_each)

    # ---- spawn -----------------------------------------------------------------------------
    def _spawn(self, *args, **kwargs) -> FunctionCall:
        self._check(False, "spawn")
        pool = self._pool()
        call = FunctionCall(self._name, pool)
        call._input = Input(self._method, serialize_args(self._name, self._raw, args, kwargs), call)
        pool.submit([call._input])
        return call

    async def _spawn_aio(self, *args, **kwargs) -> FunctionCall:
        return self._spawn(*args, **kwargs)

    spawn = twin("_spawn_aio")(_spawn)

    def _spawn_map(self, *iterables, kwargs: dict | None = None) -> None:
        self._check(False, "spawn_map")
        pool = self._pool()
        args = _arg_tuples(iterables, False)
        while True:
            chunk = list(itertools.islice(args, FEED_CHUNK))
            if not chunk:
                return
            pool.submit([Input(self._method, serialize_args(self._name, self._raw, a, kwargs or {}), _Discard())
                         for a in chunk])

    async def _spawn_map_aio(self, *iterables, kwargs: dict | None = None) -> None:
        self._spawn_map(*iterables, kwargs=kwargs)

    spawn_map = twin("_spawn_map_aio")(_spawn_map)


async def _async_args(iterables: tuple, starmap: bool):
    if any(hasattr(it, "__aiter__") for it in iterables):
        iters = [it.__aiter__() if hasattr(it, "__aiter__") else _aiter_sync(it) for it in iterables]
        while True:
            try:
                values = [await it.__anext__() for it in iters]
            except StopAsyncIteration:
                return
            yield tuple(values[0]) if starmap else tuple(values)
    else:
        for args in _arg_tuples(iterables, starmap):
            yield args


async def _aiter_sync(it):
    for x in it:
        yield x


class _Discard:
    closed = False

    def deliver(self, *_: Any) -> None:
        pass


class Function(_Invocable):
    """A function registered with `@app.function`."""

    def __init__(self, app: Any, raw: Callable, options: FunctionOptions, name: str | None = None):
        self._app_ref = app
        self._raw = raw
        self._runner_target = raw  # what the agent runs when it imports this object
        self._options = options
        self._name = name or raw.__name__
        self._method = None
        self.__doc__ = raw.__doc__
        self.__wrapped__ = raw
        self.__name__ = raw.__name__
        self.__qualname__ = raw.__qualname__
        self.__module__ = raw.__module__
        self._tgt: Target | None = None
        self._schedule: Any = None  # a Period or Cron: run by the deployed app

    def __repr__(self) -> str:
        return f"Function({self._name})"

    @property
    def object_id(self) -> str:
        return f"fu-{self._name}"

    def _app(self):
        return self._app_ref

    def _target(self) -> Target:
        if self._tgt is None:
            from ._partial import flags_of

            flags = flags_of(self._raw)
            self._tgt = Target(
                name=self._name, options=self._options, obj=self._raw, is_class=False, params=None,
                max_inputs=int(flags.get("max_inputs") or 1), batch_size=int((flags.get("batch") or (0,))[0]),
                key=("fn", id(self)),
            )
        return self._tgt

    def local(self, *args, **kwargs):
        """Run the function here, in this process."""
        return self._raw(*args, **kwargs)

    def __call__(self, *args, **kwargs):
        return self._raw(*args, **kwargs)

    def get_raw_f(self) -> Callable:
        return self._raw

    def _web_label(self) -> str | None:
        from ._web import default_label

        spec = getattr(self._raw, "__runner_web__", None)
        return None if spec is None else spec.label or default_label(self._name)

    def get_web_url(self) -> str | None:
        """The URL of a web function while its app runs (on the client or in a container); else None."""
        label = self._web_label()
        if label is None:
            raise InvalidError(f"{self._name} is not a web function: decorate it with @fastapi_endpoint(), "
                               "@asgi_app(), @wsgi_app() or @web_server(port)")
        if not is_local():
            return container_web_url(self._name)
        session = self._app_ref._session if self._app_ref is not None else None
        return session.web_url(label) if session is not None else None

    @property
    def web_url(self) -> str | None:
        return self.get_web_url()

    @staticmethod
    def from_name(app_name: str, name: str, *, environment_name: str | None = None) -> Function:
        """A function of a deployed app (`runner deploy`), callable from any process on this host.
        Looked up on first use (or `.hydrate()`): an unknown app or function raises NotFoundError."""
        from ._deployed import DeployedFunction

        _check_names(app_name, name)
        return DeployedFunction(app_name, name)


def _check_names(app_name: Any, name: Any) -> None:
    from ._home import check_name

    check_name(app_name, "app")
    if not isinstance(name, str) or not name:
        raise InvalidError(f"the object name must be a non-empty string, got {name!r}")


_CALLS: weakref.WeakValueDictionary[str, FunctionCall] = weakref.WeakValueDictionary()


class FunctionCall:
    """A handle on a spawned call: `get()` its result, `cancel()` it, or find it by `object_id`."""

    def __init__(self, name: str, pool: Any):
        self.object_id = f"fc-{secrets.token_hex(10)}"  # unique on this host: deployed calls are found by it
        self._name = name
        self._pool = pool
        self._input: Input | None = None
        self._event = threading.Event()
        self._result: tuple | None = None
        self.closed = False
        _CALLS[self.object_id] = self
        pool.session.calls[self.object_id] = self  # keeps it alive as long as its app runs

    def __repr__(self) -> str:
        return f"FunctionCall({self.object_id}, {self._name})"

    def deliver(self, inp: Input, status: str, payload: Any, tb: str | None) -> None:
        self._result = (status, payload, tb)
        self._event.set()

    def _get(self, timeout: float | None = None) -> Any:
        if not self._event.wait(timeout):
            raise TimeoutError(f"{self.object_id} ({self._name}) did not finish within {timeout:g}s")
        return _outcome(self._name, *self._result)

    async def _get_aio(self, timeout: float | None = None) -> Any:
        loop = asyncio.get_running_loop()
        if not self._event.is_set():
            await loop.run_in_executor(None, self._event.wait, timeout)
        if not self._event.is_set():
            raise TimeoutError(f"{self.object_id} ({self._name}) did not finish within {timeout:g}s")
        return _outcome(self._name, *self._result)

    get = twin("_get_aio")(_get)

    def _cancel(self, terminate_containers: bool = False) -> None:
        if self._input is not None and not self._event.is_set():
            self._pool.cancel(self._input)

    async def _cancel_aio(self, terminate_containers: bool = False) -> None:
        self._cancel(terminate_containers)

    cancel = twin("_cancel_aio")(_cancel)

    @staticmethod
    def from_id(function_call_id: str) -> FunctionCall:
        call = _CALLS.get(function_call_id)
        if call is None:
            from ._deployed import find_call

            found = find_call(function_call_id)
            if found is None and os.environ.get("RUNNER_PROVIDER") == "kubernetes":
                from ._plane import find_call as find_queued
                from ._providers._kubernetes import cluster

                found = find_queued(function_call_id, cluster().queue_url())  # any machine that reaches the queue
            if found is not None:
                return found
            raise NotFoundError(f"no function call {function_call_id!r} in this app run or any deployed app")
        if call._pool.session.closed and not call._event.is_set():
            raise OutputExpiredError(f"{function_call_id}: its app stopped before it finished")
        return call

    @staticmethod
    def gather(*calls: FunctionCall) -> list[Any]:
        """Wait for every call; return their results in order, or raise the first error."""
        for call in calls:
            if not isinstance(call, FunctionCall):
                raise InvalidError(f"gather takes FunctionCall objects, got {type(call).__name__}")
            call._event.wait()
        return [call._get(0) for call in calls]

    @staticmethod
    async def _gather_aio(*calls: FunctionCall) -> list[Any]:
        return list(await asyncio.gather(*(c._get_aio() for c in calls)))


FunctionCall.gather.aio = FunctionCall._gather_aio  # type: ignore[attr-defined]

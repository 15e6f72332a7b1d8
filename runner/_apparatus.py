"""The Apparatus: run plain functions remotely, without decorators or an app of your own.

    with runner.Apparatus(project=".", gpu="T4") as ap:
        ap.run(train, config)              # one call
        ap.map(score, items)               # a list, in input order
        await ap.arun(train, config)       # the same, from async code

It holds an internal `App`: the first call starts it on its provider and registers the function,
later calls reuse its warm containers, and `close()` (the `with` block's end, or interpreter exit)
stops everything. Nothing is built until the first call: constructing an Apparatus or reading its
attributes never touches a provider.

A function defined at module level in an importable module is imported by module and name in the
container, as `@app.function` functions are; one defined in `__main__`, inside another function,
or otherwise not found again by its module and name (lambdas, bound methods) is shipped by value.
"""

from __future__ import annotations

import atexit
import contextlib
import inspect
import os
import sys
import threading
from typing import Any, Callable, Iterable

from ._image import Image
from ._resources import FunctionOptions
from .exception import InvalidError


def _by_value(fn: Callable) -> bool:
    """Whether the container cannot import `fn` by its module and qualified name."""
    module = sys.modules.get(getattr(fn, "__module__", None) or "")
    if module is None or module.__name__ == "__main__" or getattr(module, "__file__", None) is None:
        return True
    obj: Any = module
    for part in getattr(fn, "__qualname__", "").split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return True
    return obj is not fn


class Apparatus:
    """Remote execution for plain functions: `Apparatus(gpu="T4").run(fn, *args)`."""

    def __init__(self, image: Image | None = None, *, gpu: Any = None, cpu: Any = None, memory: Any = None,
                 timeout: float | None = None, retries: Any = None, provider: str | None = None,
                 project: str | os.PathLike | None = None):
        if image is not None and not isinstance(image, Image):
            raise InvalidError(f"Apparatus(image=...) takes a runner.Image, got {type(image).__name__}")
        if image is not None and project is not None:
            raise InvalidError("Apparatus takes image= or project=, not both (project=path means Image.from_project(path))")
        if project is not None and not isinstance(project, (str, os.PathLike)):
            raise InvalidError(f"Apparatus(project=...) takes the path of a uv project, got {type(project).__name__}")
        if provider is not None and not isinstance(provider, str):
            raise InvalidError(f"Apparatus(provider=...) takes a provider name such as 'docker', got {provider!r}")
        given = {"gpu": gpu, "cpu": cpu, "memory": memory, "timeout": timeout, "retries": retries}
        self._options = {k: v for k, v in given.items() if v is not None}
        FunctionOptions.build(**self._options)  # a bad value fails here, not at the first call
        self.provider = provider
        self.project = os.path.abspath(os.fspath(project)) if project is not None else None
        self._image = image
        self._lock = threading.RLock()
        self._app: Any = None
        self._stack: contextlib.ExitStack | None = None
        self._functions: dict[Any, Any] = {}

    def __repr__(self) -> str:
        state = "running" if self._stack is not None else "idle"
        what = f"project={self.project!r}" if self.project else f"image={self._image!r}"
        return f"Apparatus({what}, {state})"

    # ---- options, read without building anything ---------------------------------------------
    @property
    def image(self) -> Image | None:
        """The image functions run on (for `project=`, `Image.from_project(project)`: read, not built)."""
        if self._image is None and self.project is not None:
            self._image = Image.from_project(self.project)
        return self._image

    @property
    def gpu(self) -> Any:
        return self._options.get("gpu")

    @property
    def cpu(self) -> Any:
        return self._options.get("cpu")

    @property
    def memory(self) -> Any:
        return self._options.get("memory")

    @property
    def timeout(self) -> float | None:
        return self._options.get("timeout")

    @property
    def retries(self) -> Any:
        return self._options.get("retries")

    @property
    def running(self) -> bool:
        return self._stack is not None

    # ---- the app behind it --------------------------------------------------------------------
    def _function(self, fn: Callable, how: str):
        from ._cls import Cls
        from ._function import Function

        if isinstance(fn, (Function, Cls)):
            raise InvalidError(
                f"Apparatus.{how} takes plain functions; {fn!r} is registered with an App already: "
                "call it with .remote() inside that app's `with app.run():`"
            )
        if not (inspect.isfunction(fn) or inspect.ismethod(fn)):
            raise InvalidError(f"Apparatus.{how} takes a function, got {type(fn).__name__}")
        if inspect.isgeneratorfunction(fn) or inspect.isasyncgenfunction(fn):
            raise InvalidError(f"Apparatus.{how} does not take generator functions ({fn.__qualname__}): return a list")
        key = (id(fn.__self__), fn.__func__) if inspect.ismethod(fn) else fn  # instances may be unhashable
        with self._lock:
            f = self._functions.get(key)
            if f is None:
                from ._app import App

                if self._app is None:
                    self._app = App("apparatus")
                name, n = fn.__name__, 1
                while name in self._app._functions:
                    n += 1
                    name = f"{fn.__name__}-{n}"
                f = self._app.function(image=self.image, name=name, serialized=_by_value(fn), **self._options)(fn)
                self._functions[key] = f
            if self._stack is None:  # the first call: bring the app up (the function is validated)
                stack = contextlib.ExitStack()
                stack.enter_context(self._app.run(provider=self.provider))
                self._stack = stack
                atexit.register(self.close)
        return f

    def close(self) -> None:
        """Stop every container this Apparatus started. A later call starts afresh."""
        with self._lock:
            stack, self._stack = self._stack, None
            self._app, self._functions = None, {}
        if stack is None:
            return
        atexit.unregister(self.close)
        try:
            stack.close()
        except ValueError:
            # app.run restores its SIGTERM handler on the way out, which only the main thread can do.
            if threading.current_thread() is threading.main_thread():
                raise

    def __enter__(self) -> Apparatus:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> Apparatus:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    # ---- calls ------------------------------------------------------------------------------
    def run(self, fn: Callable, *args: Any, **kwargs: Any) -> Any:
        """`fn(*args, **kwargs)` in a container; its result, or its exception raised here."""
        return self._function(fn, "run").remote(*args, **kwargs)

    def map(self, fn: Callable, items: Iterable, *more_items: Iterable, kwargs: dict | None = None,
            return_exceptions: bool = False) -> list:
        """`[fn(x) for x in items]` (or `fn(x, y)` over zipped iterables) across containers, in order."""
        return list(self._function(fn, "map").map(items, *more_items, kwargs=kwargs,
                                                  return_exceptions=return_exceptions))

    async def arun(self, fn: Callable, *args: Any, **kwargs: Any) -> Any:
        return await self._function(fn, "arun").remote.aio(*args, **kwargs)

    async def amap(self, fn: Callable, items: Iterable, *more_items: Iterable, kwargs: dict | None = None,
                   return_exceptions: bool = False) -> list:
        f = self._function(fn, "amap")
        return [x async for x in f.map.aio(items, *more_items, kwargs=kwargs, return_exceptions=return_exceptions)]

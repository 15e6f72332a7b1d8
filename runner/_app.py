"""App: the registry of functions, classes and entrypoints, and `app.run()` which brings up a
session on a provider and takes everything down again on the way out, whatever the way out."""

from __future__ import annotations

import contextlib
import functools
import inspect
import signal
import threading
from typing import Any, Callable

from ._cls import Cls
from ._context import is_local
from ._function import Function
from ._image import Image, local_python
from ._output import output, whole_lines
from ._resources import FunctionOptions
from .exception import ExecutionError, InvalidError, VersionError

_OPTIONS = (
    "image", "gpu", "cpu", "memory", "timeout", "retries", "secrets", "volumes", "env", "min_containers",
    "max_containers", "buffer_containers", "scaledown_window", "serialized", "name", "schedule",
)


class LocalEntrypoint:
    """A function marked `@app.local_entrypoint()`: runs on the client, inside `app.run()`."""

    def __init__(self, app: App, fn: Callable, name: str):
        self.app = app
        self.raw = fn
        self.name = name
        self.__doc__ = fn.__doc__

    def __call__(self, *args, **kwargs):
        return self.raw(*args, **kwargs)

    def __repr__(self) -> str:
        return f"LocalEntrypoint({self.name})"


class App:
    """`app = runner.App("name", image=..., secrets=[...])`, then decorate functions and classes."""

    def __init__(self, name: str | None = None, *, image: Image | None = None, secrets: list | tuple = (),
                 volumes: dict | None = None, include_source: bool | None = None, description: str | None = None):
        if name is not None and not isinstance(name, str):
            raise InvalidError(f"App name must be a string, got {type(name).__name__}")
        self.name = name
        self.description = description
        self._defaults = FunctionOptions.build(image=image, secrets=list(secrets), volumes=volumes)
        self._functions: dict[str, Function] = {}
        self._classes: dict[str, Cls] = {}
        self._entrypoints: dict[str, LocalEntrypoint] = {}
        self._session = None
        self._door_port = 0  # the front door's port for the next run (runner serve keeps it across reloads)
        self._door_socket = None  # or its listening socket (runner deploy hands it to the next version)
        self._deployed_id: str | None = None  # set by App.lookup
        self._hold_door = False  # runner deploy opens the front door itself, once the version is warm
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"App({self.name!r})"

    @property
    def image(self) -> Image | None:
        return self._defaults.image

    @property
    def app_id(self) -> str | None:
        return self._session.id if self._session else self._deployed_id

    @property
    def registered_functions(self) -> dict[str, Function]:
        return dict(self._functions)

    @property
    def registered_classes(self) -> dict[str, Cls]:
        return dict(self._classes)

    @property
    def registered_entrypoints(self) -> dict[str, LocalEntrypoint]:
        return dict(self._entrypoints)

    # ---- decorators ------------------------------------------------------------------------
    def _options(self, what: str, kwargs: dict) -> FunctionOptions:
        unknown = sorted(set(kwargs) - set(_OPTIONS))
        if unknown:
            raise InvalidError(f"app.{what}() got unknown option(s) {', '.join(unknown)}; it takes {', '.join(_OPTIONS)}")
        opts = {k: v for k, v in kwargs.items() if k not in ("name", "schedule")}
        d = self._defaults
        opts["image"] = opts.get("image") or d.image or Image.debian_slim()
        opts["secrets"] = list(d.secrets) + list(opts.get("secrets") or ())
        if d.volumes and isinstance(opts.get("volumes") or {}, dict):
            opts["volumes"] = {**dict(d.volumes), **(opts.get("volumes") or {})}
        return FunctionOptions.build(**opts)

    def function(self, _fn: Callable | None = None, **kwargs: Any):
        """Register a function to run in containers: `@app.function(gpu="H100", timeout=600)`."""
        options = self._options("function", kwargs)

        def deco(fn: Callable) -> Function:
            if isinstance(fn, (Function, Cls)):
                raise InvalidError(f"{fn!r} is registered already")
            if inspect.isclass(fn):
                raise InvalidError(f"{fn.__name__} is a class: register it with @app.cls()")
            if not callable(fn):
                raise InvalidError(f"@app.function() decorates functions, got {type(fn).__name__}")
            name = kwargs.get("name") or fn.__name__
            self._check_free(name)
            f = Function(self, fn, options, name=name)
            f._schedule = _check_schedule(name, kwargs.get("schedule"), f)
            label = f._web_label()
            if label is not None:
                self._check_label(name, label)
            self._functions[name] = f
            return f

        return deco(_fn) if _fn is not None else deco

    def cls(self, _cls: type | None = None, **kwargs: Any):
        """Register a class whose @method functions run in containers."""
        if kwargs.get("schedule") is not None:
            raise InvalidError("app.cls() takes no schedule=; "
                               "put the schedule on an @app.function() that calls the class")
        options = self._options("cls", kwargs)

        def deco(user_cls: type) -> Cls:
            if not inspect.isclass(user_cls):
                raise InvalidError(f"@app.cls() decorates classes, got {type(user_cls).__name__}")
            name = kwargs.get("name") or user_cls.__name__
            self._check_free(name)
            c = Cls(self, user_cls, options)
            for method in c._web_methods:
                self._check_label(f"{name}.{method}", c._web_label(method))
            self._classes[name] = c
            return c

        return deco(_cls) if _cls is not None else deco

    def local_entrypoint(self, _fn: Callable | None = None, *, name: str | None = None):
        """Mark the function `runner run` calls on the client."""

        def deco(fn: Callable) -> LocalEntrypoint:
            ep_name = name or fn.__name__
            self._check_free(ep_name)
            ep = LocalEntrypoint(self, fn, ep_name)
            self._entrypoints[ep_name] = ep
            return ep

        return deco(_fn) if _fn is not None else deco

    def _web(self) -> list[tuple[str, str, Callable[[], Any]]]:
        """(name, label, its target's maker) of every web endpoint: web functions ("fn"), then web
        methods of classes ("Cls.method"). Targets are made only when a run serves them."""
        out = [(n, label, f._target) for n, f in self._functions.items() if (label := f._web_label())]
        for cname, c in self._classes.items():
            out += [(f"{cname}.{m}", c._web_label(m), functools.partial(c._web_target, m)) for m in c._web_methods]
        return out

    def _web_labels(self) -> list[tuple[str, str]]:
        return [(name, label) for name, label, _ in self._web()]

    def _web_endpoints(self) -> list[tuple[str, Any, str]]:
        """(name, target, label) of every web endpoint, for a run to serve."""
        return [(name, make(), label) for name, label, make in self._web()]

    def _web_urls(self) -> dict[str, str | None]:
        """The URL of every web endpoint while the app runs, by name ("fn" or "Cls.method")."""
        session = self._session
        return {n: session.web_url(label) if session else None for n, label in self._web_labels()}

    def _check_label(self, name: str, label: str) -> None:
        taken = [n for n, other in self._web_labels() if other == label]
        if taken:
            raise InvalidError(f"web endpoints {taken[0]} and {name} both have the label {label!r}; "
                               "give one of them another with label=")

    def _check_free(self, name: str) -> None:
        if name in self._functions or name in self._classes or name in self._entrypoints:
            raise InvalidError(f"app {self.name or ''} has two objects named {name!r}; rename one (or pass name=)")

    def include(self, other: App) -> App:
        for name, f in other._functions.items():
            self._functions.setdefault(name, f)
        for name, c in other._classes.items():
            self._classes.setdefault(name, c)
        return self

    @staticmethod
    def lookup(name: str, *, create_if_missing: bool = False, environment_name: str | None = None) -> App:
        """The deployed app named `name` (`runner deploy`), e.g. to create sandboxes in; with
        `create_if_missing=True` an app that was never deployed is created empty."""
        from ._deploy import unknown_app
        from ._deployed import apps
        from ._home import check_name

        check_name(name, "app")
        state = apps().read_state(name)
        if state is None:
            if not create_if_missing:
                raise unknown_app(name)
            state = apps().create_empty(name)
        app = App(name)
        app._deployed_id = state["id"]
        return app

    # ---- running ---------------------------------------------------------------------------
    def _targets(self) -> list[tuple[str, FunctionOptions]]:
        return [(n, f._options) for n, f in self._functions.items()] + [(n, c._options) for n, c in self._classes.items()]

    def _validate(self, provider: Any) -> None:
        """Everything that can be known wrong before a container starts."""
        skipped = []
        for name, opts in self._targets():
            image = opts.image
            if image is not None and image.python_version and image.python_version != local_python():
                raise VersionError(
                    f"{name}: its image has Python {image.python_version} but this client runs Python "
                    f"{local_python()}; they must match (use Image.debian_slim(python_version='{local_python()}') "
                    f"or run runner under Python {image.python_version})"
                )
            provider.validate(image, opts.gpu, opts.cpu, opts.memory, name)
            for _, volume in opts.volumes:
                volume._host_dir()  # an unknown volume fails now, before anything starts
            if provider.name == "embedded" and image is not None and any(s.kind != "env" for s in image.steps):
                skipped.append(name)
        if skipped:
            output().notice(
                f"runner: embedded mode does not apply image build steps ({', '.join(skipped)}); "
                "functions run in this Python environment. Use --provider docker to build images."
            )

    @contextlib.contextmanager
    def run(self, *, provider: str | None = None, detach: bool = False):
        """Bring the app up on a provider; on the way out stop every container it started."""
        from ._providers import choose
        from ._session import Session

        if not is_local():
            # Inside a container the module is imported to find functions; an unguarded
            # `with app.run():` at module level must not start containers from containers.
            yield self
            return
        with self._lock:
            if self._session is not None:
                raise InvalidError(f"app {self.name or ''} is running already")
            prov = choose(provider)
            try:
                self._validate(prov)
            except BaseException:
                prov.close()
                raise
            self._session = Session(self.name or "ephemeral", prov)
            web = self._web_endpoints()
            for _, target, label in web:
                target.label = label
            try:
                self._session.serve_web(web, port=self._door_port, sock=self._door_socket, hold=self._hold_door)
            except BaseException:
                session, self._session = self._session, None
                session.close()
                raise
        output().status(f"app {self.name or ''} running on the {prov.name} provider ({self._session.id})")
        self._start_warm(self._session)
        restore = _sigterm_as_exit()
        try:
            with whole_lines():
                try:
                    yield self
                finally:
                    session, self._session = self._session, None
                    session.close()
        finally:
            restore()

    def _start_warm(self, session: Any) -> None:
        """Start the `min_containers` of every function as the app starts, as on Modal, in the
        background: a function that cannot start says so at its first call instead. On a cluster
        every function's objects are made then (its image built and pushed, its Deployment applied
        at `min_containers`), as Modal creates an app's functions when it starts, so a first call
        only queues its input."""
        def start(target: Any) -> None:
            try:
                session.pool(target)
            except Exception:  # noqa: BLE001 - raised again, to the caller, at the first call
                pass

        every = hasattr(session.provider, "queue_pool")
        for f in self._functions.values():
            if (every or f._options.min_containers) and f._web_label() is None:
                threading.Thread(target=start, args=(f._target(),), name="runner-warm", daemon=True).start()

    def _require_session(self, fn_name: str):
        session = self._session
        if session is None:
            if not is_local():
                raise ExecutionError(f"{fn_name}: calling another function from inside a container is not supported yet")
            raise ExecutionError(
                f"{fn_name} needs a running app: call it inside `with app.run():`, or run the file with `runner run`"
            )
        return session


def _check_schedule(name: str, schedule: Any, f: Function) -> Any:
    from ._schedule import Cron, Period

    if schedule is None:
        return None
    if not isinstance(schedule, (Cron, Period)):
        raise InvalidError(f"{name}: schedule= takes modal.Period(...) or modal.Cron('...'), "
                           f"got {type(schedule).__name__}")
    if f._web_label() is not None or f._is_gen():
        raise InvalidError(f"{name}: a schedule runs a plain function; web and generator functions cannot have one")
    required = [p.name for p in inspect.signature(f._raw).parameters.values()
                if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    if required:
        raise InvalidError(f"{name}: a scheduled function is called with no arguments, but it requires "
                           f"{', '.join(required)}; give them defaults")
    return schedule


def _sigterm_as_exit() -> Callable[[], None]:
    """Let SIGTERM unwind the stack like Ctrl-C does, so the app's containers get stopped."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def handler(signum, frame):
        raise SystemExit(128 + signum)

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except (ValueError, OSError):
        return lambda: None
    return lambda: signal.signal(signal.SIGTERM, previous)

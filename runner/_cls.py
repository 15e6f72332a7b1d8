"""Classes registered with `@app.cls`: `Greeter(greeting="hi").greet.remote("x")`.

Each set of parameter values gets its own pool of containers; a container creates the instance
once, runs its `@enter` hooks, serves method calls, and runs `@exit` hooks when it stops.
"""

from __future__ import annotations

import inspect
from typing import Any

from ._function import Target, _Invocable
from ._partial import class_parameters, flags_of
from ._resources import FunctionOptions
from .exception import InvalidError

_PARAM_TYPES = (str, int, bool, bytes, float)


class Cls:
    """The registered class. Call it with parameters to get an instance handle."""

    def __init__(self, app: Any, user_cls: type, options: FunctionOptions):
        self._app_ref = app
        self._user_cls = user_cls
        self._runner_target = user_cls
        self._options = options
        self._params = class_parameters(user_cls)
        self._methods = {
            name: fn for name, fn in inspect.getmembers(user_cls, callable) if flags_of(fn).get("method")
        }
        # Web endpoints on methods (`@modal.asgi_app()` etc.): each served from containers of its own,
        # which create the instance with its default parameters and run its @enter hooks first.
        self._web_methods = {name: fn for name, fn in inspect.getmembers(user_cls, callable)
                             if getattr(fn, "__runner_web__", None) is not None}
        self._web_targets: dict[str, Target] = {}
        self.__name__ = user_cls.__name__
        self.__qualname__ = user_cls.__qualname__
        self.__module__ = user_cls.__module__
        self.__doc__ = user_cls.__doc__
        annotations = {}
        for klass in reversed(user_cls.__mro__):
            annotations.update(getattr(klass, "__annotations__", {}))
        self._types = {name: annotations.get(name) for name in self._params}

    def __repr__(self) -> str:
        return f"Cls({self.__name__})"

    def __call__(self, *args, **kwargs) -> Obj:
        if args:
            raise InvalidError(f"{self.__name__}(...) takes parameters by keyword only, e.g. {self.__name__}(name=value)")
        unknown = sorted(set(kwargs) - set(self._params))
        if unknown:
            known = ", ".join(self._params) or "none"
            raise InvalidError(f"{self.__name__} has no parameter {', '.join(unknown)} (its parameters: {known})")
        values = {}
        for name, decl in self._params.items():
            if name in kwargs:
                value = kwargs[name]
            elif not decl.required:
                value = decl.default
            else:
                raise InvalidError(f"{self.__name__} needs parameter {name!r}")
            want = self._types.get(name)
            want = want if isinstance(want, type) else _type_from_str(want)
            if want in _PARAM_TYPES and value is not None and not _type_ok(value, want):
                raise InvalidError(f"{self.__name__} parameter {name!r} must be {want.__name__}, got {type(value).__name__}")
            values[name] = value
        return Obj(self, values)

    def _web_label(self, method: str) -> str:
        from ._web import default_label

        spec = self._web_methods[method].__runner_web__
        return spec.label or default_label(f"{self.__name__}-{method}")

    def _web_target(self, method: str) -> Target:
        """The containers serving the web endpoint on `method`."""
        target = self._web_targets.get(method)
        if target is None:
            flags = flags_of(self._user_cls)
            target = Target(name=f"{self.__name__}.{method}", options=self._options, obj=self._user_cls,
                            is_class=True, params={}, max_inputs=int(flags.get("max_inputs") or 1), batch_size=0,
                            key=("cls-web", id(self), method))
            target.web, target.web_method = self._web_methods[method].__runner_web__, method
            target.label = self._web_label(method)
            self._web_targets[method] = target
        return target

    @staticmethod
    def from_name(app_name: str, name: str, *, environment_name: str | None = None) -> Any:
        """A class of a deployed app (`runner deploy`): `Cls.from_name("app", "Model")(size=2).run.remote(x)`.
        Looked up on first use (or `.hydrate()`): an unknown app or class raises NotFoundError."""
        from ._deployed import DeployedCls
        from ._function import _check_names

        _check_names(app_name, name)
        return DeployedCls(app_name, name)

    def with_options(self, **options: Any) -> Cls:
        """The same class with some options replaced: gpu, cpu, memory, timeout, retries, ..."""
        allowed = {"gpu", "cpu", "memory", "timeout", "retries", "secrets", "env", "min_containers",
                   "max_containers", "buffer_containers", "scaledown_window", "image", "volumes"}
        unknown = sorted(set(options) - allowed)
        if unknown:
            raise InvalidError(f"with_options() got unknown option(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}")
        merged = {f: getattr(self._options, f) for f in ("image", "timeout", "min_containers", "max_containers",
                                                          "buffer_containers", "scaledown_window", "serialized")}
        merged.update(secrets=list(self._options.secrets), env=dict(self._options.env), retries=self._options.retries,
                      volumes=dict(self._options.volumes))
        base = FunctionOptions.build(**{**merged, **options})
        keep = {k: getattr(self._options, k) for k in ("gpu", "cpu", "memory") if k not in options}
        return Cls(self._app_ref, self._user_cls, base.replace(**keep))


def _type_from_str(name: Any) -> Any:
    return {t.__name__: t for t in _PARAM_TYPES}.get(name) if isinstance(name, str) else None


def _type_ok(value: Any, want: type) -> bool:
    if want is bool:
        return isinstance(value, bool)
    if want is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if want is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, want)


class Obj:
    """An instance handle: its methods are called remotely on containers built with its parameters."""

    def __init__(self, cls: Cls, params: dict):
        self._cls = cls
        self._param_values = params
        self._tgt: Target | None = None
        self._local: Any = None

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self._param_values.items())
        return f"{self._cls.__name__}({args})"

    def __getattr__(self, name: str) -> Method:
        if name.startswith("_"):
            raise AttributeError(name)
        if name in self._cls._web_methods and name not in self._cls._methods:
            return WebMethod(self._cls, name)
        if name not in self._cls._methods:
            raise AttributeError(f"{self._cls.__name__} has no @method {name!r}")
        return Method(self, name)

    def _target(self) -> Target:
        if self._tgt is None:
            cls = self._cls
            flags = flags_of(cls._user_cls)
            batch = max([(flags_of(m).get("batch") or (0,))[0] for m in cls._methods.values()] or [0])
            self._tgt = Target(
                name=repr(self), options=cls._options, obj=cls._user_cls, is_class=True, params=self._param_values,
                max_inputs=int(flags.get("max_inputs") or 1), batch_size=int(batch),
                key=("cls", id(cls), tuple(sorted(self._param_values.items(), key=lambda kv: kv[0]))),
            )
        return self._tgt

    def _local_instance(self) -> Any:
        """An instance in this process, with @enter hooks run once, for `.local()` calls."""
        if self._local is None:
            user_cls = self._cls._user_cls
            if self._cls._params:
                inst = user_cls.__new__(user_cls)
                for k, v in self._param_values.items():
                    setattr(inst, k, v)
            else:
                inst = user_cls()
            hooks = [m for _, m in inspect.getmembers(user_cls, callable) if flags_of(m).get("enter")]
            for hook in sorted(hooks, key=lambda m: (not flags_of(m).get("snap"), m.__code__.co_firstlineno)):
                getattr(inst, hook.__name__)()
            self._local = inst
        return self._local


class WebMethod:
    """`obj.method` for a web endpoint on a class: reached over HTTP, at `get_web_url()`."""

    def __init__(self, cls: Cls, name: str):
        self._cls, self._method = cls, name

    def get_web_url(self) -> str | None:
        from ._context import is_local
        from ._function import container_web_url

        if not is_local():
            return container_web_url(f"{self._cls.__name__}.{self._method}")
        session = self._cls._app_ref._session if self._cls._app_ref is not None else None
        return session.web_url(self._cls._web_label(self._method)) if session is not None else None

    @property
    def web_url(self) -> str | None:
        return self.get_web_url()

    def remote(self, *args, **kwargs):
        raise InvalidError(f"{self._cls.__name__}.{self._method} is a web endpoint: send it HTTP requests at "
                           f"{self.get_web_url()}")


class Method(_Invocable):
    """`obj.method`: call it with `.remote`, `.map`, `.spawn`, ... or `.local`."""

    def __init__(self, obj: Obj, name: str):
        self._obj = obj
        self._method = name
        self._raw = obj._cls._methods[name]
        self._name = f"{obj!r}.{name}"

    def _app(self):
        return self._obj._cls._app_ref

    def _target(self) -> Target:
        return self._obj._target()

    def local(self, *args, **kwargs):
        return getattr(self._obj._local_instance(), self._method)(*args, **kwargs)

"""Web decorators: `@fastapi_endpoint`, `@asgi_app`, `@wsgi_app`, `@web_server`, with Modal's names.

They go below `@app.function()` (or on a method of an `@app.cls` class) and only attach a
`WebSpec` to the function, returning the function itself: the app sees a plain function that
carries its spec, and the container's agent reads the spec to serve the function over HTTP
(`runner._web_serve`). So this module is standard library only, like the other decorators.

Every argument is checked here, at decoration time, so a wrong method or label fails where it is
written rather than when a container starts. `custom_domains` and `requires_proxy_auth` are part
of Modal's signatures but have no local meaning (there is no public domain, nor Modal's proxy),
so asking for them is an error, not a silent no-op.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
from collections.abc import Callable, Iterable
from typing import Any

from .exception import InvalidError

__all__ = ["WebSpec", "asgi_app", "default_label", "fastapi_endpoint", "web_endpoint", "web_server", "wsgi_app"]

ATTR = "__runner_web__"
KINDS = ("fastapi_endpoint", "asgi_app", "wsgi_app", "web_server")
METHODS = ("GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS")
LABEL_RE = re.compile(r"^[a-z0-9-]{1,63}$")


@dataclasses.dataclass(frozen=True)
class WebSpec:
    """How a function is served over HTTP; the agent gets it in the container's INIT spec."""

    kind: str  # one of KINDS
    method: str | None = None  # fastapi_endpoint only
    label: str | None = None  # None: default_label(function name)
    docs: bool = False  # fastapi_endpoint only: keep /docs and /openapi.json
    port: int | None = None  # web_server only: where the user's server listens
    startup_timeout: float | None = None  # web_server only


def spec_of(fn: Any) -> WebSpec | None:
    """The WebSpec a function was decorated with, or None for a plain function."""
    return getattr(fn, ATTR, None)


def default_label(fn_name: str) -> str:
    """Modal's default label: the function name, lowercase, '_' as '-', other characters dropped."""
    label = re.sub(r"[^a-z0-9-]", "", fn_name.lower().replace("_", "-"))[:63]
    if not label:
        raise InvalidError(f"cannot make a web label from the name {fn_name!r}; pass label='my-endpoint'")
    return label


def check_label(label: Any) -> str:
    if not isinstance(label, str) or not LABEL_RE.match(label):
        raise InvalidError(
            f"invalid web label {label!r}: use 1 to 63 lowercase letters, digits or '-' (e.g. label='my-api')"
        )
    return label


def _check_common(decorator: str, label: Any, custom_domains: Iterable[str] | None, requires_proxy_auth: bool) -> None:
    if label is not None:
        check_label(label)
    if custom_domains is not None:
        raise InvalidError(
            f"{decorator}(custom_domains=...) is not available locally: endpoints are served on 127.0.0.1 "
            "through runner's front door; remove custom_domains"
        )
    if requires_proxy_auth:
        raise InvalidError(
            f"{decorator}(requires_proxy_auth=True) is not available locally: there is no Modal proxy to check "
            "Modal-Key/Modal-Secret headers; remove it, or check a header of your own in the endpoint"
        )


_FACTORY_DOES = {
    "asgi_app": "return the ASGI app",
    "wsgi_app": "return the WSGI app",
    "web_server": "start a server listening on the port",
}


def _decorator(decorator: str, spec: WebSpec, factory: bool) -> Callable[[Callable], Callable]:
    """The decorator that attaches `spec`; `factory` kinds are called with no arguments to build the app."""

    def attach(fn: Callable) -> Callable:
        if hasattr(fn, "_runner_target"):
            raise InvalidError(f"@{decorator} must be applied below @app.function(), not above it")
        if inspect.isclass(fn) or not callable(fn):
            raise InvalidError(f"@{decorator} decorates a function or a method, not {fn!r}")
        if spec_of(fn) is not None:
            raise InvalidError(f"{fn.__name__} already has a web decorator (@{spec_of(fn).kind}); use only one")
        if factory and (inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn)):
            raise InvalidError(
                f"@{decorator} functions must be plain (not async) functions that {_FACTORY_DOES[spec.kind]}; "
                f"make {fn.__name__} a def"
            )
        setattr(fn, ATTR, spec)
        return fn

    return attach


def fastapi_endpoint(*, method: str = "GET", label: str | None = None, docs: bool = False,
                     custom_domains: Iterable[str] | None = None, requires_proxy_auth: bool = False):
    """Serve the function as a single FastAPI route at "/" for `method`; query parameters and JSON
    bodies become its arguments. The image needs `fastapi[standard]`."""
    if not isinstance(method, str) or method.upper() not in METHODS:
        raise InvalidError(f"fastapi_endpoint(method={method!r}) is not an HTTP method: use one of {', '.join(METHODS)}")
    _check_common("fastapi_endpoint", label, custom_domains, requires_proxy_auth)
    spec = WebSpec("fastapi_endpoint", method=method.upper(), label=label, docs=bool(docs))
    return _decorator("fastapi_endpoint", spec, factory=False)


def web_endpoint(*, method: str = "GET", label: str | None = None, docs: bool = False,
                 custom_domains: Iterable[str] | None = None, requires_proxy_auth: bool = False):
    """Modal's older name for `fastapi_endpoint`."""
    return fastapi_endpoint(method=method, label=label, docs=docs, custom_domains=custom_domains,
                            requires_proxy_auth=requires_proxy_auth)


def asgi_app(*, label: str | None = None, custom_domains: Iterable[str] | None = None,
             requires_proxy_auth: bool = False):
    """The function takes no arguments and returns an ASGI app (FastAPI, Starlette, ...), built once
    per container and served for every request."""
    _check_common("asgi_app", label, custom_domains, requires_proxy_auth)
    return _decorator("asgi_app", WebSpec("asgi_app", label=label), factory=True)


def wsgi_app(*, label: str | None = None, custom_domains: Iterable[str] | None = None,
             requires_proxy_auth: bool = False):
    """The function takes no arguments and returns a WSGI app (Flask, Django, ...)."""
    _check_common("wsgi_app", label, custom_domains, requires_proxy_auth)
    return _decorator("wsgi_app", WebSpec("wsgi_app", label=label), factory=True)


def web_server(port: int, *, startup_timeout: float = 5.0, label: str | None = None,
               custom_domains: Iterable[str] | None = None, requires_proxy_auth: bool = False):
    """The function starts a server of its own (a subprocess, a thread) listening on `port` in the
    container, on 0.0.0.0; requests are forwarded to it once it accepts connections, which it must
    do within `startup_timeout` seconds."""
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise InvalidError(f"web_server(port={port!r}): the port must be an integer from 1 to 65535")
    if isinstance(startup_timeout, bool) or not isinstance(startup_timeout, (int, float)) or not startup_timeout > 0:
        raise InvalidError(f"web_server(startup_timeout={startup_timeout!r}) must be a number of seconds above 0")
    _check_common("web_server", label, custom_domains, requires_proxy_auth)
    spec = WebSpec("web_server", label=label, port=port, startup_timeout=float(startup_timeout))
    return _decorator("web_server", spec, factory=True)

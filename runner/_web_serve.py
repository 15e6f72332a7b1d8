"""Serving a web function over HTTP, inside its container; the agent calls `start` once per container.

HTTP requests do not travel through the agent's input protocol: the agent starts a real HTTP
server here, reports its port in READY, and the client's front door forwards requests to that
port. That keeps streaming responses, server-sent events and WebSockets what they are on any
server, with no framing of our own, and lets `web_server` functions bring any server at all.

- `fastapi_endpoint`: the function becomes the only route of a FastAPI app, at "/", with CORS open
  as on Modal; the other kinds build their app by calling the function once, with no arguments.
- ASGI apps (and WSGI apps, wrapped by a2wsgi or Starlette) are served by uvicorn on a daemon
  thread, from a socket bound here, so port 0 gives a free port and the bound one is known before
  READY. `root_path` is the `/<label>` prefix the front door strips, so apps build their own URLs
  (FastAPI's /docs, Flask's url_for) with it.
- `web_server` functions start their own server; we only wait until it accepts connections.

fastapi, uvicorn and a2wsgi are the image's packages, not runner's: they are imported here, inside
functions, and their absence is an error that says what to add to the image.
"""

from __future__ import annotations

import inspect
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from .exception import ExecutionError, InvalidError

PIP_HINT = 'add .pip_install("fastapi[standard]") to the function\'s image'


class Serving:
    """A started web server: the port it listens on, and `stop()` for the servers started here."""

    def __init__(self, port: int, server: Any = None, thread: threading.Thread | None = None):
        self.port = port
        self._server = server
        self._thread = thread

    def stop(self, timeout: float = 10.0) -> None:
        """Stop serving and close the socket; a `web_server` function's own server is its own to stop."""
        if self._server is None:
            return
        self._server.should_exit = True  # open streams get timeout_graceful_shutdown, then are cut
        self._thread.join(timeout)


def start(spec_kind: str, user_callable: Callable, *, method: str | None = None, docs: bool = False,
          port: int | None = 0, startup_timeout: float | None = None, root_path: str = "",
          host: str = "0.0.0.0") -> Serving:
    """Serve `user_callable` as its web decorator says; return once requests can be answered."""
    if spec_kind == "web_server":
        return _web_server(user_callable, port, startup_timeout)
    if spec_kind == "fastapi_endpoint":
        app = _fastapi_app(user_callable, method or "GET", docs)
    elif spec_kind == "asgi_app":
        app = _build(user_callable, "asgi_app", "an ASGI app")
    elif spec_kind == "wsgi_app":
        app = _wsgi_to_asgi(_build(user_callable, "wsgi_app", "a WSGI app"))
    else:
        raise InvalidError(f"unknown web function kind {spec_kind!r}")
    return _serve_asgi(app, host, port or 0, root_path)


def _name(fn: Callable) -> str:
    return getattr(fn, "__qualname__", None) or repr(fn)


def _call_once(fn: Callable, kind: str, does: str) -> Any:
    """Call an `@asgi_app` / `@wsgi_app` / `@web_server` function, once per container."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # a builtin or C callable: nothing to check
        params = []
    required = [p.name for p in params if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    if required:
        raise InvalidError(
            f"@{kind} function {_name(fn)} must take no arguments (it has {', '.join(required)}): it is called "
            f"once per container and {does}"
        )
    return fn()


def _build(factory: Callable, kind: str, what: str) -> Any:
    app = _call_once(factory, kind, f"returns {what}")
    if app is None or not callable(app):
        raise InvalidError(f"@{kind} function {_name(factory)} returned {app!r}; it must return {what}")
    return app


def _fastapi_app(fn: Callable, method: str, docs: bool) -> Any:
    try:
        from fastapi import FastAPI
        from fastapi.middleware.cors import CORSMiddleware
    except ImportError as exc:
        raise InvalidError(f"@fastapi_endpoint {_name(fn)} needs FastAPI in its image: {PIP_HINT}") from exc
    if docs:
        app = FastAPI()
    else:
        app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(CORSMiddleware, allow_origins=["*"], allow_credentials=True, allow_methods=["*"],
                       allow_headers=["*"])
    app.add_api_route("/", fn, methods=[method])
    return app


def _wsgi_to_asgi(wsgi: Any) -> Any:
    try:
        from a2wsgi import WSGIMiddleware

        return WSGIMiddleware(wsgi)
    except ImportError:
        pass
    try:
        from starlette.middleware.wsgi import WSGIMiddleware
    except ImportError as exc:
        raise InvalidError(f"a @wsgi_app needs a2wsgi or starlette in its image: {PIP_HINT}") from exc
    return WSGIMiddleware(wsgi)


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ExecutionError(f"cannot listen on {host}:{port} for the web function: {exc}") from exc
    return sock


def _serve_asgi(app: Any, host: str, port: int, root_path: str) -> Serving:
    try:
        import uvicorn
    except ImportError as exc:
        raise InvalidError(f"web functions are served by uvicorn, which is not in the image: {PIP_HINT}") from exc
    config = uvicorn.Config(
        app,
        root_path=root_path,
        log_level="warning",
        lifespan="auto",
        proxy_headers=True,
        forwarded_allow_ips="*",  # only the front door reaches this port
        timeout_graceful_shutdown=5,
    )
    server = uvicorn.Server(config)
    sock = _bind(host, port)
    bound = sock.getsockname()[1]
    failed: list[BaseException] = []

    def run() -> None:
        try:
            server.run(sockets=[sock])
        except BaseException as exc:  # noqa: BLE001 - start() reports it; SystemExit is a failed lifespan
            failed.append(exc)
        finally:
            sock.close()

    thread = threading.Thread(target=run, name="runner-web", daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            cause = failed[0] if failed else None
            if cause is None or isinstance(cause, SystemExit):  # uvicorn exits when the app's lifespan startup fails
                detail = "its lifespan startup failed (its error is printed above)"
            else:
                detail = f"{type(cause).__name__}: {cause}"
            raise ExecutionError(f"the web app did not start: {detail}") from cause
        time.sleep(0.01)
    return Serving(bound, server, thread)


def _web_server(fn: Callable, port: int | None, startup_timeout: float | None) -> Serving:
    if not port:
        raise InvalidError(f"@web_server function {_name(fn)} has no port; use @web_server(8000)")
    timeout = startup_timeout or 5.0
    _call_once(fn, "web_server", f"starts a server listening on port {port}")
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=max(0.1, deadline - time.monotonic())):
                return Serving(port)
        except OSError as exc:
            if time.monotonic() >= deadline:
                raise ExecutionError(
                    f"web_server did not listen on port {port} within {timeout:g}s: {exc}; make sure "
                    f"{_name(fn)} starts a server on 0.0.0.0:{port}, or raise startup_timeout"
                ) from exc
            time.sleep(0.02)

"""`runner serve FILE`: the app's web functions live on local URLs, reloaded when the source changes.

The app runs as under `runner run`, without calling an entrypoint, until Ctrl-C. Its front door
keeps one port across reloads, so the URLs printed at start stay valid. The files watched are the
app's own: every loaded module whose file is under the app's directory. A change is picked up by
polling their modification times (no extra dependency, works on every filesystem). On a change the
new source is imported first: if that fails, the error is printed and the running app stays as it
was; if it succeeds, the old run stops (its containers go) and the new one starts.
"""

from __future__ import annotations

import os
import pathlib
import sys
import time
from typing import Any

from ._output import output
from .exception import Error, InvalidError, NotFoundError

POLL = 0.5  # seconds between looks at the source files


def serve(target: str, as_module: bool, port: int = 0) -> None:
    from ._entrypoint import UserCodeError

    if not 0 <= port <= 65535:
        raise InvalidError(f"--port must be 0 (any free port) to 65535, not {port}")
    app, files = load_app(target, as_module)
    while True:
        app._door_port = port
        with app.run():
            door = app._session.front_door
            port = door.port if door is not None else 0  # the same URLs after a reload
            urls = app._web_urls()
            if not urls:
                output().line(f"{target} has no web functions; serving its app anyway (Ctrl-C to stop)")
            for name, url in urls.items():
                output().line(f"{name} => {url}")
            output().line("Serving; the app reloads when its files change. Ctrl-C stops it.")
            while True:
                changed = _wait_for_change(files)
                try:
                    new_app, new_files = load_app(target, as_module)
                except (Error, UserCodeError) as exc:
                    cause = exc.__cause__ if isinstance(exc, UserCodeError) else exc
                    output().line(f"{changed} changed, but the new source does not load ({_one_line(cause)}); "
                                  "still serving the old one")
                    continue
                output().line(f"{changed} changed: reloading")
                break
        app, files = new_app, new_files


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, SyntaxError):
        return f"SyntaxError: {exc.msg} at {os.path.relpath(exc.filename or '?')}:{exc.lineno}"
    return f"{type(exc).__name__}: {exc}".splitlines()[0]


def load_app(target: str, as_module: bool, path_root: str | None = None) -> tuple[Any, list[str]]:
    """The app of the target, imported afresh (its own modules too), and the files to watch: the
    target's own and those of the modules it loaded from its directory."""
    from ._entrypoint import _apps, load_module

    ref, _, name = target.partition("::")
    root = pathlib.Path(path_root or (os.getcwd() if as_module else ref)).resolve()
    root = root if as_module else root.parent
    for mod_name, mod in list(sys.modules.items()):  # so a changed helper module is read again
        file = getattr(mod, "__file__", None)
        if file and _under(pathlib.Path(file), root) and not mod_name.startswith("runner"):
            del sys.modules[mod_name]
    target_file = [] if as_module else [str(pathlib.Path(ref).resolve())]
    try:
        module, _ = load_module(ref, as_module, path_root)
    finally:
        files = dict.fromkeys([*target_file, *_sources(root)])
    apps = _apps(module)
    if name:
        if name not in apps:
            raise NotFoundError(f"{ref} has no App named {name!r}; it has: {', '.join(apps) or 'none'}")
        return apps[name], list(files)
    if len(apps) != 1:
        raise NotFoundError(f"{ref} defines {len(apps)} Apps ({', '.join(apps) or 'none'}); serve one with {ref}::NAME")
    return next(iter(apps.values())), list(files)


def _under(path: pathlib.Path, root: pathlib.Path) -> bool:
    try:
        path.resolve().relative_to(root)
        return True
    except ValueError:
        return False


def _sources(root: pathlib.Path) -> list[str]:
    """Files of the loaded modules under `root`."""
    return [file for mod in list(sys.modules.values())
            if (file := getattr(mod, "__file__", None)) and file.endswith(".py") and _under(pathlib.Path(file), root)]


def _mtime(file: str) -> int:
    try:
        return os.stat(file).st_mtime_ns
    except OSError:
        return -1


def _wait_for_change(files: list[str]) -> str:
    """Block until one of `files` changes (from now on); return its name."""
    before = {file: _mtime(file) for file in files}
    while True:
        time.sleep(POLL)
        for file, mtime in before.items():
            if _mtime(file) != mtime:
                return os.path.relpath(file)

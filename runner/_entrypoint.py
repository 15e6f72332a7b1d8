"""`runner run FILE[::NAME] [--flags]`: load the program, pick what to run the way Modal does,
and turn the entrypoint's signature into command-line flags."""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import inspect
import os
import pathlib
import sys
from typing import Any, Callable

import click

from ._app import App
from ._cls import Cls
from ._compat import install_modal_alias
from .exception import Error, InvalidError, NotFoundError


class UserCodeError(Exception):
    """The user's module raised while being imported; its own traceback is what to show."""


@dataclasses.dataclass
class Runnable:
    app: App
    name: str
    kind: str  # "entrypoint" | "function" | "method"
    fn: Callable  # what gives the signature
    call: Callable[..., Any]


def load_module(target: str, as_module: bool, path_root: str | None = None) -> tuple[Any, str | None]:
    """Import the target (a file, or a module found from `path_root`, default the working directory)."""
    ref, _, name = target.partition("::")
    install_modal_alias()
    if as_module:
        sys.path.insert(0, path_root or os.getcwd())
        try:
            found = importlib.util.find_spec(ref)
        except ModuleNotFoundError:
            found = None
        if found is None:
            raise NotFoundError(f"no module named {ref!r} on the path (from {os.getcwd()})")
        try:
            return importlib.import_module(ref), name or None
        except Error:
            raise  # a bad option at decoration time: runner's one-line error
        except Exception as exc:
            raise UserCodeError() from exc
    path = pathlib.Path(ref)
    if not path.exists():
        raise NotFoundError(f"no such file: {ref}")
    if path.is_dir() or path.suffix != ".py":
        raise InvalidError(f"{ref} is not a Python file; give a .py file, or a module with -m")
    path = path.resolve()
    sys.path.insert(0, str(path.parent))
    module_name = path.stem if path.stem.isidentifier() else "runner_main"
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Error:
        raise
    except Exception as exc:
        raise UserCodeError() from exc
    return module, name or None


def _apps(module: Any) -> dict[str, App]:
    return {k: v for k, v in vars(module).items() if isinstance(v, App)}


def _candidates(app: App) -> list[Runnable]:
    out = [Runnable(app, n, "entrypoint", e.raw, e.raw) for n, e in app._entrypoints.items()]
    out += [Runnable(app, n, "function", f._raw, f.remote_gen if f._is_gen() else f.remote) for n, f in app._functions.items()]
    for n, c in app._classes.items():
        for m, raw in c._methods.items():
            out.append(Runnable(app, f"{n}.{m}", "method", raw, _method_caller(c, m)))
    return out


def _method_caller(c: Cls, method: str) -> Callable:
    def call(**kw):
        m = getattr(c(), method)
        return m.remote_gen(**kw) if m._is_gen() else m.remote(**kw)

    return call


def pick(module: Any, name: str | None, where: str) -> Runnable:
    apps = _apps(module)
    if not apps:
        raise NotFoundError(f"{where} defines no App: add `app = modal.App()` and decorate functions with it")
    found: list[Runnable] = []
    for var, app in apps.items():
        for r in _candidates(app):
            if name is None or name in (r.name, f"{var}.{r.name}"):
                found.append(r)
    if name is not None:
        if not found:
            names = sorted({r.name for app in apps.values() for r in _candidates(app)})
            raise NotFoundError(f"{where} has no function or entrypoint {name!r}; it has: {', '.join(names) or 'none'}")
        return found[0]
    entrypoints = [r for r in found if r.kind == "entrypoint"]
    if len(entrypoints) == 1:
        return entrypoints[0]
    if not entrypoints and len(found) == 1:
        return found[0]
    options = entrypoints or found
    if not options:
        raise NotFoundError(f"{where} has an App but nothing to run: add @app.local_entrypoint() or @app.function()")
    raise InvalidError(
        f"{where} has {len(options)} {'entrypoints' if entrypoints else 'functions'} "
        f"({', '.join(r.name for r in options)}); pick one with {where}::NAME"
    )


_TYPES = {str: click.STRING, int: click.INT, float: click.FLOAT, bool: click.BOOL}


def parse_flags(r: Runnable, args: list[str], prog: str) -> dict[str, Any]:
    """Entrypoint arguments from `--name value` flags, typed by the signature."""
    params = []
    for p in inspect.signature(r.fn).parameters.values():
        if p.name == "self" or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        ann = p.annotation
        if isinstance(ann, str):
            ann = {"str": str, "int": int, "float": float, "bool": bool}.get(ann, ann)
        if ann is inspect.Parameter.empty:
            ann = type(p.default) if p.default not in (inspect.Parameter.empty, None) else str
        if ann not in _TYPES:
            raise InvalidError(f"{r.name}: parameter {p.name!r} has type {ann!r}; entrypoint flags support str, int, float and bool")
        names = [f"--{p.name.replace('_', '-')}"]
        if "_" in p.name:
            names.append(f"--{p.name}")
        required = p.default is inspect.Parameter.empty
        default = None if required else p.default
        if ann is bool:
            flag = "/".join(names) + "/--no-" + p.name.replace("_", "-")
            params.append(click.Option([flag, p.name], default=bool(default), show_default=True))
        else:
            extra = {} if required else {"default": default}  # click 8.4 treats default=None as given
            params.append(click.Option([*names, p.name], type=_TYPES[ann], required=required, **extra))
    command = click.Command(prog, params=params)
    with command.make_context(prog, list(args)) as ctx:
        return dict(ctx.params)

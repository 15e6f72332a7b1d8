"""Plain functions, no decorators: what tests/test_project.py runs through runner.Apparatus.

Imported by module and name in containers, so nothing here may need the client's files.
"""

from __future__ import annotations

import asyncio
import os
import pathlib
import socket

import runner

PROJ = pathlib.Path(__file__).parent / "assets" / "proj"


def square(x: int) -> int:
    return x * x


def add(x: int, y: int, *, scale: int = 1) -> int:
    return (x + y) * scale


async def slow_square(x: int) -> int:
    await asyncio.sleep(0.01)
    return x * x


def fail(x: int) -> int:
    raise ValueError(f"no good: {x}")


def where() -> dict:
    """Which container served the call: warm containers answer again."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "local": runner.is_local()}


def probe() -> dict:
    """What the project image put in place: installed distributions and importable modules."""
    import importlib
    from importlib import metadata

    def version(name: str) -> str | None:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    def value(module: str) -> str | None:
        try:
            return importlib.import_module(module).VALUE
        except ImportError:
            return None

    found = {name: version(name) for name in ("six", "idna", "attrs", "packaging", "iniconfig", "localdep", "projdemo")}
    found.update(projpkg=value("projpkg"), localdep_module=value("localdep"))
    if found["projpkg"]:
        import projpkg

        found["projpkg_greet"] = projpkg.greet("runner")
        found["projpkg_file"] = projpkg.__file__
    return found

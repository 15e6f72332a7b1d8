"""`import modal` resolves to runner under `runner run` and inside containers.

Outside those, `import runner as modal` is the way to write a program that runs anywhere.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys


class _ModalAlias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Maps `modal.X` to `runner.X` for every public submodule runner has."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "modal" and not fullname.startswith("modal."):
            return None
        real = "runner" + fullname[len("modal") :]
        if importlib.util.find_spec(real) is None:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec):
        return importlib.import_module("runner" + spec.name[len("modal") :])

    def exec_module(self, module):
        pass


def install_modal_alias() -> None:
    """Make `import modal` (and `modal.exception`, ...) give runner, even where real modal is installed."""
    for name in [n for n in sys.modules if n == "modal" or n.startswith("modal.")]:
        if not getattr(sys.modules[name], "__name__", "").startswith("runner"):
            del sys.modules[name]
    if not any(isinstance(f, _ModalAlias) for f in sys.meta_path):
        sys.meta_path.insert(0, _ModalAlias())
    import runner

    sys.modules["modal"] = runner
    sys.modules["modal.exception"] = runner.exception

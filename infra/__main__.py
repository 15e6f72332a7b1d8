"""The Pulumi entry point (`main: infra/` in Pulumi.yaml): run the program of stack config `runner:cloud`.

Only the chosen cloud's package is imported, so a GCP stack does not need azure-native installed.
Set the cloud once per stack: `pulumi config set runner:cloud gcp`.
"""

from __future__ import annotations

import importlib
import os
import sys

# Pulumi runs this file as a script from infra/; the repository root makes `infra` and `runner`
# importable.
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import pulumi  # noqa: E402

from runner._stack import CLOUDS  # noqa: E402


def main() -> None:
    cloud = pulumi.Config("runner").get("cloud")
    if cloud not in CLOUDS:
        said = "is not set" if cloud is None else f"is {cloud!r}"
        raise pulumi.RunError(f"stack config runner:cloud {said}; set one of {', '.join(CLOUDS)}: "
                              f"`pulumi config set runner:cloud gcp`")
    try:
        module = importlib.import_module(f"infra.{cloud}")
    except ModuleNotFoundError as e:
        if e.name and (e.name == f"infra.{cloud}" or e.name.startswith("infra.")):
            raise
        raise pulumi.RunError(f"runner:cloud is {cloud} but {e.name} is not installed: "
                              f"pip install 'runner[{cloud}]'") from None
    module.program()


if __name__ == "__main__":
    main()

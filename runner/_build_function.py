"""`Image.run_function` at build time: `python -m runner._build_function FILE` unpickles a
function with its arguments and calls it inside the build container. Whatever it writes to the
filesystem becomes the step's layer. Standard library and cloudpickle only, like the agent."""

from __future__ import annotations

import os
import sys


def main(path: str) -> None:
    os.environ["RUNNER_IS_REMOTE"] = "1"
    from ._compat import install_modal_alias

    install_modal_alias()
    import cloudpickle

    with open(path, "rb") as f:
        fn, args, kwargs = cloudpickle.load(f)
    fn(*args, **kwargs)


if __name__ == "__main__":
    main(sys.argv[1])

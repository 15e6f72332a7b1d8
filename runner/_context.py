"""Where code is running: on the client, or inside a container serving inputs.

Standard library only: the agent imports this inside user images.
"""

from __future__ import annotations

import contextvars
import os

REMOTE_ENV = "RUNNER_IS_REMOTE"

current_input: contextvars.ContextVar[str | None] = contextvars.ContextVar("runner_current_input", default=None)


def is_local() -> bool:
    """True on the client, False inside a container that serves a function."""
    return os.environ.get(REMOTE_ENV) != "1"


def current_input_id() -> str | None:
    """The id of the input being served by the calling code, or None outside a function call."""
    return current_input.get()


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists on this host (used to spot leftovers of dead clients)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True

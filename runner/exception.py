"""Exceptions raised by runner, with Modal's names.

    Error                          base of everything runner raises itself
    ├── InvalidError               a bad argument or configuration; fix the call
    ├── NotFoundError              an object, app, function or file that does not exist
    ├── AlreadyExistsError
    ├── ExecutionError             the platform could not run the code (a container crashed, ...)
    │   └── RemoteError            the remote side failed outside user code
    ├── FunctionTimeoutError       an input ran past the function's `timeout`
    ├── InputCancellation          the input was cancelled (`FunctionCall.cancel`)
    ├── OutputExpiredError         the result of a call is no longer held
    ├── TimeoutError               a client-side wait ran out (`FunctionCall.get(timeout=)`)
    ├── SerializationError         an argument or result could not be pickled
    ├── DeserializationError       an argument or result could not be unpickled
    ├── VersionError               client and container Python versions differ
    ├── ImageBuildError            an image step failed; the message holds the step and its log
    ├── ProviderError              the chosen provider cannot be used (no Docker daemon, no GPU, ...)
    ├── ConflictError              the call does not fit the object's state (exec on a finished sandbox)
    ├── SandboxTerminatedError     the sandbox was terminated (terminate(), idle_timeout, its app ended)
    ├── SandboxTimeoutError        the sandbox ran past its timeout
    └── ClientClosed               the Sandbox object was detached

Exceptions raised by user code inside a container are re-raised on the caller as
their own type, with the remote traceback attached as a note.
"""

from __future__ import annotations

import builtins

__all__ = [
    "AlreadyExistsError",
    "ClientClosed",
    "ConflictError",
    "DeserializationError",
    "Error",
    "ExecutionError",
    "FunctionTimeoutError",
    "ImageBuildError",
    "InputCancellation",
    "InvalidError",
    "NotFoundError",
    "OutputExpiredError",
    "ProviderError",
    "RemoteError",
    "SandboxTerminatedError",
    "SandboxTimeoutError",
    "SerializationError",
    "TimeoutError",
    "VersionError",
]


class Error(Exception):
    """Base class for every error runner raises itself."""


class InvalidError(Error):
    """A bad argument or configuration."""


class NotFoundError(Error):
    """The named object does not exist."""


class AlreadyExistsError(Error):
    """The named object exists already."""


class ExecutionError(Error):
    """The platform could not run the code."""


class RemoteError(ExecutionError):
    """The remote side failed outside of user code, e.g. its container died."""


class FunctionTimeoutError(Error, builtins.TimeoutError):
    """An input ran longer than the function's `timeout`."""


class InputCancellation(Error):
    """The input was cancelled before it finished."""


class OutputExpiredError(Error):
    """The output of a function call is no longer available."""


class TimeoutError(Error, builtins.TimeoutError):  # noqa: A001 - Modal's name
    """A client-side wait ran out of time."""


class SerializationError(Error):
    """An argument or a result could not be serialized."""


class DeserializationError(Error):
    """An argument or a result could not be deserialized."""


class VersionError(Error):
    """The Python version of a container does not match the client's."""


class ImageBuildError(Error):
    """A step of an image build failed."""


class ProviderError(Error):
    """The provider cannot run the request (no daemon answering, a GPU the host lacks, ...)."""


class ConflictError(Error):
    """The call does not fit the object's state, e.g. exec on a sandbox that has finished."""


class SandboxTerminatedError(Error):
    """The sandbox was terminated: `terminate()`, its `idle_timeout`, or the end of its app's run."""


class SandboxTimeoutError(Error):
    """The sandbox ran past its `timeout`."""


class ClientClosed(Error):
    """The Sandbox object was detached; `Sandbox.from_id` gives a new one."""

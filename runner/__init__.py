"""runner: Modal's Python interface, on infrastructure you own.

Write an ordinary Modal program and run it with `runner run app.py`, or say
`import runner as modal` anywhere. This module is the whole public surface; everything else
lives in `_`-prefixed modules. Importing it pulls in only the standard library and cloudpickle,
because the same package runs inside every container.
"""

from . import exception, volume
from ._apparatus import Apparatus
from ._app import App, LocalEntrypoint
from ._cls import Cls
from ._context import current_input_id, is_local
from ._dict import Dict
from ._function import Function, FunctionCall
from ._image import Image
from ._output import enable_output
from ._partial import batched, concurrent, enter, exit, method, parameter
from ._queue import Queue
from ._resources import Retries
from ._schedule import Cron, Period
from ._sandbox import Sandbox
from ._secret import Secret
from ._volume import Volume
from ._web import asgi_app, fastapi_endpoint, web_endpoint, web_server, wsgi_app
from .exception import Error

__version__ = "0.1.0"

__all__ = [
    "App",
    "Apparatus",
    "Cls",
    "Cron",
    "Dict",
    "Error",
    "Function",
    "FunctionCall",
    "Image",
    "LocalEntrypoint",
    "Period",
    "Queue",
    "Retries",
    "Sandbox",
    "Secret",
    "Volume",
    "__version__",
    "asgi_app",
    "batched",
    "concurrent",
    "current_input_id",
    "enable_output",
    "enter",
    "exception",
    "exit",
    "fastapi_endpoint",
    "is_local",
    "method",
    "parameter",
    "volume",
    "web_endpoint",
    "web_server",
    "wsgi_app",
]

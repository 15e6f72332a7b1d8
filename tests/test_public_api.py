"""The public surface is exactly what `runner.__all__` lists; nothing leaks, nothing drops."""

import runner
import runner.exception

EXPECTED = {
    "App", "Apparatus", "Cls", "Error", "Function", "FunctionCall", "Image", "LocalEntrypoint", "Retries", "Secret",
    "__version__", "batched", "concurrent", "current_input_id", "enable_output", "enter", "exception", "exit",
    "is_local", "method", "parameter", "Volume", "volume", "Dict", "Queue", "Sandbox",
    "asgi_app", "fastapi_endpoint", "web_endpoint", "web_server", "wsgi_app", "Cron", "Period",
}


def test_all_is_pinned():
    assert set(runner.__all__) == EXPECTED
    for name in runner.__all__:
        assert hasattr(runner, name), name


def test_no_private_names_in_all():
    assert not [n for n in runner.__all__ if n.startswith("_") and n != "__version__"]


def test_exception_names_follow_modal():
    for name in ("Error", "InvalidError", "NotFoundError", "FunctionTimeoutError", "OutputExpiredError",
                 "RemoteError", "ExecutionError", "SerializationError", "DeserializationError", "TimeoutError",
                 "InputCancellation", "VersionError"):
        cls = getattr(runner.exception, name)
        assert issubclass(cls, runner.exception.Error)
    assert set(runner.exception.__all__) == {n for n in dir(runner.exception)
                                             if n.endswith("Error") or n in ("InputCancellation", "ClientClosed")}
    assert runner.Error is runner.exception.Error


def test_import_modal_alias_under_runner():
    from runner._compat import install_modal_alias

    install_modal_alias()
    import modal
    import modal.exception

    assert modal is runner and modal.exception is runner.exception

"""The `runner` command.

Bad input never shows a traceback: runner's own errors print one line (`Error: ...`) and exit 1,
usage errors exit 2, Ctrl-C exits 130 after the app's containers are gone. `--verbose` adds the
traceback and runner's status lines. An exception from the user's own code keeps its traceback,
because that is where the user needs to look.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import sys
import traceback
from typing import List, Optional

import click
import typer

from . import __version__
from ._apps_cli import app_cli
from ._images_cli import image_cli
from ._infra_cli import infra_cli
from ._output import enable_output, output
from ._storage_cli import secret_cli, volume_cli
from ._store_cli import store_app
from .exception import Error

try:  # typer >= 0.29 carries its own copy of click and raises that copy's exceptions
    from typer import _click as _typer_click
except ImportError:  # older typer uses click itself
    _typer_click = click

# Usage errors come from typer's click (the command line) or from click (entrypoint flags).
_EXIT = tuple({click.exceptions.Exit, typer.Exit})
_CLICK_ERROR = tuple({click.ClickException, _typer_click.ClickException})
_ABORT = tuple({click.exceptions.Abort, getattr(typer, "Abort", click.exceptions.Abort)})

cli = typer.Typer(
    name="runner",
    help="Run Modal programs on infrastructure you own.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        print(f"runner {__version__}")
        raise typer.Exit()


@cli.callback()
def _global(
    provider: Optional[str] = typer.Option(
        None, "--provider", envvar="RUNNER_PROVIDER",
        help="embedded, docker or kubernetes (default: docker when a daemon answers)"
    ),
    cloud: Optional[str] = typer.Option(
        None, "--cloud", help="run on the cluster of this cloud's stack (gcp, aws or azure): the kubernetes provider"
    ),
    stack_outputs: Optional[str] = typer.Option(
        None, "--stack-outputs", help="the stack's outputs as JSON (default: RUNNER_STACK_OUTPUTS, else `pulumi stack output`)"
    ),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show tracebacks and runner's status lines."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    if cloud:
        from ._stack import CLOUDS

        if cloud not in CLOUDS or cloud == "local":
            raise click.BadParameter(f"{cloud!r} is not a cloud with a cluster; use gcp, aws or azure",
                                     param_hint="--cloud")
        if provider and provider != "kubernetes":
            raise click.BadParameter(f"--cloud runs on the kubernetes provider, not {provider}; drop one of them",
                                     param_hint="--provider")
        provider = "kubernetes"
        os.environ["RUNNER_CLOUD"] = cloud
    if stack_outputs:
        os.environ["RUNNER_STACK_OUTPUTS"] = stack_outputs
    if provider:
        from ._providers import NAMES

        if provider not in NAMES:
            raise click.BadParameter(f"{provider!r} is not a provider; use one of {', '.join(NAMES)}", param_hint="--provider")
        os.environ["RUNNER_PROVIDER"] = provider
    output().verbose = verbose


@cli.command(
    "run",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []},
)
def run(
    ctx: typer.Context,
    target: str = typer.Argument(..., help="FILE.py[::NAME], or a module with -m"),
    module: bool = typer.Option(False, "-m", help="TARGET is a module path such as pkg.app"),
) -> None:
    """Run an app: its local entrypoint, or the one function it has, or FILE::NAME."""
    from ._entrypoint import load_module, parse_flags, pick

    mod, name = load_module(target, module)
    where = target.partition("::")[0]
    runnable = pick(mod, name, where)
    kwargs = parse_flags(runnable, list(ctx.args), f"runner run {target}")
    with enable_output():
        with runnable.app.run():
            result = runnable.call(**kwargs)
            if inspect.iscoroutine(result):
                asyncio.run(result)
            elif inspect.isgenerator(result):
                for _ in result:
                    pass


@cli.command("serve")
def serve(
    target: str = typer.Argument(..., help="FILE.py[::APP], or a module with -m"),
    module: bool = typer.Option(False, "-m", help="TARGET is a module path such as pkg.app"),
    port: int = typer.Option(0, "--port", help="the front door's port on 127.0.0.1 (0: any free one)"),
) -> None:
    """Serve the app's web functions on local URLs; reload when its files change; Ctrl-C stops."""
    from ._serve import serve as serve_app

    with enable_output():
        serve_app(target, module, port)


@cli.command("deploy")
def deploy(
    target: str = typer.Argument(..., help="FILE.py[::APP], or a module with -m"),
    module: bool = typer.Option(False, "-m", help="TARGET is a module path such as pkg.app"),
    name: Optional[str] = typer.Option(None, "--name", help="deploy under this name (default: the App's name)"),
    port: Optional[int] = typer.Option(None, "--port",
                                       help="the front door's port for a first deploy (default: any free one)"),
) -> None:
    """Deploy an app: it keeps running after this command exits; deploying again replaces it."""
    from ._apps_cli import deploy_command

    deploy_command(target, module, name, port)


@cli.command("shell")
def shell(
    target: Optional[str] = typer.Argument(None, help="FILE.py[::NAME]: a shell in NAME's container"),
    module: bool = typer.Option(False, "-m", help="TARGET is a module path such as pkg.app"),
    image: Optional[str] = typer.Option(None, "--image", help="an image reference to use instead"),
    cmd: Optional[str] = typer.Option(None, "--cmd", "-c", help="run this command instead of an interactive shell"),
    volume: Optional[List[str]] = typer.Option(None, "--volume", help="also mount this named volume at /mnt/NAME"),
    secret: Optional[List[str]] = typer.Option(None, "--secret", help="also set this named secret's variables"),
) -> None:
    """Open a shell in a function's container: its image, volumes and secrets."""
    from ._shell import open_shell, options_for

    what, options, root = options_for(target, module, image, volume or [], secret or [])
    with enable_output():
        code = open_shell(what, options, root, cmd)
    raise typer.Exit(code)


cli.add_typer(image_cli, name="image")  # `runner image build | ls | prune`
cli.add_typer(volume_cli, name="volume")  # `runner volume create | ls | put | get | rm | delete`
cli.add_typer(secret_cli, name="secret")  # `runner secret create | list | delete`
cli.add_typer(store_app, name="store")  # `runner store status | stop`
cli.add_typer(app_cli, name="app")  # `runner app list | stop | logs`
cli.add_typer(infra_cli, name="infra")  # `runner infra outputs | up | destroy`


def main(argv: List[str] | None = None) -> None:
    from ._entrypoint import UserCodeError

    args = sys.argv[1:] if argv is None else argv
    try:
        code = cli(args=args, prog_name="runner", standalone_mode=False)
    except _EXIT as exc:
        code = exc.exit_code
    except _CLICK_ERROR as exc:
        message = exc.format_message()
        typer_usage = _typer_click is not click and isinstance(exc, _typer_click.exceptions.UsageError)
        if message and typer_usage and exc.ctx is not None:
            print(exc.ctx.get_usage(), file=sys.stderr)  # a bad command line: show how it goes
        if message:  # no message: typer printed the help already (no_args_is_help)
            print(f"Error: {message}", file=sys.stderr)
        code = exc.exit_code
    except _ABORT:
        print("Aborted.", file=sys.stderr)
        code = 130
    except KeyboardInterrupt:
        print("Interrupted; the app's containers are stopped.", file=sys.stderr)
        code = 130
    except Error as exc:
        if output().verbose:
            traceback.print_exc()
        print(f"Error: {exc}", file=sys.stderr)
        code = 1
    except UserCodeError as exc:
        cause = exc.__cause__
        traceback.print_exception(type(cause), cause, cause.__traceback__)
        code = 1
    except SystemExit as exc:
        code = exc.code
    except Exception:  # noqa: BLE001 - the user's own code raised: its traceback is the message
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.exit(code if isinstance(code, int) else 0 if code is None else 1)

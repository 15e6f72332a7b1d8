"""`runner infra outputs | up | destroy`: the stack outputs of the infra/ Pulumi programs.

`outputs` reads the contract of `runner._stack` from a file (`--stack-outputs`, or
`RUNNER_STACK_OUTPUTS`) or from the Pulumi CLI (`pulumi stack output --json --show-secrets`) and
prints it; the kubeconfig stays hidden unless `--show-secrets`. `up` and `destroy` are
conveniences around the Pulumi CLI, run in the directory holding `Pulumi.yaml`, with its output
and exit status passed through; plain `pulumi up` / `pulumi destroy` there do the same.
"""

from __future__ import annotations

import json
import pathlib
import shutil
import subprocess
from typing import Any, List, Optional

import typer

from ._stack import CLOUDS, OUTPUT_KEYS, SECRET_KEYS, STACK_OUTPUTS_ENV, StackOutputs, read_outputs
from .exception import InvalidError, NotFoundError

infra_cli = typer.Typer(name="infra",
                        help="Create, destroy and read the infra/ Pulumi stacks (docs/infrastructure.md).",
                        no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)

_NO_PULUMI = ("the Pulumi CLI is not installed: see https://www.pulumi.com/docs/install/ ; "
              "plain `pulumi up` in this directory does the same")
_STACK_HELP = "the Pulumi stack (default: the cloud's name, e.g. gcp)"


def _pulumi() -> str:
    found = shutil.which("pulumi")
    if found is None:
        raise NotFoundError(_NO_PULUMI)
    return found


def _find_project() -> pathlib.Path | None:
    """The directory holding runner's Pulumi.yaml: the current one or a parent, else runner's checkout."""
    here = pathlib.Path.cwd()
    for candidate in (here, *here.parents, pathlib.Path(__file__).resolve().parent.parent):
        if (candidate / "Pulumi.yaml").is_file():
            return candidate
    return None


def _project_dir() -> pathlib.Path:
    found = _find_project()
    if found is None:
        raise NotFoundError(f"no Pulumi.yaml in {pathlib.Path.cwd()} or its parents, nor in runner's checkout: "
                            "run this in runner's checkout, where Pulumi.yaml and infra/ are")
    return found


def _check_cloud(cloud: str) -> str:
    if cloud not in CLOUDS:
        raise InvalidError(f"--cloud {cloud!r} is not one of {', '.join(CLOUDS)}")
    return cloud


def _call(pulumi: str, args: List[str], cwd: pathlib.Path) -> None:
    """Run `pulumi ARGS` with the terminal passed through; a failure exits with its status."""
    code = subprocess.run([pulumi, *args], cwd=cwd, check=False).returncode
    if code != 0:
        typer.echo(f"`pulumi {' '.join(args)}` exited with status {code}", err=True)
        raise typer.Exit(code)


def _shown(outputs: StackOutputs, show_secrets: bool) -> dict[str, Any]:
    data = {key: getattr(outputs, key) for key in OUTPUT_KEYS}
    if not show_secrets:
        data.update({key: "[secret]" for key in SECRET_KEYS})
    return data


@infra_cli.command("outputs")
def outputs(
    stack_outputs: Optional[pathlib.Path] = typer.Option(
        None, "--stack-outputs", help=f"a JSON file of `pulumi stack output --json --show-secrets` "
                                      f"(default: ${STACK_OUTPUTS_ENV}, else the Pulumi CLI)"),
    as_json: bool = typer.Option(False, "--json", help="print the outputs as one JSON object"),
    stack: Optional[str] = typer.Option(None, "--stack", help="read this Pulumi stack, not the selected one"),
    show_secrets: bool = typer.Option(False, "--show-secrets", help="print the kubeconfig too"),
) -> None:
    """Print the stack outputs the runner uses (the contract of docs/infrastructure.md)."""
    if stack is not None and stack_outputs is not None:
        raise InvalidError("give --stack (read from the Pulumi CLI) or --stack-outputs (read a file), not both")
    if stack is not None:  # that stack through the Pulumi CLI, in the project's directory
        result = read_outputs(stack=stack, project_dir=str(_project_dir()))
    else:  # the file, else $RUNNER_STACK_OUTPUTS, else the selected stack through the Pulumi CLI
        found = _find_project()
        result = read_outputs(str(stack_outputs) if stack_outputs is not None else None,
                              project_dir=str(found) if found else None)
    data = _shown(result, show_secrets)
    if as_json:
        typer.echo(json.dumps(data, indent=2, sort_keys=False))
        return
    width = max(len(key) for key in OUTPUT_KEYS)
    for key, value in data.items():
        if key in SECRET_KEYS and not show_secrets:
            text = f"(secret, {len(getattr(result, key).encode())} bytes)"
        elif value == "":
            text = "(none)"  # an optional key the stack does not set (web_domain without a front door)
        elif isinstance(value, str):
            text = value if "\n" not in value else "\n" + value.rstrip("\n")
        else:
            text = json.dumps(value, sort_keys=True)
        typer.echo(f"{key.ljust(width)}  {text}")


@infra_cli.command("up")
def up(
    cloud: str = typer.Option(..., "--cloud", help=f"one of {', '.join(CLOUDS)}"),
    stack: Optional[str] = typer.Option(None, "--stack", help=_STACK_HELP),
    yes: bool = typer.Option(False, "--yes", "-y", help="do not ask before applying the changes"),
) -> None:
    """Create or update a stack: `pulumi stack select --create`, `pulumi config set runner:cloud`, `pulumi up`."""
    cloud = _check_cloud(cloud)
    stack = stack or cloud
    pulumi, cwd = _pulumi(), _project_dir()
    _call(pulumi, ["stack", "select", "--create", stack], cwd)
    _call(pulumi, ["config", "set", "runner:cloud", cloud, "--stack", stack], cwd)
    _call(pulumi, ["up", "--stack", stack, *(["--yes"] if yes else [])], cwd)


@infra_cli.command("destroy")
def destroy(
    cloud: str = typer.Option(..., "--cloud", help=f"one of {', '.join(CLOUDS)}"),
    stack: Optional[str] = typer.Option(None, "--stack", help=_STACK_HELP),
    yes: bool = typer.Option(False, "--yes", "-y", help="do not ask before deleting"),
) -> None:
    """Delete everything a stack created (`pulumi destroy`); refuses a stack of another cloud."""
    cloud = _check_cloud(cloud)
    stack = stack or cloud
    pulumi, cwd = _pulumi(), _project_dir()
    done = subprocess.run([pulumi, "config", "get", "runner:cloud", "--stack", stack], cwd=cwd,
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines()
        raise NotFoundError(f"cannot read runner:cloud of stack {stack}: "
                            f"{lines[-1] if lines else f'exit status {done.returncode}'}")
    configured = done.stdout.strip()
    if configured != cloud:
        raise InvalidError(f"stack {stack} is for cloud {configured or '(unset)'}, not {cloud}; "
                           f"pass --cloud {configured} to destroy it" if configured else
                           f"stack {stack} has no runner:cloud; destroy it with plain `pulumi destroy --stack {stack}`")
    _call(pulumi, ["destroy", "--stack", stack, *(["--yes"] if yes else [])], cwd)

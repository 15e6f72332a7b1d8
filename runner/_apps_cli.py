"""`runner deploy` and `runner app list | stop | logs`: apps that keep running on this host after
the client exits (see `runner._deploy` for how, and how a redeploy replaces a running version)."""

from __future__ import annotations

from typing import Optional

import typer

app_cli = typer.Typer(name="app", help="List, stop and read the logs of deployed apps.",
                      no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)


def _apps():
    from ._deployed import apps

    return apps()


def deploy_command(target: str, module: bool, name: Optional[str], port: Optional[int]) -> None:
    from ._deployed import on_cluster

    if on_cluster():
        from ._kube_deploy import deploy as deploy_to_cluster

        if port is not None:
            from .exception import InvalidError

            raise InvalidError("--port is for a deploy on this host; on a cluster, web endpoints answer on port 80 of "
                               "the stack's front door (see docs/kubernetes.md): drop --port")
        state = deploy_to_cluster(target, module, name)
    else:
        from ._deploy import deploy

        state = deploy(target, module, name, port)
    verb = "Deployed" if state["version"] == 1 else f"Redeployed (version {state['version']})"
    print(f"{verb} app {state['name']} ({state['id']}) on the {state['provider']} provider.")
    for fname, url in state["web"].items():
        print(f"{fname} => {url}")
    for fname, info in state["functions"].items():
        if info["schedule"]:
            print(f"{fname} runs {info['schedule']}")
    print(f"Call it with modal.Function.from_name({state['name']!r}, ...); "
          f"stop it with `runner app stop {state['name']}`.")


@app_cli.command("list")
def app_list() -> None:
    """The deployed apps on this host (on the stack's cluster with the kubernetes provider)."""
    apps = _apps().deployed_apps()
    if not apps:
        print("No deployed apps. Deploy one with `runner deploy FILE`.")
        return
    rows = [("NAME", "STATE", "VERSION", "DEPLOYED", "URL", "FUNCTIONS")]
    for name, s in apps.items():
        state = "deployed" if s["alive"] else "empty" if not s.get("pid") else "dead (see runner app logs)"
        objects = [*s.get("functions", {}), *s.get("classes", {})]
        rows.append((name, state, str(s.get("version", "")), s.get("deployed_at", ""), s.get("url") or "-",
                     ", ".join(objects) or "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1])


@app_cli.command("stop")
def app_stop(name: str = typer.Argument(..., help="the deployed app")) -> None:
    """Stop a deployed app: its containers stop, its URLs go away."""
    _apps().stop(name)
    print(f"Stopped app {name}.")


@app_cli.command("logs")
def app_logs(
    name: str = typer.Argument(..., help="the deployed app"),
    follow: bool = typer.Option(False, "--follow", "-f",
                                help="keep printing new lines until the app stops (Ctrl-C ends)"),
) -> None:
    """Print a deployed app's log: its own lines and its containers' output."""
    _apps().follow_logs(name, follow)

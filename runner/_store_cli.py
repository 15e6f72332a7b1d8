"""`runner store status | stop`: the store behind Dict and Queue.

`status` only looks: it never starts the managed redis-server. `stop` stops it; its data stays on
disk, and the next program that uses a Dict or Queue starts it again, so stopping is always safe.
"""

from __future__ import annotations

import typer

store_app = typer.Typer(
    name="store",
    help="The store behind Dict and Queue: see it, stop its server.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@store_app.command("status")
def status() -> None:
    """Which store Dict and Queue use, and whether runner's redis-server runs."""
    from ._store import server_status

    info = server_status()
    typer.echo(f"store: {info['kind']}")
    typer.echo(f"url:   {info['url']}")
    if info["kind"] == "managed redis":
        state = f"running (pid {info['pid']})" if info["running"] else "stopped (starts when a program needs it)"
        typer.echo(f"state: {state}")
        typer.echo(f"data:  {info['data']}")
        typer.echo(f"log:   {info['log']}")


@store_app.command("stop")
def stop() -> None:
    """Stop runner's redis-server; the data stays, and it starts again when next needed."""
    from ._store import stop_managed_server

    pid = stop_managed_server()
    typer.echo(f"stopped the store's redis-server (pid {pid})" if pid else "the store's redis-server is not running")

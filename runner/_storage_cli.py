"""`runner volume ...` and `runner secret ...`: named volumes and secrets on this host.

Both work on the same store the API uses (`Volume.from_name`, `Secret.from_name`), under
`$RUNNER_HOME`. `runner secret list` shows names and keys, never values; values given on the
command line go straight to an owner-only file.
"""

from __future__ import annotations

import datetime
import os
import pathlib
import shutil
import sys
from typing import List, Optional

import typer

from .exception import AlreadyExistsError, InvalidError, NotFoundError

volume_cli = typer.Typer(name="volume", help="Create, list, fill and delete named volumes.",
                         no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
secret_cli = typer.Typer(name="secret", help="Create, list and delete named secrets.",
                         no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)


def _volume(name: str):
    from ._volume import Volume

    volume = Volume.from_name(name)
    volume._host_dir()  # unknown name: NotFoundError now, saying how to create it
    return volume


# ---- volumes ---------------------------------------------------------------------------------
@volume_cli.command("create")
def volume_create(name: str = typer.Argument(..., help="the volume's name")) -> None:
    """Create an empty named volume."""
    from ._home import check_name, subdir

    path = subdir("volumes") / check_name(name, "volume")
    if path.exists():
        raise AlreadyExistsError(f"volume {name!r} exists already")
    path.mkdir(mode=0o700)
    print(f"Created volume {name}.")


@volume_cli.command("ls")
def volume_ls(
    name: Optional[str] = typer.Argument(None, help="a volume; without it, list the volumes"),
    path: str = typer.Argument("/", help="a directory in the volume"),
    recursive: bool = typer.Option(False, "--recursive", "-r", help="list subdirectories too"),
) -> None:
    """List the volumes, or the files of one volume."""
    from ._volume import FileEntryType, Volume

    if name is None:
        for volume_name in Volume.names():
            print(volume_name)
        return
    for entry in _volume(name).listdir(path, recursive=recursive):
        kind = "dir " if entry.type == FileEntryType.DIRECTORY else "file" if entry.type == FileEntryType.FILE else "link"
        when = datetime.datetime.fromtimestamp(entry.mtime).strftime("%Y-%m-%d %H:%M")
        print(f"{kind}  {entry.size:>12}  {when}  {entry.path}")


@volume_cli.command("put")
def volume_put(
    name: str = typer.Argument(...),
    local_path: pathlib.Path = typer.Argument(..., help="a local file or directory"),
    remote_path: str = typer.Argument("/", help="where in the volume (a path ending in / means into that directory)"),
    force: bool = typer.Option(False, "--force", "-f", help="overwrite files that exist"),
) -> None:
    """Upload a file or a directory into a volume (all or nothing)."""
    volume = _volume(name)
    if not local_path.exists():
        raise NotFoundError(f"no local file or directory {str(local_path)!r}")
    try:
        with volume.batch_upload(force=force) as batch:
            if local_path.is_dir():
                batch.put_directory(local_path, remote_path)
            else:
                target = remote_path + local_path.name if remote_path.endswith("/") else remote_path
                batch.put_file(local_path, target)
    except FileExistsError as exc:
        raise AlreadyExistsError(str(exc).replace("force=True", "--force")) from None
    print(f"Uploaded {local_path} to {name}:{remote_path}")


@volume_cli.command("get")
def volume_get(
    name: str = typer.Argument(...),
    remote_path: str = typer.Argument(..., help="a file or directory in the volume"),
    local_path: str = typer.Argument(".", help="where to write it; '-' for stdout"),
    force: bool = typer.Option(False, "--force", "-f", help="overwrite local files that exist"),
) -> None:
    """Download a file or a directory from a volume."""
    volume = _volume(name)
    source = volume._path(remote_path)
    if not source.exists():
        raise NotFoundError(f"no file or directory {remote_path!r} in volume {name!r}")
    if local_path == "-":
        if source.is_dir():
            raise InvalidError(f"{remote_path!r} is a directory; give a local path to download it to")
        for chunk in volume.read_file(remote_path):
            sys.stdout.buffer.write(chunk)
        sys.stdout.flush()
        return
    dest = pathlib.Path(local_path)
    if dest.is_dir():
        dest = dest / source.name
    if dest.exists() and not force:
        raise InvalidError(f"{dest} exists already; pass --force to overwrite it")
    if source.is_dir():
        shutil.copytree(source, dest, dirs_exist_ok=True, symlinks=True)
    else:
        tmp = dest.with_name(f".{dest.name}.runner-part")
        shutil.copyfile(source, tmp)
        os.replace(tmp, dest)  # never a half-written file under the final name
    print(f"Downloaded {name}:{remote_path} to {dest}")


@volume_cli.command("rm")
def volume_rm(
    name: str = typer.Argument(...),
    remote_path: str = typer.Argument(...),
    recursive: bool = typer.Option(False, "--recursive", "-r", help="remove a directory with its contents"),
) -> None:
    """Remove a file or directory from a volume."""
    _volume(name).remove_file(remote_path, recursive=recursive)
    print(f"Removed {name}:{remote_path}")


@volume_cli.command("delete")
def volume_delete(
    name: str = typer.Argument(...),
    yes: bool = typer.Option(False, "--yes", "-y", help="do not ask for confirmation"),
) -> None:
    """Delete a named volume and everything in it."""
    from ._volume import Volume

    _volume(name)
    if not yes:
        if not sys.stdin.isatty():
            raise InvalidError(f"deleting volume {name!r} removes all its files; pass --yes to confirm")
        typer.confirm(f"Delete volume {name} and all its files?", abort=True)
    Volume.delete(name)
    print(f"Deleted volume {name}.")


# ---- secrets ---------------------------------------------------------------------------------
@secret_cli.command("create")
def secret_create(
    name: str = typer.Argument(...),
    pairs: Optional[List[str]] = typer.Argument(None, help="KEY=VALUE pairs"),
    from_dotenv: Optional[pathlib.Path] = typer.Option(None, "--from-dotenv", help="read KEY=VALUE lines from a file"),
    force: bool = typer.Option(False, "--force", help="replace a secret that exists"),
) -> None:
    """Store a named secret for Secret.from_name(NAME)."""
    from . import _secret

    values: dict[str, str] = {}
    if from_dotenv is not None:
        values.update(_secret.Secret.from_dotenv(from_dotenv).env())
    for number, pair in enumerate(pairs or [], 1):
        key, sep, value = pair.partition("=")
        if not sep or not key:  # never echo the argument: it may be a value typed without its key
            raise InvalidError(f"expected KEY=VALUE pairs, but pair {number} has no KEY= in front")
        values[key] = value
    if not values:
        raise InvalidError("give at least one KEY=VALUE (or --from-dotenv FILE)")
    _secret.save(name, values, force=force)
    print(f"Created secret {name} with keys {', '.join(sorted(values))}.")


@secret_cli.command("list")
def secret_list() -> None:
    """List the named secrets and their keys (never their values)."""
    from . import _secret

    for name, keys in _secret.names().items():
        print(f"{name}  {', '.join(keys)}")


@secret_cli.command("delete")
def secret_delete(name: str = typer.Argument(...)) -> None:
    """Delete a named secret."""
    from . import _secret

    _secret.delete(name)
    print(f"Deleted secret {name}.")

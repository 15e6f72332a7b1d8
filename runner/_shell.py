"""`runner shell FILE[::NAME]`: an interactive shell in the container a function would run in.

The container is made from the same pieces as the function's own: its image (built or found as
`runner run` would), its environment and secrets, its volumes and the store, and the app's source.
On Docker it is `docker run --rm -i[t]`: the Docker CLI owns the terminal (raw mode, resizes),
and secret values reach it through the environment of the CLI process, never its arguments. On
the embedded provider the shell is a host process with the same environment, with the volumes
bound in a private mount namespace.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from typing import Any

from ._mounts import bind_in_namespace, prepare_mount_points, remove_mount_points, storage_access
from ._resources import FunctionOptions
from .exception import InvalidError, ProviderError


def options_for(target: str | None, module: bool, image_ref: str | None, volumes: list[str],
                secrets: list[str]) -> tuple[str, FunctionOptions, str | None]:
    """(what the shell is for, its options, the app root to mount) from the command line."""
    from ._function import locate
    from ._image import Image
    from ._secret import Secret
    from ._volume import Volume

    extra_volumes = {f"/mnt/{name}": Volume.from_name(name) for name in volumes}
    for volume in extra_volumes.values():
        volume._host_dir()  # an unknown name fails here, saying how to create it
    extra_secrets = [Secret.from_name(name) for name in secrets]
    if target is None:
        if image_ref is None:
            raise InvalidError("give FILE.py[::NAME] to open a shell in a function's container, or --image REF")
        options = FunctionOptions.build(image=Image.from_registry(image_ref), volumes=extra_volumes, secrets=extra_secrets)
        return image_ref, options, None
    from ._entrypoint import load_module, pick

    mod, name = load_module(target, module)
    runnable = pick(mod, name, target.partition("::")[0])
    app, short = runnable.app, runnable.name.partition(".")[0]
    owner = app._functions.get(short) or app._classes.get(short)
    options = owner._options if owner is not None else app._options("function", {})
    root = locate(runnable.fn, options.serialized)[2] if owner is not None else None
    changes: dict[str, Any] = {}
    if image_ref is not None:
        changes["image"] = Image.from_registry(image_ref)
    if extra_volumes:
        changes["volumes"] = tuple(sorted({**dict(options.volumes), **extra_volumes}.items()))
    if extra_secrets:
        changes["secrets"] = options.secrets + tuple(extra_secrets)
    return runnable.name, options.replace(**changes), root


def open_shell(what: str, options: FunctionOptions, app_root: str | None, command: str | None) -> int:
    from ._providers import choose

    provider = choose()
    try:
        provider.validate(options.image, options.gpu, options.cpu, options.memory, what)
        prepared = provider.prepare(options.image) if options.image is not None else None
        env = dict(options.image.env_vars()) if options.image is not None else {}
        env.update(dict(options.env))
        for secret in options.secrets:
            env.update(secret.env())
        storage_env, binds = storage_access(dict(options.volumes), provider.name)
        env.update(storage_env)
        if provider.name == "docker":
            return _docker_shell(provider, prepared, env, binds, options, app_root, command)
        return _host_shell(env, binds, app_root, command)
    finally:
        provider.close()


def _docker_shell(provider: Any, image: str, env: dict, binds: list, options: FunctionOptions,
                  app_root: str | None, command: str | None) -> int:
    from ._providers._docker import APP_MOUNT, CLIENT_MOUNT, LABEL

    exe = shutil.which("docker")
    if exe is None:
        raise ProviderError("runner shell uses the Docker CLI, and `docker` is not on PATH; install it (docker.io)")
    argv = [exe, "run", "--rm", "-i", "--label", f"{LABEL}.owner={provider.owner}", "--label", f"{LABEL}.function=shell"]
    if sys.stdin.isatty() and sys.stdout.isatty():
        argv.append("-t")
    child_env = dict(os.environ)
    for key, value in env.items():
        argv += ["-e", key]  # the value comes from the CLI's environment, never its arguments
        child_env[key] = value
    argv += ["-e", f"PYTHONPATH={CLIENT_MOUNT}:/root", "-e", "RUNNER_IS_REMOTE=1"]
    for host, spec in provider._client_mounts().items():
        argv += ["--mount", f"type=bind,src={host},dst={spec['bind']},readonly"]
    if app_root:
        argv += ["--mount", f"type=bind,src={app_root},dst={APP_MOUNT},readonly"]
    for bind in binds:
        argv += ["--mount", f"type=bind,src={bind.host},dst={bind.target}" + (",readonly" if bind.read_only else "")]
    if options.cpu and options.cpu[1]:
        argv += ["--cpus", f"{options.cpu[1]:g}"]
    if options.memory and options.memory[1]:
        argv += ["--memory", f"{int(options.memory[1])}m"]
    if options.gpu:
        argv += ["--gpus", str(options.gpu[0].count)]
    argv += [image, "/bin/sh", "-c", command or "exec bash 2>/dev/null || exec sh"]
    return _wait(subprocess.Popen(argv, env=child_env))


def _host_shell(env: dict, binds: list, app_root: str | None, command: str | None) -> int:
    created = prepare_mount_points(binds)
    child_env = {**os.environ, **env, "RUNNER_IS_REMOTE": "1"}
    shell = os.environ.get("SHELL") or "/bin/sh"
    argv = [shell, "-c", command] if command else [shell]
    try:
        proc = subprocess.Popen(argv, env=child_env, cwd=app_root or None,
                                preexec_fn=(lambda: bind_in_namespace(binds)) if binds else None)
        return _wait(proc)
    finally:
        remove_mount_points(created)


def _wait(proc: subprocess.Popen) -> int:
    """Wait for the shell; Ctrl-C belongs to the shell, not to us."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        return proc.wait()
    finally:
        signal.signal(signal.SIGINT, previous)


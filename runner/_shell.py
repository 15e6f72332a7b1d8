"""`runner shell FILE[::NAME]`: an interactive shell in the container a function would run in.

The container is made from the same pieces as the function's own: its image (built or found as
`runner run` would), its environment and secrets, its volumes and the store, and the app's source.
It is the provider's own container for the function (`Provider.shell`): on Docker, the container
`start` would run, attached with `docker start -ai`, since the Docker CLI owns the terminal (raw
mode, resizes); on the embedded provider, a host shell with the same environment, with the
volumes bound in a private mount namespace.
"""

from __future__ import annotations

from typing import Any

from ._mounts import storage_access
from ._resources import FunctionOptions
from .exception import InvalidError


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
    from ._providers import ContainerRequest, choose

    provider = choose()
    try:
        provider.validate(options.image, options.gpu, options.cpu, options.memory, what)
        prepared = provider.prepare(options.image) if options.image is not None else None
        env = dict(options.image.env_vars()) if options.image is not None else {}
        env.update(dict(options.env))
        for secret in options.secrets:
            env.update(secret.env())
        storage_env, binds = storage_access(dict(options.volumes), provider.name)
        req = ContainerRequest(
            name="shell", image=options.image, env={**env, **storage_env, "RUNNER_IS_REMOTE": "1"}, cpu=options.cpu,
            memory=options.memory, gpu=options.gpu, token="", socket_dir="", socket_name="", app_root=app_root,
            session="", binds=binds,
        )
        return provider.shell(req, prepared, command)
    finally:
        provider.close()

"""`runner image build | ls | prune`: runner's images on the local Docker daemon.

`build` builds through `DockerProvider.prepare`, the same code `runner run` builds with, so an
image built here is found again by `runner run` without a build. `ls` and `prune` only ever look
at runner's images: tags whose repository is `runner-image` (or `<registry>/runner-image`), and
untagged step layers that runner's builder committed (they carry the `org.runner.build` label).
An image that also has a tag of another repository is never touched, nor is a base image.
"""

from __future__ import annotations

import time
from typing import Any

import typer

image_cli = typer.Typer(
    name="image",
    help="Build, list and prune runner's images on the local Docker daemon.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

_NONE_TAG = "<none>:<none>"
_BUSY_STATES = ("running", "paused", "restarting")


# ---- build -----------------------------------------------------------------------------------
@image_cli.command("build")
def build(
    target: str = typer.Argument(..., help="FILE.py[::NAME], or a module with -m"),
    module: bool = typer.Option(False, "-m", help="TARGET is a module path such as pkg.app"),
) -> None:
    """Build the images of the app's functions (or only NAME's) without running anything."""
    from ._entrypoint import _apps, load_module, pick
    from ._output import enable_output
    from .exception import NotFoundError

    mod, name = load_module(target, module)
    where = target.partition("::")[0]
    if name is not None:
        runnable = pick(mod, name, where)
        targets = _images_of(runnable.app, runnable.name, runnable.kind)
    else:
        apps = _apps(mod)
        if not apps:
            raise NotFoundError(f"{where} defines no App: add `app = modal.App()` and decorate functions with it")
        targets = [t for app in apps.values() for t in _images_of(app, None, None)]
    # One build per distinct image, named after every function that uses it.
    distinct: dict[str, tuple[Any, list[str]]] = {}
    for fn_name, image in targets:
        key = f"{image.base}\0{image.digest()}"
        if key in distinct:
            if fn_name not in distinct[key][1]:
                distinct[key][1].append(fn_name)
        else:
            distinct[key] = (image, [fn_name])
    if not distinct:
        typer.echo(f"{where}: no function or class with an image; nothing to build")
        return

    from ._providers._docker import DockerProvider

    _client().close()  # no daemon: the same one-line error as `ls` and `prune`
    provider = DockerProvider()
    try:
        with enable_output():
            for image, names in distinct.values():
                before = _tag_set(provider.client)
                started = time.perf_counter()
                ref = provider.prepare(image)
                took = time.perf_counter() - started
                how = _how(image, ref, before, _tag_set(provider.client), took)
                typer.echo(f"{', '.join(names)}: image {image.object_id} -> {ref} ({how})")
    finally:
        provider.close()


def _how(image: Any, ref: str, before: dict[str, str], after: dict[str, str], took: float) -> str:
    """What preparing the image took: nothing, a build of some steps, or a fetch. A step was built
    when its tag is new or now names another image (a forced rebuild)."""
    from ._providers._docker import IMAGE_REPO

    if not image.steps:
        return "base image, no steps to build"
    step_tags = [f"{IMAGE_REPO}:{digest[:40]}" for _, digest in image.chain()]
    built = sum(1 for t in step_tags if t in after and after[t] != before.get(t))
    if built:
        return f"built {built} of {len(step_tags)} steps in {took:.1f} s"
    if ref in before and after.get(ref) == before[ref]:
        return "cached, nothing built"
    return f"fetched in {took:.1f} s"


def _images_of(app: Any, name: str | None, kind: str | None) -> list[tuple[str, Any]]:
    """(function or class name, Image) for what NAME needs; all of the app's for an entrypoint."""
    funcs = [(n, f._options.image) for n, f in app._functions.items()]
    classes = [(n, c._options.image) for n, c in app._classes.items()]
    if name is not None and kind == "function":
        funcs, classes = [(n, i) for n, i in funcs if n == name], []
    elif name is not None and kind == "method":
        cls_name = name.partition(".")[0]
        funcs, classes = [], [(n, i) for n, i in classes if n == cls_name]
    return [(n, i) for n, i in funcs + classes if i is not None]


def _tag_set(client: Any) -> dict[str, str]:
    """Every local tag and the id of the image it names."""
    return {t: im["Id"] for im in client.api.images() for t in im.get("RepoTags") or () if t != _NONE_TAG}


# ---- ls --------------------------------------------------------------------------------------
@image_cli.command("ls")
def ls() -> None:
    """List runner's local images: id, size, created."""
    client = _client()
    try:
        rows = []
        for im in client.api.images():
            for tag in im.get("RepoTags") or ():
                if _is_runner_tag(tag):
                    rows.append((im["Created"], tag, _short_id(im["Id"]), im.get("Size") or 0))
        dangling = [im for im in client.api.images(all=True) if _is_runner_layer(im)]
    finally:
        client.close()
    if not rows:
        typer.echo("no runner images")
    else:
        rows.sort(key=lambda r: (-r[0], r[1]))
        table = [("IMAGE", "ID", "SIZE", "CREATED")] + [
            (tag, short, _size(size), _ago(created)) for created, tag, short, size in rows
        ]
        widths = [max(len(r[i]) for r in table) for i in range(3)]
        for r in table:
            typer.echo("  ".join(r[i].ljust(widths[i]) for i in range(3)) + "  " + r[3])
    if dangling:
        typer.echo(f"and {len(dangling)} untagged step layer{'s' * (len(dangling) != 1)} (`runner image prune` removes unused ones)")


# ---- prune -----------------------------------------------------------------------------------
@image_cli.command("prune")
def prune(
    all_: bool = typer.Option(False, "--all", "-a", help="Also remove images that only stopped containers use."),
) -> None:
    """Remove runner images no container uses, untagged step layers too; never other images."""
    import docker.errors

    client = _client()
    try:
        before = _layers_size(client)
        images = {im["Id"]: im for im in client.api.images(all=True)}
        busy: set[str] = set()  # used by a container that protects its image
        stopped_only: set[str] = set()  # used only by stopped containers
        for c in client.api.containers(all=True):
            image_id = c.get("ImageID") or ""
            if c.get("State") in _BUSY_STATES or not all_:
                busy.add(image_id)
            else:
                stopped_only.add(image_id)
        stopped_only -= busy
        candidates = {i for i, im in images.items() if _is_runner_image(im) and i not in busy}
        # Whatever stays keeps its ancestors: removing an ancestor's tag would free nothing.
        keep_ancestors: set[str] = set()
        for i in images:
            if i in candidates:
                continue
            parent = images[i].get("ParentId")
            while parent and parent not in keep_ancestors:
                keep_ancestors.add(parent)
                parent = images.get(parent, {}).get("ParentId")
        doomed = candidates - keep_ancestors
        removed, held = 0, 0
        for i in sorted(doomed, key=lambda i: -_depth(images, i)):  # children before parents
            im = images[i]
            force = i in stopped_only
            refs = [t for t in im.get("RepoTags") or () if t != _NONE_TAG] or [i]
            try:
                for ref in refs:
                    client.api.remove_image(ref, force=force, noprune=True)
                removed += 1
                held += force
            except docker.errors.NotFound:
                removed += 1  # gone already
            except docker.errors.APIError:
                pass  # in use since we looked (a container just started): keep it
        after = _layers_size(client)
    finally:
        client.close()
    freed = max(0, before - after) if before is not None and after is not None else None
    space = f", {_size(freed)} reclaimed" if freed is not None else ""
    kept = len(candidates) - len(doomed)
    notes = []
    if kept:
        notes.append(f"kept {kept} that an image in use builds on")
    if held:
        notes.append(f"{held} had stopped containers, whose layers stay on disk until those containers are removed")
    typer.echo(f"removed {removed} runner image{'s' * (removed != 1)}{space}" + "".join(f"; {n}" for n in notes))


def _depth(images: dict, i: str) -> int:
    n, parent = 0, images[i].get("ParentId")
    while parent and n < 10_000:
        n, parent = n + 1, images.get(parent, {}).get("ParentId")
    return n


def _layers_size(client: Any) -> int | None:
    try:
        return int(client.df().get("LayersSize") or 0)
    except Exception:  # noqa: BLE001 - the figure is a nicety
        return None


# ---- helpers ---------------------------------------------------------------------------------
def _client() -> Any:
    """A Docker client, or runner's one-line error when no daemon answers."""
    from ._providers._docker import docker_client

    return docker_client("runner image", "start dockerd")


def _repo_name() -> str:
    from ._providers._docker import IMAGE_REPO

    return IMAGE_REPO


def _is_runner_tag(tag: str) -> bool:
    repo = tag.rpartition(":")[0] if ":" in tag.rpartition("/")[2] else tag
    return repo == _repo_name() or repo.endswith("/" + _repo_name())


def _is_runner_layer(im: dict) -> bool:
    """An untagged image runner's builder committed (it labels every layer it commits)."""
    from ._providers._docker import LABEL

    tags = [t for t in im.get("RepoTags") or () if t != _NONE_TAG]
    return not tags and f"{LABEL}.build" in (im.get("Labels") or {})


def _is_runner_image(im: dict) -> bool:
    tags = [t for t in im.get("RepoTags") or () if t != _NONE_TAG]
    if tags:
        return all(_is_runner_tag(t) for t in tags)
    return _is_runner_layer(im)


def _short_id(image_id: str) -> str:
    return image_id.split(":", 1)[-1][:12]


def _size(n: int | None) -> str:
    n = n or 0
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.3g} {unit}"
        n /= 1000
    return f"{n} B"


def _ago(epoch: int) -> str:
    seconds = max(0, time.time() - epoch)
    for unit, span in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= span:
            k = int(seconds // span)
            return f"{k} {unit}{'s' * (k != 1)} ago"
    return f"{int(seconds)} seconds ago" if seconds >= 2 else "just now"

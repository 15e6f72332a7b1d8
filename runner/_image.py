"""Image definitions: a base and a chain of steps, each step a new immutable Image.

An Image only describes; a provider builds it. Every step has a content key (its arguments, the
digest of every file it reads, and the names of the secrets it uses), and an image's id chains the
keys of its steps: an unchanged image is found again without building, and a changed step
rebuilds from that step on.

What a build step reads but must not keep (a requirements file, a pickled function, secret
values, the host's CA bundle) reaches it through a read-only mount at build time only, so it never
lands in a layer, a label or the image history. Run steps find those files under
`$RUNNER_INPUTS`.

`add_local_*` with `copy=False` (Modal's default) is not a step: the files are mounted when a
container starts, so editing them never forces a rebuild. No build step may follow one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
import hashlib
import importlib.util
import json
import os
import pathlib
import re
import shlex
import sys
from typing import Any, Callable, Iterable, Sequence

from .exception import InvalidError, NotFoundError

SUPPORTED_PYTHON = ("3.9", "3.10", "3.11", "3.12", "3.13")
INPUTS = "$RUNNER_INPUTS"  # where a run step finds the files it reads, at build time only

Ignore = Sequence[str] | Callable[[pathlib.Path], bool] | None


def _client_only(method: Callable) -> Callable:
    """Image steps that read local files do so on the client only. Inside a container the app's
    module is imported again to find its functions, where those files need not exist; there the
    step is skipped, since the image is already built."""
    import functools

    @functools.wraps(method)
    def wrapper(self_or_first, *args, **kwargs):
        from ._context import is_local

        if is_local():
            return method(self_or_first, *args, **kwargs)
        return self_or_first if isinstance(self_or_first, Image) else Image("remote", None)

    return wrapper


def local_python() -> str:
    return f"{sys.version_info[0]}.{sys.version_info[1]}"


@dataclasses.dataclass(frozen=True)
class Step:
    kind: str  # "run" | "env" | "workdir" | "copy" | "config"
    args: tuple
    content: str = ""  # digest of the bytes the step reads: part of the key
    inputs: tuple = dataclasses.field(default=(), compare=False)  # (host path, name under $RUNNER_INPUTS)
    secrets: tuple = dataclasses.field(default=(), compare=False)  # exported to this step only
    ignore: Any = dataclasses.field(default=None, compare=False)  # for "copy" of a directory
    force: bool = dataclasses.field(default=False, compare=False)
    blobs: tuple = dataclasses.field(default=(), compare=False)  # (name, bytes) written under $RUNNER_INPUTS

    def key(self) -> str:
        names = sorted(k for s in self.secrets for k in s.env())
        return json.dumps([self.kind, self.args, self.content, names], default=str)

    def describe(self) -> str:
        if self.kind == "run":
            return f"RUN_FUNCTION {self.args[1]}" if self.blobs else f"RUN {self.args[0]}"
        if self.kind == "env":
            return "ENV " + " ".join(f"{k}=..." for k, _ in self.args)
        if self.kind == "workdir":
            return f"WORKDIR {self.args[0]}"
        if self.kind == "config":
            value = self.args[1]
            return f"{self.args[0].upper()} {json.dumps(list(value)) if isinstance(value, tuple) else value}"
        return f"COPY {self.args[0]} {self.args[1]}"


@dataclasses.dataclass(frozen=True)
class Mount:
    """Local files put in place when a container starts (`copy=False`)."""

    source: str
    target: str
    ignore: Any = None


# ---- local files -------------------------------------------------------------------------------
def _ignored(rel: pathlib.PurePosixPath, ignore: Ignore, path: pathlib.Path) -> bool:
    if ignore is None:
        return False
    if callable(ignore):
        return bool(ignore(path))
    parts = rel.parts
    for pattern in ignore:
        pattern = pattern.rstrip("/")
        for i in range(1, len(parts) + 1):
            prefix = pathlib.PurePosixPath(*parts[:i])
            if fnmatch.fnmatch(str(prefix), pattern) or prefix.match(pattern.removeprefix("**/")):
                return True
    return False


def local_files(src: str | os.PathLike, ignore: Ignore = None) -> list[tuple[pathlib.Path, str]]:
    """(path, relative posix name) of every file under `src` (or `src` itself), minus ignored ones."""
    root = pathlib.Path(src)
    if root.is_file():
        return [(root, root.name)]
    out = []
    for path in sorted(root.rglob("*")):
        rel = pathlib.PurePosixPath(path.relative_to(root).as_posix())
        if path.is_file() and not _ignored(rel, ignore, path):
            out.append((path, str(rel)))
    return out


def digest_files(src: str | os.PathLike, ignore: Ignore = None) -> str:
    h = hashlib.sha256()
    for path, rel in local_files(src, ignore):
        h.update(rel.encode() + b"\0")
        h.update(path.read_bytes())
        h.update(b"\1" if os.access(path, os.X_OK) else b"\0")
    return h.hexdigest()


def _python_of(tag: str) -> str | None:
    m = re.match(r"^(?:.*/)?python:(\d+\.\d+)", tag)
    return m.group(1) if m else None


class Image:
    """A container image: `Image.debian_slim().pip_install("numpy").env({...})`."""

    def __init__(self, base: str, python_version: str | None, steps: tuple[Step, ...] = (),
                 mounts: tuple[Mount, ...] = (), base_auth: Callable[[], dict] | None = None):
        self.base = base
        self.python_version = python_version  # None: not known until a container reports it
        self.steps = steps
        self.mounts = mounts
        # Credentials to pull the base: called when the base must be pulled, returns docker's
        # auth_config ({"username": ..., "password": ...}); never part of the image id.
        self.base_auth = base_auth

    def __repr__(self) -> str:
        return f"Image({self.base}, {len(self.steps)} steps)"

    def _extend(self, *steps: Step) -> Image:
        if self.mounts and steps:
            raise InvalidError(
                f"a build step ({steps[0].describe()[:60]}) cannot follow add_local_*(copy=False), whose files "
                "arrive only when a container starts: move the add_local_* call last, or pass copy=True"
            )
        return Image(self.base, self.python_version, self.steps + steps, self.mounts, self.base_auth)

    @property
    def object_id(self) -> str:
        return "im-" + self.digest()[:24]

    def digest(self) -> str:
        chain = self.chain()
        return chain[-1][1] if chain else hashlib.sha256(self.base.encode()).hexdigest()

    def chain(self) -> list[tuple[Step, str]]:
        """Each step with the id of the image that ends with it."""
        h = hashlib.sha256(self.base.encode())
        out = []
        for step in self.steps:
            h.update(step.key().encode())
            out.append((step, h.hexdigest()))
        return out

    def for_function(self, gpu: tuple) -> Image:
        """The image a function with these options runs on (project images add GPU packages)."""
        return self

    def env_vars(self) -> dict[str, str]:
        merged: dict[str, str] = {}
        for step in self.steps:
            if step.kind == "env":
                merged.update(dict(step.args))
        return merged

    # ---- bases -----------------------------------------------------------------------------
    @staticmethod
    def debian_slim(python_version: str | None = None, force_build: bool = False) -> Image:
        version = python_version or local_python()
        if not isinstance(version, str) or version not in SUPPORTED_PYTHON:
            raise InvalidError(f"debian_slim(python_version={version!r}): use one of {', '.join(SUPPORTED_PYTHON)}")
        return Image(f"python:{version}-slim-bookworm", version)

    @staticmethod
    def from_registry(tag: str, secret: Any = None, *, add_python: str | None = None, force_build: bool = False,
                      setup_dockerfile_commands: Sequence[str] = ()) -> Image:
        """An image from a registry; `secret` (REGISTRY_USERNAME, REGISTRY_PASSWORD) for a private one."""
        if not isinstance(tag, str) or not tag or any(c.isspace() for c in tag):
            raise InvalidError(f"from_registry: {tag!r} is not an image reference such as 'ubuntu:22.04'")
        if add_python is not None:
            raise InvalidError("from_registry(add_python=...) is not supported by this version of runner yet")
        auth = None
        if secret is not None:
            from ._registry_auth import basic_auth

            auth = basic_auth(tag, secret)
        image = Image(tag, _python_of(tag), base_auth=auth)
        return image.dockerfile_commands(*setup_dockerfile_commands) if setup_dockerfile_commands else image

    @staticmethod
    def from_aws_ecr(tag: str, secret: Any = None, *, add_python: str | None = None, force_build: bool = False,
                     setup_dockerfile_commands: Sequence[str] = ()) -> Image:
        """An image from AWS ECR; `secret` holds AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and AWS_REGION
        (without it, this machine's AWS credentials). Pulling needs boto3: `pip install 'runner[aws]'`."""
        from ._registry_auth import ecr_auth

        if add_python is not None:
            raise InvalidError("from_aws_ecr(add_python=...) is not supported by this version of runner yet")
        image = Image(tag, _python_of(tag), base_auth=ecr_auth(tag, secret))
        return image.dockerfile_commands(*setup_dockerfile_commands) if setup_dockerfile_commands else image

    @staticmethod
    def from_gcp_artifact_registry(tag: str, secret: Any = None, *, add_python: str | None = None,
                                   force_build: bool = False, setup_dockerfile_commands: Sequence[str] = ()) -> Image:
        """An image from GCP Artifact Registry; `secret` holds SERVICE_ACCOUNT_JSON (without it, this
        machine's application default credentials). Pulling needs google-auth: `pip install 'runner[gcp]'`."""
        from ._registry_auth import gcp_auth

        if add_python is not None:
            raise InvalidError(
                "from_gcp_artifact_registry(add_python=...) is not supported by this version of runner yet")
        image = Image(tag, _python_of(tag), base_auth=gcp_auth(tag, secret))
        return image.dockerfile_commands(*setup_dockerfile_commands) if setup_dockerfile_commands else image

    @staticmethod
    def micromamba(python_version: str | None = None, force_build: bool = False) -> Image:
        raise InvalidError(
            "Image.micromamba is not supported by this version of runner: it needs the micromamba binary and "
            "conda channels; use Image.debian_slim().pip_install/uv_pip_install, or from_registry with a conda image"
        )

    def micromamba_install(self, *packages: Any, **kwargs: Any) -> Image:
        raise InvalidError(
            "Image.micromamba_install is not supported by this version of runner: conda channels are not "
            "reachable from where it was built; install with pip_install or uv_pip_install instead"
        )

    @staticmethod
    @_client_only
    def from_dockerfile(path: str | os.PathLike, *, context_dir: str | os.PathLike | None = None,
                        force_build: bool = False, build_args: dict[str, str] | None = None) -> Image:
        """An image from a Dockerfile: its instructions become runner steps, cached one by one."""
        file = pathlib.Path(path).expanduser().resolve()
        if not file.is_file():
            raise NotFoundError(f"from_dockerfile: no file at {file}")
        context = pathlib.Path(context_dir).expanduser().resolve() if context_dir else file.parent
        base, steps = parse_dockerfile(file.read_text(), context, build_args or {}, where=str(file), force=force_build)
        if base is None:
            raise InvalidError(f"{file}: no FROM line")
        return Image(base, _python_of(base), steps)

    @staticmethod
    def from_project(path: str | os.PathLike = ".", *, python_version: str | None = None) -> Image:
        """The image a uv project describes (pyproject.toml and uv.lock): its locked dependencies,
        extras and groups except `dev` (and `cuda`, added for GPU functions only), and its own
        packages copied in. See runner/_project.py."""
        from ._project import from_project

        return from_project(path, python_version=python_version)

    # ---- steps -----------------------------------------------------------------------------
    def _pip_flags(self, index_url, extra_index_url, pre, find_links) -> list[str]:
        flags = []
        if index_url:
            flags += ["--index-url", index_url]
        if extra_index_url:
            flags += ["--extra-index-url", extra_index_url]
        if find_links:
            flags += ["--find-links", find_links]
        if pre:
            flags.append("--pre")
        return flags

    def pip_install(self, *packages: str | Sequence[str], index_url: str | None = None,
                    extra_index_url: str | None = None, pre: bool = False, find_links: str | None = None,
                    extra_options: str = "", force_build: bool = False, secrets: Sequence[Any] = ()) -> Image:
        pkgs = _flatten(packages, "pip_install")
        if not pkgs:
            return self
        flags = self._pip_flags(index_url, extra_index_url, pre, find_links)
        cmd = "python -m pip install --no-cache-dir " + " ".join(shlex.quote(x) for x in [*flags, *pkgs])
        cmd += f" {extra_options}" if extra_options else ""
        return self._extend(Step("run", (cmd,), secrets=_secrets(secrets), force=force_build))

    @_client_only
    def pip_install_from_requirements(self, requirements_txt: str | os.PathLike, find_links: str | None = None, *,
                                      index_url: str | None = None, extra_index_url: str | None = None,
                                      pre: bool = False, force_build: bool = False,
                                      secrets: Sequence[Any] = ()) -> Image:
        path = _existing_file(requirements_txt, "pip_install_from_requirements")
        flags = " ".join(shlex.quote(f) for f in self._pip_flags(index_url, extra_index_url, pre, find_links))
        cmd = f'python -m pip install --no-cache-dir {flags} -r "{INPUTS}/requirements.txt"'.replace("  ", " ")
        return self._extend(Step("run", (cmd,), digest_files(path), inputs=((str(path), "requirements.txt"),),
                                 secrets=_secrets(secrets), force=force_build))

    @_client_only
    def pip_install_from_pyproject(self, pyproject_toml: str | os.PathLike, optional_dependencies: Sequence[str] = (),
                                   **kwargs: Any) -> Image:
        import tomllib

        path = _existing_file(pyproject_toml, "pip_install_from_pyproject")
        project = tomllib.loads(path.read_text()).get("project", {})
        deps = list(project.get("dependencies", []))
        groups = project.get("optional-dependencies", {})
        for group in optional_dependencies:
            if group not in groups:
                raise InvalidError(f"{path}: no optional dependency group {group!r} (it has: {', '.join(groups) or 'none'})")
            deps += groups[group]
        return self.pip_install(*deps, **kwargs)

    def uv_pip_install(self, *packages: str | Sequence[str], index_url: str | None = None,
                       extra_index_url: str | None = None, pre: bool = False, find_links: str | None = None,
                       extra_options: str = "", force_build: bool = False, secrets: Sequence[Any] = ()) -> Image:
        """Install with uv (put in the image first), compiling bytecode at build time."""
        pkgs = _flatten(packages, "uv_pip_install")
        if not pkgs:
            return self
        flags = self._pip_flags(index_url, extra_index_url, pre, find_links)
        cmd = "uv pip install --system --compile-bytecode " + " ".join(shlex.quote(x) for x in [*flags, *pkgs])
        cmd += f" {extra_options}" if extra_options else ""
        return self._with_uv()._extend(Step("run", (cmd,), secrets=_secrets(secrets), force=force_build))

    @_client_only
    def uv_sync(self, uv_project_dir: str | os.PathLike = "./", *, groups: Sequence[str] | None = None,
                extras: Sequence[str] | None = None, frozen: bool = True, extra_options: str = "",
                force_build: bool = False, secrets: Sequence[Any] = ()) -> Image:
        """Install a uv project's locked dependencies (pyproject.toml and uv.lock): the exact pinned
        versions, the `dev` group left out unless named in `groups`, the project itself not installed."""
        project = pathlib.Path(uv_project_dir).expanduser().resolve()
        pyproject, lock = project / "pyproject.toml", project / "uv.lock"
        if not pyproject.is_file():
            raise NotFoundError(f"uv_sync: no pyproject.toml in {project}")
        if frozen and not lock.is_file():
            raise NotFoundError(f"uv_sync: no uv.lock in {project}; run `uv lock` there, or pass frozen=False")
        inputs = [(str(pyproject), "pyproject.toml")] + ([(str(lock), "uv.lock")] if lock.is_file() else [])
        flags = ["--frozen" if frozen else "--no-sources", "--no-hashes", "--no-emit-project"]
        chosen = list(groups or [])
        flags += [] if "dev" in chosen else ["--no-dev"]
        flags += [f"--group={g}" for g in chosen]
        flags += [f"--extra={e}" for e in extras or []]
        cmd = (
            f'rm -rf /tmp/runner-uv && cp -r "{INPUTS}" /tmp/runner-uv && cd /tmp/runner-uv && '
            f"uv export {' '.join(shlex.quote(f) for f in flags)} -o requirements.txt && "
            f"uv pip install --system --compile-bytecode -r requirements.txt {extra_options}".rstrip()
            + " && cd / && rm -rf /tmp/runner-uv"
        )
        digest = hashlib.sha256("".join(digest_files(path) for path, _ in inputs).encode()).hexdigest()
        return self._with_uv()._extend(Step("run", (cmd,), digest, inputs=tuple(inputs), secrets=_secrets(secrets),
                                            force=force_build))

    def _with_uv(self) -> Image:
        if any(s.kind == "run" and s.args == (_UV_INSTALL,) for s in self.steps):
            return self
        return self._extend(Step("run", (_UV_INSTALL,)))

    def apt_install(self, *packages: str | Sequence[str], force_build: bool = False,
                    secrets: Sequence[Any] = ()) -> Image:
        pkgs = _flatten(packages, "apt_install")
        if not pkgs:
            return self
        cmd = (
            "apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "
            + " ".join(shlex.quote(p) for p in pkgs)
            + " && rm -rf /var/lib/apt/lists/*"
        )
        return self._extend(Step("run", (cmd,), secrets=_secrets(secrets), force=force_build))

    def run_commands(self, *commands: str | Sequence[str], secrets: Sequence[Any] = (),
                     force_build: bool = False) -> Image:
        cmds = _flatten(commands, "run_commands")
        found = _secrets(secrets)
        return self._extend(*(Step("run", (c,), secrets=found, force=force_build) for c in cmds))

    @_client_only
    def run_function(self, raw_f: Callable, *, secrets: Sequence[Any] = (), args: Sequence[Any] = (),
                     kwargs: dict | None = None, force_build: bool = False, volumes: dict | None = None,
                     **unsupported: Any) -> Image:
        """Run `raw_f(*args, **kwargs)` in the image at build time; what it writes becomes a layer."""
        import cloudpickle

        if unsupported:
            raise InvalidError(f"run_function() got unsupported option(s) {', '.join(sorted(unsupported))}")
        if volumes:
            raise InvalidError("run_function(volumes=...) is not supported by this version of runner yet")
        if not callable(raw_f):
            raise InvalidError(f"run_function takes a function, got {type(raw_f).__name__}")
        import inspect

        try:
            source = inspect.getsource(raw_f)
        except (OSError, TypeError):
            source = raw_f.__qualname__
        module = sys.modules.get(getattr(raw_f, "__module__", ""))
        by_value = module is not None and module.__name__ not in sys.stdlib_module_names and module.__name__ != "__main__"
        if by_value:  # the build container cannot import the app's modules: ship the code itself
            cloudpickle.register_pickle_by_value(module)
        try:
            payload = cloudpickle.dumps((raw_f, tuple(args), dict(kwargs or {})))
        finally:
            if by_value:
                cloudpickle.unregister_pickle_by_value(module)
        digest = hashlib.sha256(source.encode() + cloudpickle.dumps((tuple(args), dict(kwargs or {})))).hexdigest()
        cmd = f'python -m runner._build_function "{INPUTS}/function.pkl"'
        return self._extend(Step("run", (cmd, raw_f.__qualname__), digest, blobs=(("function.pkl", payload),),
                                 secrets=_secrets(secrets), force=force_build))

    def env(self, vars: dict[str, str]) -> Image:  # noqa: A002 - Modal's name
        if not isinstance(vars, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in vars.items()):
            raise InvalidError("Image.env takes a dict of str to str")
        return self._extend(Step("env", tuple(sorted(vars.items()))))

    def workdir(self, path: str | os.PathLike) -> Image:
        path = str(path)
        if not path.startswith("/"):
            raise InvalidError(f"Image.workdir needs an absolute path, got {path!r}")
        return self._extend(Step("workdir", (path,)))

    def entrypoint(self, entrypoint_commands: Sequence[str]) -> Image:
        return self._extend(Step("config", ("Entrypoint", tuple(_strings(entrypoint_commands, "entrypoint")))))

    def shell(self, shell_commands: Sequence[str]) -> Image:
        """The shell later run steps go through, e.g. ["/bin/bash", "-c"]."""
        return self._extend(Step("config", ("Shell", tuple(_strings(shell_commands, "shell")))))

    @_client_only
    def dockerfile_commands(self, *commands: str | Sequence[str], context_dir: str | os.PathLike | None = None,
                            build_args: dict[str, str] | None = None, force_build: bool = False,
                            secrets: Sequence[Any] = ()) -> Image:
        """Dockerfile instructions (RUN, ENV, COPY, WORKDIR, ...) as runner steps."""
        text = "\n".join(_flatten(commands, "dockerfile_commands"))
        context = pathlib.Path(context_dir).expanduser().resolve() if context_dir else pathlib.Path.cwd()
        base, steps = parse_dockerfile(text, context, build_args or {}, where="dockerfile_commands",
                                       force=force_build, secrets=_secrets(secrets))
        if base is not None:
            raise InvalidError("dockerfile_commands: FROM is not allowed here; use Image.from_dockerfile or from_registry")
        return self._extend(*steps)

    # ---- local files -----------------------------------------------------------------------
    def _add_local(self, src: pathlib.Path, remote_path: str, copy: bool, ignore: Ignore) -> Image:
        if not remote_path.startswith("/"):
            raise InvalidError(f"add_local_*: remote_path must be absolute, got {remote_path!r}")
        if copy:
            return self._extend(Step("copy", (str(src), remote_path), digest_files(src, ignore), ignore=ignore))
        return Image(self.base, self.python_version, self.steps, self.mounts + (Mount(str(src), remote_path, ignore),),
                     self.base_auth)

    @_client_only
    def add_local_file(self, local_path: str | os.PathLike, remote_path: str, *, copy: bool = False) -> Image:
        src = pathlib.Path(local_path).expanduser().resolve()
        if not src.is_file():
            raise NotFoundError(f"add_local_file: no file at {src}")
        if remote_path.endswith("/"):
            remote_path += src.name
        return self._add_local(src, remote_path, copy, None)

    @_client_only
    def add_local_dir(self, local_path: str | os.PathLike, remote_path: str, *, copy: bool = False,
                      ignore: Ignore = None) -> Image:
        src = pathlib.Path(local_path).expanduser().resolve()
        if not src.is_dir():
            raise NotFoundError(f"add_local_dir: no directory at {src}")
        return self._add_local(src, remote_path, copy, ignore)

    @_client_only
    def add_local_python_source(self, *modules: str, copy: bool = False, ignore: Ignore = None) -> Image:
        """Local Python packages or modules, importable in the container as they are here."""
        image = self
        for name in modules:
            if not isinstance(name, str) or not name.isidentifier():
                raise InvalidError(f"add_local_python_source takes top-level module names, got {name!r}")
            spec = importlib.util.find_spec(name)
            if spec is None or spec.origin in (None, "built-in", "frozen"):
                raise NotFoundError(f"add_local_python_source: no local module {name!r} on this Python's path")
            if spec.submodule_search_locations:
                src = pathlib.Path(next(iter(spec.submodule_search_locations)))
                skip = ignore if ignore is not None else ["__pycache__", "*.pyc"]
                image = image._add_local(src.resolve(), f"/root/{name}", copy, skip)
            else:
                image = image._add_local(pathlib.Path(spec.origin).resolve(), f"/root/{name}.py", copy, None)
        return image

    @_client_only
    def trust_host_ca(self, bundle: str | os.PathLike | None = None) -> Image:
        """Keep the host's CA bundle in the image, for code that reaches TLS-inspected networks at
        run time. Builds trust it anyway (mounted per step); only this puts it in a layer."""
        from ._providers._docker import host_ca_bundle

        source = bundle or host_ca_bundle()
        if source is None:
            raise NotFoundError("trust_host_ca: this host has no CA bundle to trust (set SSL_CERT_FILE or pass bundle=)")
        target = "/etc/ssl/certs/runner-host-ca.pem"
        return self.add_local_file(source, target, copy=True).env(
            {var: target for var in ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "PIP_CERT", "CURL_CA_BUNDLE")}
        )

    @contextlib.contextmanager
    def imports(self):
        """Imports inside this block may fail on the client; they only need to work in the container."""
        from ._context import is_local

        try:
            yield
        except ImportError:
            if not is_local():
                raise


_UV_INSTALL = "python -m pip install --no-cache-dir uv"


def _flatten(items: Iterable[Any], what: str) -> list[str]:
    out: list[str] = []
    for item in items:
        if isinstance(item, str):
            out.append(item)
        elif isinstance(item, (list, tuple)):
            out.extend(_flatten(item, what))
        else:
            raise InvalidError(f"{what} takes strings or lists of strings, got {type(item).__name__}")
    return out


def _strings(items: Any, what: str) -> list[str]:
    if isinstance(items, str) or not all(isinstance(x, str) for x in items):
        raise InvalidError(f"{what} takes a list of strings, e.g. ['/bin/bash', '-c']")
    return list(items)


def _secrets(secrets: Sequence[Any]) -> tuple:
    from ._secret import Secret

    found = tuple(secrets or ())
    for s in found:
        if not isinstance(s, Secret):
            raise InvalidError(f"secrets must be runner.Secret objects, got {type(s).__name__}")
    return found


def _existing_file(path: str | os.PathLike, what: str) -> pathlib.Path:
    file = pathlib.Path(path).expanduser().resolve()
    if not file.is_file():
        raise NotFoundError(f"{what}: no file at {file}")
    return file


# ---- Dockerfile instructions -------------------------------------------------------------------
_CONFIG = {"ENTRYPOINT": "Entrypoint", "CMD": "Cmd", "SHELL": "Shell", "USER": "User", "EXPOSE": "ExposedPorts",
           "LABEL": "Labels", "STOPSIGNAL": "StopSignal"}


def _logical_lines(text: str) -> list[str]:
    lines, current = [], ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        lines.append((current + stripped).strip())
        current = ""
    if current.strip():
        lines.append(current.strip())
    return lines


def _substitute(text: str, args: dict[str, str]) -> str:
    def repl(m):
        name = m.group(1) or m.group(2)
        return args.get(name, m.group(0))

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", repl, text)


def _exec_or_shell(rest: str) -> list[str]:
    if rest.startswith("["):
        try:
            value = json.loads(rest)
        except json.JSONDecodeError:
            value = None
        if isinstance(value, list) and all(isinstance(x, str) for x in value):
            return value
    return ["/bin/sh", "-c", rest]


def parse_dockerfile(text: str, context: pathlib.Path, build_args: dict[str, str], *, where: str,
                     force: bool = False, secrets: tuple = ()) -> tuple[str | None, tuple[Step, ...]]:
    """Dockerfile instructions as runner steps: (the FROM image or None, steps)."""
    base: str | None = None
    args = dict(build_args)
    steps: list[Step] = []
    for line in _logical_lines(text):
        word, _, rest = line.partition(" ")
        op, rest = word.upper(), rest.strip()
        if op == "ARG":
            name, _, default = rest.partition("=")
            args.setdefault(name.strip(), default.strip().strip('"'))
            continue
        rest = _substitute(rest, args)
        if op == "FROM":
            if base is not None or steps:
                raise InvalidError(f"{where}: multi-stage builds (a second FROM) are not supported")
            base = rest.split()[0]
        elif op == "RUN":
            if rest.startswith("--"):
                raise InvalidError(f"{where}: RUN flags ({rest.split()[0]}) are not supported; use secrets= instead")
            argv = _exec_or_shell(rest)
            cmd = argv[2] if argv[:2] == ["/bin/sh", "-c"] else " ".join(shlex.quote(a) for a in argv)
            steps.append(Step("run", (cmd,), secrets=secrets, force=force))
        elif op == "ENV":
            if "=" in rest.split()[0]:
                pairs = [p.split("=", 1) for p in shlex.split(rest)]
            else:
                key, _, value = rest.partition(" ")
                pairs = [[key, value.strip()]]
            steps.append(Step("env", tuple(sorted((k, v) for k, v in pairs))))
        elif op == "WORKDIR":
            steps.append(Step("workdir", (rest,)))
        elif op in ("COPY", "ADD"):
            parts = shlex.split(rest)
            if any(p.startswith("--") for p in parts):
                raise InvalidError(f"{where}: {op} flags ({[p for p in parts if p.startswith('--')][0]}) are not supported")
            *sources, dest = parts
            for source in sources:
                if "://" in source:
                    raise InvalidError(f"{where}: {op} from a URL is not supported; download it in a RUN step")
                src = (context / source).resolve()
                if not src.exists():
                    raise NotFoundError(f"{where}: {op} {source}: no such file in {context}")
                target = dest
                if dest.endswith("/") or len(sources) > 1:
                    target = dest.rstrip("/") + "/" + (src.name if src.is_file() else "")
                steps.append(Step("copy", (str(src), target.rstrip("/") or "/"), digest_files(src), force=force))
        elif op in _CONFIG:
            if op in ("ENTRYPOINT", "CMD", "SHELL"):
                value: Any = tuple(_exec_or_shell(rest))
            elif op == "EXPOSE":
                value = tuple(sorted(p if "/" in p else f"{p}/tcp" for p in rest.split()))
            elif op == "LABEL":
                value = tuple(sorted(tuple(p.split("=", 1)) for p in shlex.split(rest)))
            else:
                value = rest
            steps.append(Step("config", (_CONFIG[op], value)))
        elif op in ("MAINTAINER", "ONBUILD", "HEALTHCHECK", "VOLUME"):
            raise InvalidError(f"{where}: {op} is not supported")
        else:
            raise InvalidError(f"{where}: unknown instruction {word!r}")
    return base, tuple(steps)

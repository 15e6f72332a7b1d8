"""Project-aware images: `Image.from_project(".")` builds the image a uv project describes.

Everything is read and decided on the client, from pyproject.toml and uv.lock:

- the locked versions of the project's dependencies, of every optional-dependency extra and of
  every dependency group are installed (with `Image.uv_sync`), except the `dev` group and the
  `cuda` group/extra. Packages from local sources (path, directory, editable, workspace members)
  are not installed from the lock, since their sources are not in the image; their import
  packages are shipped instead, like the project's own. For each `[tool.uv] conflicts` set only
  one member is installed: the first listed (on GPU functions, `cuda` when it is in the set);
- the project's import packages (from the build backend's configuration, else the directories
  with an `__init__.py` under the project root or `src/`) are copied into `/root` as a layer, so
  they import in the container as they do here;
- for a function that asks for a GPU, `for_function(gpu)` gives the same image with the `cuda`
  group/extra installed too (in the same install step, so a `cpu`/`cuda` pair declared as
  conflicting swaps cleanly): the same code runs on the CPU locally and picks up GPU packages on
  GPU functions only.

Inside a container, where the app's module is imported again, nothing is read: the image is built.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import os
import pathlib
import re
from typing import Any

from ._image import Image, Step, local_python
from .exception import InvalidError, NotFoundError

CUDA = "cuda"  # the group/extra installed only for functions that ask for a GPU
EXCLUDED_GROUPS = ("dev",)  # never installed in project images
_LOCAL_SOURCES = ("editable", "path", "directory", "virtual")
_SKIP = ["__pycache__", "*.pyc"]


def _norm(name: str) -> str:
    """PEP 503/685 normalization, as uv applies it to package, extra and group names."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _toml(path: pathlib.Path) -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python < 3.11
        try:
            import tomli as tomllib  # type: ignore[no-redef]
        except ModuleNotFoundError:
            raise InvalidError("Image.from_project needs Python 3.11+ (tomllib) or the tomli package") from None
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise InvalidError(f"{path}: not valid TOML ({exc})") from None


@dataclasses.dataclass(frozen=True)
class Project:
    """What from_project read: the choices it made, for messages and tests."""

    root: pathlib.Path
    name: str
    groups: tuple[str, ...]  # installed on every function
    extras: tuple[str, ...]
    gpu_groups: tuple[str, ...]  # installed on GPU functions instead
    gpu_extras: tuple[str, ...]
    local_packages: tuple[str, ...]  # locked packages from local sources: not installed, shipped
    sources: tuple[tuple[str, str], ...]  # (host path, path in the container) of shipped code

    @property
    def has_cuda(self) -> bool:
        return (self.gpu_groups, self.gpu_extras) != (self.groups, self.extras)


# ---- reading the project -----------------------------------------------------------------------
def _conflict_choice(conflicts: list, groups: list[str], extras: list[str], gpu: bool) -> tuple[set, set]:
    """The (groups, extras) to leave out: of each conflict set, all but one member."""
    drop_groups, drop_extras = set(), set()
    for members in conflicts or []:
        items = [("group", _norm(m["group"])) if "group" in m else ("extra", _norm(m["extra"]))
                 for m in members if isinstance(m, dict) and ("group" in m or "extra" in m)]
        present = [(k, n) for k, n in items if n in (groups if k == "group" else extras)]
        if len(present) < 2:
            continue
        keep = next((it for it in present if it[1] == CUDA), None) if gpu else None
        keep = keep or next((it for it in present if it[1] != CUDA), present[0])
        for kind, name in present:
            if (kind, name) != keep:
                (drop_groups if kind == "group" else drop_extras).add(name)
    return drop_groups, drop_extras


def _lock_info(lock: dict, project_name: str) -> tuple[dict | None, list[tuple[str, str, str]]]:
    """(the project's own entry in uv.lock, [(name, kind, path)] of packages from local sources)."""
    root_entry, local = None, []
    for pkg in lock.get("package", []):
        source = pkg.get("source") or {}
        if _norm(pkg.get("name", "")) == project_name and any(source.get(k) == "." for k in _LOCAL_SOURCES):
            root_entry = pkg
            continue
        for kind in _LOCAL_SOURCES:
            if kind in source:
                local.append((_norm(pkg["name"]), kind, str(source[kind])))
                break
    return root_entry, local


def _check_lock_matches(root_entry: dict | None, groups: list[str], extras: list[str], lock_path: pathlib.Path) -> None:
    """A group or extra pyproject.toml has but the lock lacks: the lock is stale."""
    if root_entry is None:
        return
    meta = root_entry.get("metadata") or {}
    missing = []
    if "requires-dev" in meta or "dev-dependencies" in root_entry:
        known = {_norm(g) for g in meta.get("requires-dev", {})} | {_norm(g) for g in root_entry.get("dev-dependencies", {})}
        missing += [f"group {g!r}" for g in groups if g not in known]
    if "provides-extras" in meta:
        known = {_norm(e) for e in meta["provides-extras"]}
        missing += [f"extra {e!r}" for e in extras if e not in known]
    if missing:
        raise InvalidError(
            f"{lock_path} is out of date with pyproject.toml (it has no {', '.join(missing)}): run `uv lock` there"
        )


def _rel(root: pathlib.Path, value: str, what: str) -> pathlib.Path:
    path = (root / value).resolve()
    if not path.exists():
        raise NotFoundError(f"{root / 'pyproject.toml'}: {what} names {value!r}, but {path} does not exist")
    return path


def _find_packages(where: pathlib.Path, include: list[str] | None = None, exclude: list[str] = ()) -> list[pathlib.Path]:
    if not where.is_dir():
        return []
    out = []
    for d in sorted(where.iterdir()):
        if not d.is_dir() or not d.name.isidentifier():
            continue
        if any(fnmatch.fnmatch(d.name, p.split(".")[0]) for p in exclude):
            continue
        if include is not None:
            if any(fnmatch.fnmatch(d.name, p.split(".")[0]) for p in include):
                out.append(d)
        elif (d / "__init__.py").is_file():
            out.append(d)
    return out


def project_sources(root: pathlib.Path, pyproject: dict) -> list[pathlib.Path]:
    """The project's top-level import packages (directories) and single-file modules (files)."""
    tool = pyproject.get("tool") or {}
    found: list[pathlib.Path] = []

    st = tool.get("setuptools") or {}
    package_dir = st.get("package-dir") or {}
    base = root / package_dir.get("", ".")
    packages = st.get("packages")
    if isinstance(packages, list):
        for name in packages:
            top = name.split(".")[0]
            found.append(_rel(root, package_dir[top], "tool.setuptools.package-dir") if top in package_dir
                         else _rel(base, top, "tool.setuptools.packages"))
    elif isinstance(packages, dict) and "find" in packages:
        find = packages["find"] or {}
        for where in find.get("where", ["."]):
            found += _find_packages(root / where, find.get("include"), find.get("exclude", []))
    for name in st.get("py-modules") or []:
        found.append(_rel(base, f"{name}.py", "tool.setuptools.py-modules"))

    hatch = tool.get("hatch") or {}
    hatch_build = hatch.get("build") or {}
    for entry in ((hatch_build.get("targets") or {}).get("wheel") or {}).get("packages") or hatch_build.get("packages") or []:
        found.append(_rel(root, entry, "tool.hatch.build packages"))

    uv_backend = (tool.get("uv") or {}).get("build-backend") or {}
    if "module-name" in uv_backend:
        names = uv_backend["module-name"]
        module_root = root / uv_backend.get("module-root", "src")
        for name in [names] if isinstance(names, str) else names:
            top = name.split(".")[0]
            path = module_root / top
            found.append(path if path.is_dir() else _rel(module_root, f"{top}.py", "tool.uv.build-backend.module-name"))

    flit = ((tool.get("flit") or {}).get("module") or {}).get("name")
    if flit:
        for candidate in (root / flit, root / "src" / flit, root / f"{flit}.py", root / "src" / f"{flit}.py"):
            if candidate.exists():
                found.append(candidate)
                break

    for entry in (tool.get("poetry") or {}).get("packages") or []:
        if isinstance(entry, dict) and "include" in entry and not any(c in entry["include"] for c in "*?["):
            found.append(_rel(root / entry.get("from", "."), entry["include"], "tool.poetry.packages"))

    if not found:  # no configuration: the packages under the root or src/
        found = _find_packages(root) + _find_packages(root / "src")

    out, names = [], set()
    for path in found:
        name = path.stem if path.is_file() else path.name
        if name not in names:
            names.add(name)
            out.append(path.resolve())
    return out


def read_project(path: str | os.PathLike = ".") -> tuple[Project, dict]:
    root = pathlib.Path(path).expanduser().resolve()
    if root.name == "pyproject.toml" and root.is_file():
        root = root.parent
    if not root.is_dir():
        raise NotFoundError(f"from_project: no directory {root}")
    pyproject_path, lock_path = root / "pyproject.toml", root / "uv.lock"
    if not pyproject_path.is_file():
        raise NotFoundError(f"from_project: no pyproject.toml in {root}; pass the directory of your project")
    if not lock_path.is_file():
        raise NotFoundError(
            f"from_project: no uv.lock in {root}; run `uv lock` there to pin the project's dependencies "
            "(and commit uv.lock)"
        )
    pyproject, lock = _toml(pyproject_path), _toml(lock_path)
    meta = pyproject.get("project") or {}
    name = _norm(meta.get("name") or root.name)
    groups = [_norm(g) for g in pyproject.get("dependency-groups") or {}]
    groups = [g for g in dict.fromkeys(groups) if g not in EXCLUDED_GROUPS]
    extras = list(dict.fromkeys(_norm(e) for e in meta.get("optional-dependencies") or {}))
    root_entry, local = _lock_info(lock, name)
    _check_lock_matches(root_entry, groups, extras, lock_path)

    conflicts = (pyproject.get("tool") or {}).get("uv", {}).get("conflicts") or []

    def choose(gpu: bool) -> tuple[tuple[str, ...], tuple[str, ...]]:
        drop_g, drop_e = _conflict_choice(conflicts, groups, extras, gpu)
        keep_g = tuple(g for g in groups if g not in drop_g and (gpu or g != CUDA))
        keep_e = tuple(e for e in extras if e not in drop_e and (gpu or e != CUDA))
        return keep_g, keep_e

    cpu_groups, cpu_extras = choose(False)
    gpu_groups, gpu_extras = choose(True) if CUDA in groups or CUDA in extras else (cpu_groups, cpu_extras)

    sources = project_sources(root, pyproject)
    for _pkg, _kind, rel in local:  # local dependencies: their code shipped like the project's
        dep = (root / rel).resolve()
        if dep.is_dir() and (dep / "pyproject.toml").is_file():
            sources += project_sources(dep, _toml(dep / "pyproject.toml"))
    shipped: list[tuple[str, str]] = []
    seen: dict[str, pathlib.Path] = {}
    for src in sources:
        mod = src.stem if src.is_file() else src.name
        if mod in seen and seen[mod] != src:
            raise InvalidError(f"from_project: two local packages are named {mod!r} ({seen[mod]} and {src})")
        if mod not in seen:
            seen[mod] = src
            shipped.append((str(src), f"/root/{mod}.py" if src.is_file() else f"/root/{mod}"))
    project = Project(root, name, cpu_groups, cpu_extras, gpu_groups, gpu_extras,
                      tuple(p for p, _, _ in local), tuple(shipped))
    return project, pyproject


# ---- the image ---------------------------------------------------------------------------------
def _sync_step(root: pathlib.Path, python_version: str, groups, extras, local_packages) -> Step:
    """Image.uv_sync's install step, told also not to emit local packages or default groups."""
    step = Image.debian_slim(python_version).uv_sync(root, groups=list(groups), extras=list(extras)).steps[-1]
    cmd = step.args[0]
    if "uv export " not in cmd:  # uv_sync changed shape: this must be revisited
        raise RuntimeError("runner: Image.uv_sync no longer runs `uv export`; update runner/_project.py")
    flags = ["--no-default-groups"] + [f"--no-emit-package={p}" for p in local_packages]
    return dataclasses.replace(step, args=(cmd.replace("uv export ", "uv export " + " ".join(flags) + " ", 1),)
                               + step.args[1:])


class ProjectImage(Image):
    """An image from `Image.from_project`: carries its GPU variant, chosen per function."""

    _project: Project
    _sync_index: int  # where the dependency install step is in `steps`
    _gpu_sync: Step | None  # that step with the cuda group/extra; None: nothing to add

    def __repr__(self) -> str:
        gpu = " +cuda" if self._gpu_sync is None and self._project.has_cuda else ""
        return f"ProjectImage({self._project.name}{gpu}, {self.base}, {len(self.steps)} steps)"

    @property
    def project(self) -> Project:
        return self._project

    def _like(self, plain: Image, **changes: Any) -> ProjectImage:
        """`plain` (an Image made from this one by a step) as a ProjectImage with this one's project."""
        new = object.__new__(ProjectImage)
        new.__dict__.update(plain.__dict__)
        for key in ("_project", "_sync_index", "_gpu_sync"):
            setattr(new, key, changes.get(key, getattr(self, key)))
        return new

    def _extend(self, *steps: Step) -> Image:
        return self._like(super()._extend(*steps))

    def _add_local(self, src, remote_path, copy, ignore) -> Image:
        return self._like(super()._add_local(src, remote_path, copy, ignore))

    def for_function(self, gpu: tuple) -> Image:
        """CPU functions: this image. GPU functions: this image with the `cuda` group/extra."""
        if not gpu or self._gpu_sync is None:
            return self
        i = self._sync_index
        plain = Image.__new__(Image)
        plain.__dict__.update(self.__dict__)
        plain.steps = self.steps[:i] + (self._gpu_sync,) + self.steps[i + 1:]
        return self._like(plain, _gpu_sync=None)


def from_project(path: str | os.PathLike = ".", *, python_version: str | None = None) -> Image:
    from ._context import is_local

    if not is_local():  # in a container: the image is built already, and the files need not be here
        return Image("remote", None)
    if python_version is not None and not isinstance(python_version, str):
        raise InvalidError(f"from_project(python_version=...) takes a string such as '3.12', got {python_version!r}")
    project, _ = read_project(path)
    version = python_version or local_python()
    image = Image.debian_slim(version)
    cpu_sync = _sync_step(project.root, version, project.groups, project.extras, project.local_packages)
    image = image._with_uv()._extend(cpu_sync)
    sync_index = len(image.steps) - 1
    gpu_sync = None
    if project.has_cuda:
        gpu_sync = _sync_step(project.root, version, project.gpu_groups, project.gpu_extras, project.local_packages)
    for src, target in project.sources:
        source = pathlib.Path(src)
        image = image._add_local(source, target, True, None if source.is_file() else _SKIP)
    new = object.__new__(ProjectImage)
    new.__dict__.update(image.__dict__)
    new._project, new._sync_index, new._gpu_sync = project, sync_index, gpu_sync
    return new

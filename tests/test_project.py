"""Project images (`Image.from_project`) and the Apparatus, for real on each provider.

The test project (tests/apps/assets/proj) is a uv project with a committed uv.lock: six as its
dependency, an extra `fancy` (idna), groups `dev` (iniconfig), `serve` (attrs) and `cuda`
(packaging, standing in for CUDA wheels: there is no GPU here), a local editable dependency
`localdep` under libs/, and its own package `projpkg`.
"""

from __future__ import annotations

import asyncio
import shutil
import time

import pytest
from apps import project_app
from apps.project_app import PROJ

import runner
from runner._project import ProjectImage, project_sources
from runner._resources import parse_gpu
from runner.exception import InvalidError, NotFoundError, ProviderError

T4 = parse_gpu("T4")


def _sync_step(image) -> str:
    return image.steps[image._sync_index].args[0]


# ---- what from_project decides, on the client ----------------------------------------------------
def test_from_project_installs_the_locked_groups_and_extras_but_dev_and_cuda():
    image = runner.Image.from_project(PROJ)
    assert isinstance(image, ProjectImage)
    project = image.project
    assert (project.name, project.groups, project.extras) == ("projdemo", ("serve",), ("fancy",))
    assert (project.gpu_groups, project.gpu_extras) == (("serve", "cuda"), ("fancy",))
    assert project.local_packages == ("localdep",)
    sync = _sync_step(image)
    assert "uv export" in sync and "--frozen" in sync and "--group=serve" in sync and "--extra=fancy" in sync
    assert "--no-dev" in sync and "--no-default-groups" in sync and "--no-emit-package=localdep" in sync
    assert "cuda" not in sync and "--group=dev" not in sync
    copies = [s.args for s in image.steps if s.kind == "copy"]
    assert copies == [(str(PROJ / "projpkg"), "/root/projpkg"), (str(PROJ / "libs/localdep/localdep"), "/root/localdep")]
    assert image.python_version == runner._image.local_python()
    assert runner.Image.from_project(PROJ, python_version="3.12").base == "python:3.12-slim-bookworm"
    # The directory or its pyproject.toml; the same content gives the same image.
    assert runner.Image.from_project(PROJ / "pyproject.toml").object_id == image.object_id


def test_for_function_adds_the_cuda_group_only_for_gpu_functions():
    image = runner.Image.from_project(PROJ)
    assert image.for_function(()) is image
    gpu_image = image.for_function(T4)
    assert gpu_image is not image and gpu_image.object_id != image.object_id
    assert "--group=serve --group=cuda" in _sync_step(gpu_image)
    assert [s.kind for s in gpu_image.steps] == [s.kind for s in image.steps]  # one install step, swapped
    assert gpu_image.for_function(T4) is gpu_image and gpu_image.for_function(()) is gpu_image
    # Through the decorators: FunctionOptions.build resolves the image per function.
    app = runner.App("project-options", image=image)
    cpu_fn = app.function()(project_app.square)
    gpu_fn = app.function(gpu="T4")(project_app.add)
    assert cpu_fn._options.image is image
    assert gpu_fn._options.image.object_id == gpu_image.object_id
    # Steps chained after from_project keep the GPU variant (and come after the install).
    chained = image.env({"MODE": "x"}).run_commands("true")
    assert isinstance(chained, ProjectImage) and chained.env_vars() == {"MODE": "x"}
    assert "--group=cuda" in _sync_step(chained.for_function(T4))
    assert chained.for_function(T4).env_vars() == {"MODE": "x"}


def _project(tmp_path, pyproject: str, lock: str = "version = 1\n", files=()):
    (tmp_path / "pyproject.toml").write_text(pyproject)
    if lock is not None:
        (tmp_path / "uv.lock").write_text(lock)
    for name in files:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("VALUE = 1\n")
    return tmp_path


def test_a_project_without_cuda_is_the_same_image_for_gpu_functions(tmp_path):
    root = _project(tmp_path, '[project]\nname = "plain"\ndependencies = []\n', files=["plain/__init__.py"])
    image = runner.Image.from_project(root)
    assert image.for_function(T4) is image and image.for_function(()) is image
    assert [s.args[1] for s in image.steps if s.kind == "copy"] == ["/root/plain"]


def test_missing_files_are_clear_errors(tmp_path):
    with pytest.raises(NotFoundError, match="no pyproject.toml in"):
        runner.Image.from_project(tmp_path)
    _project(tmp_path, '[project]\nname = "x"\n', lock=None)
    with pytest.raises(NotFoundError, match=r"no uv\.lock in .*run `uv lock`"):
        runner.Image.from_project(tmp_path)


def test_a_stale_lock_is_caught_on_the_client(tmp_path):
    root = tmp_path / "proj"
    shutil.copytree(PROJ, root)
    text = (root / "pyproject.toml").read_text().replace('serve = [', 'docs = ["idna==3.7"]\nserve = [')
    (root / "pyproject.toml").write_text(text)
    with pytest.raises(InvalidError, match=r"out of date.*group 'docs'.*uv lock"):
        runner.Image.from_project(root)


def test_conflicting_cpu_and_cuda_extras_swap(tmp_path):
    root = _project(tmp_path, """
[project]
name = "torchy"
dependencies = []
[project.optional-dependencies]
cpu = ["torch==2.5.1"]
cuda = ["torch==2.5.1"]
[tool.uv]
conflicts = [[{ extra = "cpu" }, { extra = "cuda" }]]
""")
    image = runner.Image.from_project(root)
    assert "--extra=cpu" in _sync_step(image) and "cuda" not in _sync_step(image)
    gpu = _sync_step(image.for_function(T4))
    assert "--extra=cuda" in gpu and "--extra=cpu" not in gpu


def test_packages_come_from_the_build_configuration(tmp_path):
    cases = {
        "setuptools": (
            '[tool.setuptools]\npackages = ["alpha", "alpha.sub"]\npy-modules = ["solo"]\n'
            + '[tool.setuptools.package-dir]\n"" = "lib"\n',
            ["lib/alpha/__init__.py", "lib/solo.py"],
            ["alpha", "solo.py"],
        ),
        "find": ('[tool.setuptools.packages.find]\nwhere = ["src"]\nexclude = ["tests*"]\n',
                 ["src/beta/__init__.py", "src/tests/__init__.py", "src/notapkg/x.py"], ["beta"]),
        "hatch": ('[tool.hatch.build.targets.wheel]\npackages = ["src/gamma"]\n', ["src/gamma/__init__.py",
                                                                                   "src/other/__init__.py"], ["gamma"]),
        "uv_build": ('[tool.uv.build-backend]\nmodule-name = "delta"\n', ["src/delta/__init__.py"], ["delta"]),
        "fallback": ("", ["eps/__init__.py", "src/zeta/__init__.py", "data/x.txt", "script.py"], ["eps", "zeta"]),
    }
    for name, (config, files, expected) in cases.items():
        root = tmp_path / name
        root.mkdir()
        _project(root, f'[project]\nname = "{name}"\n' + config, files=files)
        import tomllib

        found = project_sources(root, tomllib.loads((root / "pyproject.toml").read_text()))
        assert [p.name for p in found] == expected, name
    root = tmp_path / "missing"
    root.mkdir()
    _project(root, '[project]\nname = "m"\n[tool.hatch.build.targets.wheel]\npackages = ["src/nope"]\n')
    with pytest.raises(NotFoundError, match="src/nope"):
        runner.Image.from_project(root)


def test_containers_importing_the_app_need_no_project_files(monkeypatch, tmp_path):
    monkeypatch.setenv("RUNNER_IS_REMOTE", "1")
    image = runner.Image.from_project(tmp_path / "not-here")
    assert image.for_function(T4) is image


# ---- project images built and run on docker ------------------------------------------------------
def test_project_image_runs_the_projects_code_with_its_locked_packages(docker_provider):
    with runner.Apparatus(project=PROJ, provider="docker") as ap:
        got = ap.run(project_app.probe)
    assert (got["six"], got["idna"], got["attrs"]) == ("1.16.0", "3.7", "23.2.0"), got
    assert (got["packaging"], got["iniconfig"]) == (None, None), "no cuda, no dev on a CPU function"
    assert (got["projpkg"], got["projpkg_greet"], got["projpkg_file"]) == ("from projpkg", "hello runner",
                                                                           "/root/projpkg/__init__.py")
    assert (got["localdep_module"], got["localdep"], got["projdemo"]) == ("from localdep", None, None), \
        "local code is shipped, not installed"


def test_the_gpu_variant_has_the_cuda_packages(docker_provider):
    # No GPU here: run the image a GPU function would get, from a function that asks for none.
    gpu_image = runner.Image.from_project(PROJ).for_function(T4)
    with runner.Apparatus(gpu_image, provider="docker") as ap:
        got = ap.run(project_app.probe)
    assert (got["packaging"], got["six"], got["attrs"], got["iniconfig"]) == ("24.1", "1.16.0", "23.2.0", None)
    assert got["projpkg"] == "from projpkg"


# ---- the Apparatus -------------------------------------------------------------------------------
def test_apparatus_run_map_arun_amap(provider):
    with runner.Apparatus(project=PROJ, provider=provider, timeout=60) as ap:
        assert not ap.running
        assert ap.run(project_app.square, 7) == 49
        assert ap.running
        first, second = ap.run(project_app.where), ap.run(project_app.where)
        assert first == second and first["local"] is False, "the warm container serves again"
        assert ap.map(project_app.square, range(20)) == [x * x for x in range(20)]
        assert ap.map(project_app.add, [1, 2, 3], [10, 20, 30], kwargs={"scale": 2}) == [22, 44, 66]
        assert ap.run(project_app.add, 1, 2, scale=3) == 9

        async def both():
            one = await ap.arun(project_app.slow_square, 5)
            many = await ap.amap(project_app.slow_square, range(8))
            pair = await asyncio.gather(ap.arun(project_app.square, 2), ap.arun(project_app.add, 2, 3))
            return one, many, pair

        assert asyncio.run(both()) == (25, [x * x for x in range(8)], [4, 5])
        with pytest.raises(ValueError, match="no good: 3"):
            ap.run(project_app.fail, 3)
        got = ap.map(project_app.fail, [1], return_exceptions=True)
        assert isinstance(got[0], ValueError)
    assert not ap.running


def test_apparatus_ships_main_and_local_functions_by_value(provider):
    offset = 100

    def shifted(x):  # a closure: not importable by name, shipped by value
        return x + offset

    with runner.Apparatus(provider=provider) as ap:
        assert ap.run(shifted, 1) == 101
        assert ap.map(lambda x: -x, [1, 2]) == [-1, -2]
        assert ap.run(project_app.square, 3) == 9


def test_apparatus_async_context_and_reuse_after_close(provider):
    async def main():
        async with runner.Apparatus(provider=provider) as ap:
            return await ap.arun(project_app.square, 4), ap

    value, ap = asyncio.run(main())
    assert value == 16 and not ap.running
    assert ap.run(project_app.square, 5) == 25, "a closed Apparatus starts afresh"
    ap.close()
    ap.close()
    assert not ap.running


def test_constructing_an_apparatus_builds_nothing(docker_provider, monkeypatch):
    from runner._providers._docker import DockerProvider

    class Built(Exception):
        pass

    def prepare(self, image):
        raise Built(f"prepare({image!r}) was called")

    monkeypatch.setattr(DockerProvider, "prepare", prepare)
    started = time.monotonic()
    ap = runner.Apparatus(project=PROJ, gpu=None, timeout=30, provider="docker")
    assert isinstance(ap.image, ProjectImage) and ap.image.steps and ap.timeout == 30 and not ap.running
    assert "idle" in repr(ap)
    assert time.monotonic() - started < 5
    with pytest.raises(Built):  # the first call is what builds
        ap.run(project_app.square, 2)
    ap.close()


def test_apparatus_options_are_checked_early_and_gpus_at_the_first_call(monkeypatch):
    with pytest.raises(InvalidError, match="gpu"):
        runner.Apparatus(gpu="NOPE")
    with pytest.raises(InvalidError, match="not both"):
        runner.Apparatus(runner.Image.debian_slim(), project=PROJ)
    monkeypatch.setattr("runner._providers.host_gpus", list)
    ap = runner.Apparatus(gpu="T4", provider="embedded")
    with pytest.raises(ProviderError, match="no NVIDIA GPU"):
        ap.run(project_app.square, 2)
    ap.close()

    def gen():
        yield 1

    app = runner.App("other")
    registered = app.function()(project_app.add)
    with runner.Apparatus(provider="embedded") as ap:
        with pytest.raises(InvalidError, match="generator"):
            ap.run(gen)
        with pytest.raises(InvalidError, match="registered with an App"):
            ap.run(registered, 1, 2)
        with pytest.raises(InvalidError, match="takes a function"):
            ap.map(42, [1])
        assert not ap.running

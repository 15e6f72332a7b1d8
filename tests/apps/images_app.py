"""Images built from every kind of step; each function reports what it finds in its container."""

import os
import pathlib
import sys

import runner

ASSETS = pathlib.Path(__file__).parent / "assets"
if runner.is_local():  # mypkg is found here; in containers only add_local_python_source brings it
    sys.path.insert(0, str(ASSETS / "localpkg"))
BUILD_SECRET = "build-time-secret-7f3a9c"

app = runner.App("tests-images")


def _make_file():
    pathlib.Path("/from_function.txt").write_text("written by run_function")


config_image = (
    runner.Image.debian_slim()
    .workdir("/srv/app")
    .shell(["/bin/bash", "-c"])
    .run_commands("echo ${BASH_VERSION:+bash} > /shell.txt")
    .entrypoint(["/usr/bin/env", "FROM_ENTRYPOINT=1"])
    .run_function(_make_file)
)

packages_image = (
    runner.Image.debian_slim()
    .pip_install_from_requirements(ASSETS / "requirements.txt")
    .pip_install_from_pyproject(ASSETS / "pyproject.toml", optional_dependencies=["extra"])
    .uv_pip_install("attrs==23.2.0")
)

secret_image = runner.Image.debian_slim().run_commands(
    'test "$BUILD_TOKEN" = "$EXPECTED" && echo token-was-seen > /proof.txt',
    secrets=[runner.Secret.from_dict({"BUILD_TOKEN": BUILD_SECRET, "EXPECTED": BUILD_SECRET})],
)

docker_image = runner.Image.from_dockerfile(ASSETS / "ctx" / "Dockerfile").dockerfile_commands(
    ["RUN echo more > /more.txt", "LABEL team=runner"], context_dir=ASSETS / "ctx"
)

files_image = (
    runner.Image.debian_slim()
    .add_local_dir(ASSETS / "tree", "/copied", copy=True, ignore=["*.log", "build_cache"])
    .add_local_python_source("mypkg")
    .add_local_dir(ASSETS / "tree", "/mounted", ignore=["*.log"])
)


def _read(path: str) -> str | None:
    try:
        return pathlib.Path(path).read_text().strip()
    except OSError:
        return None


@app.function(image=config_image)
def config_probe() -> dict:
    return {"cwd": os.getcwd(), "shell": _read("/shell.txt"), "entry": os.environ.get("FROM_ENTRYPOINT"),
            "fn": _read("/from_function.txt")}


@app.function(image=packages_image)
def packages_probe() -> dict:
    import glob

    import attrs
    import idna
    import six

    compiled = glob.glob(os.path.join(os.path.dirname(attrs.__file__), "__pycache__", "*.pyc"))
    return {"six": six.__version__, "idna": idna.__version__, "attrs": attrs.__version__,
            "compiled": bool(compiled), "inputs_left": os.listdir("/run/runner-build") if os.path.isdir("/run/runner-build") else []}


@app.function(image=secret_image)
def secret_probe() -> dict:
    return {"proof": _read("/proof.txt"), "env": os.environ.get("BUILD_TOKEN")}


@app.function(image=docker_image)
def dockerfile_probe() -> dict:
    return {"greeting": _read("/greeting.txt"), "env": os.environ.get("FROM_DOCKERFILE"),
            "other": os.environ.get("OTHER"), "cwd": os.getcwd(), "copied": _read("/work/file.txt"),
            "more": _read("/more.txt")}


@app.function(image=files_image)
def files_probe() -> dict:
    import mypkg
    from mypkg.util import twice

    def listing(root):
        return sorted(str(p.relative_to(root)) for p in pathlib.Path(root).rglob("*") if p.is_file())

    return {"copied": listing("/copied"), "mounted": listing("/mounted"), "pkg": mypkg.VALUE, "twice": twice(21)}


uv_image = runner.Image.debian_slim().uv_sync(ASSETS / "uvproj", groups=["docs"], extras=["fancy"])


@app.function(image=uv_image)
def uv_probe() -> dict:
    from importlib import metadata

    def version(name):
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    return {name: version(name) for name in ("six", "idna", "packaging", "iniconfig", "uvdemo")}


plain_image = runner.Image.debian_slim()
ca_image = runner.Image.debian_slim().trust_host_ca()


def _reach_pypi() -> str:
    import subprocess

    proc = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--no-cache-dir", "-d", "/tmp/dl", "six==1.16.0"],
        capture_output=True, text=True, timeout=120,
    )
    return "ok" if proc.returncode == 0 else ("certificate" if "CERTIFICATE" in proc.stdout + proc.stderr else "failed")


@app.function(image=plain_image)
def pypi_without_host_ca() -> str:
    return _reach_pypi()


@app.function(image=ca_image)
def pypi_with_host_ca() -> str:
    return _reach_pypi()

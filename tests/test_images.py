"""Image steps, each built for real on the Docker daemon and checked inside a container."""

from __future__ import annotations

import json
import subprocess

import pytest

import runner
from runner._providers import _docker
from runner.exception import InvalidError


@pytest.fixture(scope="module")
def images(request):
    from conftest import require_docker

    require_docker()
    from apps import images_app

    return images_app


def _run(images, fn):
    with images.app.run(provider="docker"):
        return fn.remote()


def test_workdir_shell_entrypoint_and_run_function(images):
    got = _run(images, images.config_probe)
    assert got == {"cwd": "/srv/app", "shell": "bash", "entry": "1", "fn": "written by run_function"}


def test_requirements_pyproject_and_uv_installs(images):
    got = _run(images, images.packages_probe)
    assert (got["six"], got["idna"], got["attrs"]) == ("1.16.0", "3.7", "23.2.0")
    assert got["compiled"], "uv_pip_install compiles bytecode at build time"
    assert got["inputs_left"] == [], "build inputs (the requirements file) must not stay in the image"


def test_build_secrets_reach_the_step_and_nowhere_else(images):
    got = _run(images, images.secret_probe)
    assert got == {"proof": "token-was-seen", "env": None}
    provider = _docker.DockerProvider()
    try:
        ref = provider.prepare(images.secret_image)
        image = provider.client.images.get(ref)
        secret = images.BUILD_SECRET.encode()
        assert secret not in json.dumps(image.attrs).encode(), "config, labels or env"
        history = subprocess.run(["docker", "history", "--no-trunc", ref], capture_output=True, check=True).stdout
        assert secret not in history
        layers = b"".join(image.save())
        assert secret not in layers, "a layer holds the secret"
    finally:
        provider.close()


def test_dockerfile_instructions_become_steps(images):
    got = _run(images, images.dockerfile_probe)
    assert got == {"greeting": "hello from a dockerfile", "env": "yes", "other": "two", "cwd": "/work",
                   "copied": "from the context", "more": "more"}
    provider = _docker.DockerProvider()
    try:
        labels = provider.client.images.get(provider.prepare(images.docker_image)).attrs["Config"]["Labels"]
        assert labels.get("team") == "runner"
    finally:
        provider.close()


def test_local_dirs_copied_mounted_ignored_and_python_source(images):
    got = _run(images, images.files_probe)
    assert got["copied"] == ["keep.txt", "sub/nested.txt"]
    assert got["mounted"] == ["build_cache/junk.bin", "keep.txt", "sub/nested.txt"]
    assert (got["pkg"], got["twice"]) == ("from mypkg", 42)


def test_copy_false_files_do_not_change_the_image_id(tmp_path):
    f = tmp_path / "data.txt"
    f.write_text("one")
    before = runner.Image.debian_slim().add_local_file(f, "/data.txt")
    f.write_text("two")
    after = runner.Image.debian_slim().add_local_file(f, "/data.txt")
    copied_before = runner.Image.debian_slim().add_local_file(f, "/data.txt", copy=True)
    f.write_text("three")
    copied_after = runner.Image.debian_slim().add_local_file(f, "/data.txt", copy=True)
    assert before.object_id == after.object_id
    assert copied_before.object_id != copied_after.object_id


def test_no_build_step_after_a_mount(tmp_path):
    (tmp_path / "x").write_text("x")
    with pytest.raises(InvalidError, match="copy=False"):
        runner.Image.debian_slim().add_local_file(tmp_path / "x", "/x").pip_install("six")


def test_dockerfile_errors_are_clear(tmp_path):
    (tmp_path / "Dockerfile").write_text("FROM a\nFROM b\n")
    with pytest.raises(InvalidError, match="multi-stage"):
        runner.Image.from_dockerfile(tmp_path / "Dockerfile")
    with pytest.raises(InvalidError, match="unknown instruction 'FETCH'"):
        runner.Image.debian_slim().dockerfile_commands("FETCH http://x")
    with pytest.raises(runner.exception.NotFoundError, match="nope.txt"):
        runner.Image.debian_slim().dockerfile_commands("COPY nope.txt /x", context_dir=tmp_path)


def test_imports_block_tolerates_missing_modules_on_the_client():
    image = runner.Image.debian_slim()
    with image.imports():
        import module_that_only_exists_in_the_image  # noqa: F401


def test_uv_sync_installs_the_locked_versions_of_the_chosen_groups(images):
    got = _run(images, images.uv_probe)
    assert got == {"six": "1.16.0", "idna": "3.7", "packaging": "24.1", "iniconfig": None, "uvdemo": None}


def test_host_ca_is_used_for_builds_but_kept_in_images_only_when_asked(images):
    # These machines sit behind a TLS-inspecting proxy: builds reached PyPI with the host's CA
    # (see the packages image), but an image keeps the CA only with trust_host_ca().
    with images.app.run(provider="docker"):
        with_ca, without = images.pypi_with_host_ca.remote(), images.pypi_without_host_ca.remote()
    assert with_ca == "ok"
    if without == "ok":
        pytest.skip("this network does not inspect TLS, so an image without the host CA reaches PyPI too")
    assert without == "certificate"


def test_unsupported_bases_say_so_clearly():
    with pytest.raises(InvalidError, match="micromamba is not supported"):
        runner.Image.micromamba("3.11")
    with pytest.raises(InvalidError, match="micromamba_install is not supported"):
        runner.Image.debian_slim().micromamba_install("numpy")
    with pytest.raises(InvalidError, match="add_python"):
        runner.Image.from_registry("ubuntu:22.04", add_python="3.11")


def test_built_images_declare_no_volumes_and_leave_none_behind(docker_provider):
    """A build step's read-only inputs are bind mounts, not image volumes: the image declares
    none, so its containers make no anonymous volume, and nothing is left once they are gone."""
    import uuid

    import docker

    client = docker.from_env()
    marker = uuid.uuid4().hex
    image = runner.Image.debian_slim().run_commands(f"echo {marker} > /marker")
    app = runner.App("no-volumes", image=image)

    @app.function(serialized=True)
    def read() -> str:
        return open("/marker").read().strip()

    before = {v.id for v in client.volumes.list()}
    with app.run(provider="docker"):
        assert read.remote() == marker
        tag = app._session.prepare(image)
    config = client.images.get(tag).attrs["Config"]
    assert not config.get("Volumes"), config.get("Volumes")
    assert {v.id for v in client.volumes.list()} - before == set()
    client.close()

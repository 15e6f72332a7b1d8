"""Named secrets: stored owner-only outside the project, given to containers as environment,
never shown by `runner`, and clear errors for an unknown name or a missing required key."""

from __future__ import annotations

import json
import stat
import uuid

import pytest

import runner
from helpers import assert_one_line_error, run_cli, write
from runner.exception import NotFoundError

VALUE = "s3cr3t-" + uuid.uuid4().hex  # a value that appears nowhere unless leaked


def test_stored_owner_only_outside_the_project(tmp_path):
    name = f"s-{uuid.uuid4().hex[:8]}"
    proc = run_cli(["secret", "create", name, f"TOKEN={VALUE}", "OTHER=x"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert VALUE not in proc.stdout + proc.stderr
    home = runner._home.home()
    path = home / "secrets" / f"{name}.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert json.loads(path.read_text()) == {"TOKEN": VALUE, "OTHER": "x"}
    assert not list(tmp_path.rglob("*.json"))  # nothing written into the project
    listing = run_cli(["secret", "list"], tmp_path)
    assert f"{name}  OTHER, TOKEN" in listing.stdout and VALUE not in listing.stdout
    assert_one_line_error(run_cli(["secret", "create", name, "TOKEN=y"], tmp_path), "exists already", "--force")
    assert run_cli(["secret", "create", name, "TOKEN=y", "--force"], tmp_path).returncode == 0
    assert runner.Secret.from_name(name).env() == {"TOKEN": "y"}
    assert run_cli(["secret", "delete", name], tmp_path).returncode == 0
    assert_one_line_error(run_cli(["secret", "delete", name], tmp_path), "not found")


def test_bad_secret_commands(tmp_path):
    assert_one_line_error(run_cli(["secret", "create", "x", "justavalue"], tmp_path), "KEY=VALUE")
    assert "justavalue" not in run_cli(["secret", "create", "x", "justavalue"], tmp_path).stderr
    assert_one_line_error(run_cli(["secret", "create", "x"], tmp_path), "at least one KEY=VALUE")
    assert_one_line_error(run_cli(["secret", "create", "../x", "A=1"], tmp_path), "invalid secret name")


def test_from_name_errors_say_what_to_do():
    with pytest.raises(NotFoundError, match="runner secret create nope KEY=VALUE"):
        runner.Secret.from_name("nope")
    runner._secret.save("partial", {"A": VALUE})
    with pytest.raises(NotFoundError) as info:
        runner.Secret.from_name("partial", required_keys=["A", "B", "C"])
    assert "B, C" in str(info.value) and "it has A" in str(info.value) and VALUE not in str(info.value)


APP = """
    import os
    import modal

    app = modal.App("secrets")

    @app.function(secrets=[modal.Secret.from_name("NAME", required_keys=["TOKEN"])])
    def check() -> bool:
        print("container sees the token:", os.environ["TOKEN"] == "VALUE", flush=True)
        return os.environ["TOKEN"] == "VALUE"

    @app.local_entrypoint()
    def main():
        print("ok:", check.remote())
"""


def test_containers_get_the_values_and_runner_never_prints_them(tmp_path, provider):
    name = f"s-{uuid.uuid4().hex[:8]}"
    runner._secret.save(name, {"TOKEN": VALUE})
    write(tmp_path, "app.py", APP.replace("NAME", name).replace("VALUE", VALUE))
    proc = run_cli(["--verbose", "run", "app.py"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "ok: True" in proc.stdout and "container sees the token: True" in proc.stdout
    assert VALUE not in proc.stdout + proc.stderr


def test_a_missing_required_key_fails_before_anything_runs(tmp_path):
    name = f"s-{uuid.uuid4().hex[:8]}"
    runner._secret.save(name, {"OTHER": VALUE})
    write(tmp_path, "app.py", APP.replace("NAME", name))
    proc = run_cli(["run", "app.py"], tmp_path)
    assert_one_line_error(proc, f"secret {name!r} lacks required key(s) TOKEN")
    assert VALUE not in proc.stderr + proc.stdout
    write(tmp_path, "app.py", APP.replace("NAME", "no-such-secret"))
    assert_one_line_error(run_cli(["run", "app.py"], tmp_path), "secret 'no-such-secret' not found")


def test_values_stay_out_of_the_container_config(docker_provider):
    import docker

    app = runner.App("secret-config")

    @app.function(secrets=[runner.Secret.from_dict({"TOKEN": VALUE})], serialized=True)
    def peek() -> bool:
        import os

        return os.environ["TOKEN"] == VALUE

    with app.run():
        assert peek.remote()
        client = docker.from_env()
        try:
            mine = [c for c in client.containers.list() if "peek" in c.labels.get("org.runner.function", "")]
            assert mine, "no container of peek is running"
            for container in mine:
                assert VALUE not in json.dumps(container.attrs)  # what `docker inspect` shows
        finally:
            client.close()

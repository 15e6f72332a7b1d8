"""`runner infra outputs | up | destroy`, as a user runs them, with a fake `pulumi` on PATH (a script
that records its argv) or none at all. In-process through runner's `main` (its one-line errors and
exit codes) for speed; two cases run the real `python -m runner` subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from helpers import assert_one_line_error, run_cli

from runner._stack import STACK_OUTPUTS_ENV

KUBECONFIG = "apiVersion: v1\nkind: Config\nclusters: []\n"
GOOD = {
    "cloud": "gcp", "kubeconfig": KUBECONFIG, "registry_url": "europe-west4-docker.pkg.dev/p/runner",
    "bucket_url": "gs://runner-b", "namespace": "runner", "service_account": "runner", "pod_labels": {},
    "queue_endpoint": "redis://runner-queue.runner.svc.cluster.local:6379/0",
    "queue_secret_name": "runner-queue-auth",
    "gpu_types": {"L4": {"node_selector": {"cloud.google.com/gke-accelerator": "nvidia-l4"},
                         "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]}},
}

FAKE_PULUMI = '''\
#!{python}
"""A stand-in for the Pulumi CLI: records argv and cwd, answers what runner asks."""
import json, os, sys
args = sys.argv[1:]
with open(os.environ["FAKE_PULUMI_LOG"], "a") as log:
    log.write(json.dumps({{"argv": args, "cwd": os.getcwd()}}) + "\\n")
if args[:2] == ["stack", "output"]:
    sys.stdout.write(open(os.environ["FAKE_PULUMI_OUTPUTS"]).read())
elif args[:3] == ["config", "get", "runner:cloud"]:
    print(os.environ.get("FAKE_PULUMI_CLOUD", "gcp"))
elif args and args[0] in ("up", "destroy"):
    print(f"fake pulumi {{args[0]}}: 3 resources")
fail = os.environ.get("FAKE_PULUMI_FAIL")
if fail and args and args[0] == fail:
    print(f"error: {{fail}} failed", file=sys.stderr)
    sys.exit(7)
'''


@pytest.fixture
def project(tmp_path):
    """A directory with a Pulumi.yaml, the fake pulumi's bin directory, and the env that uses them."""
    (tmp_path / "Pulumi.yaml").write_text("name: runner\nruntime: python\nmain: infra/\n")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "pulumi"
    fake.write_text(FAKE_PULUMI.format(python=sys.executable))
    fake.chmod(0o755)
    outputs = tmp_path / "pulumi-outputs.json"
    outputs.write_text(json.dumps(GOOD))
    env = {"PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}", "FAKE_PULUMI_LOG": str(tmp_path / "log"),
           "FAKE_PULUMI_OUTPUTS": str(outputs), STACK_OUTPUTS_ENV: ""}
    return tmp_path, env


@pytest.fixture
def cli(monkeypatch, capfd):
    """Run `runner ARGS` in this process, in `cwd` with `env` added; a CompletedProcess back."""

    def invoke(args, cwd, env=None):
        from runner._cli import main

        with monkeypatch.context() as m:
            m.chdir(cwd)
            for key, value in (env or {}).items():
                m.setenv(key, value)
            capfd.readouterr()
            try:
                main(list(args))
                code = 0
            except SystemExit as e:
                code = e.code
        out, err = capfd.readouterr()
        return subprocess.CompletedProcess(args, code, out, err)

    return invoke


def calls(tmp_path):
    log = tmp_path / "log"
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def no_pulumi_env(tmp_path):
    empty = tmp_path / "empty-path"
    empty.mkdir(exist_ok=True)
    return {"PATH": str(empty), STACK_OUTPUTS_ENV: ""}


def write_outputs(tmp_path, data, name="outputs.json"):
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


# --- outputs --------------------------------------------------------------------------------


def test_outputs_from_a_file_hide_the_kubeconfig(tmp_path):
    path = write_outputs(tmp_path, GOOD)
    proc = run_cli(["infra", "outputs", "--stack-outputs", str(path)], cwd=tmp_path, env=no_pulumi_env(tmp_path))
    assert proc.returncode == 0, proc.stderr
    lines = dict(line.split(None, 1) for line in proc.stdout.splitlines())
    assert lines["cloud"] == "gcp" and lines["bucket_url"] == "gs://runner-b"
    assert lines["kubeconfig"] == f"(secret, {len(KUBECONFIG)} bytes)"
    assert "apiVersion" not in proc.stdout
    assert json.loads(lines["gpu_types"])["L4"]["node_selector"] == {"cloud.google.com/gke-accelerator": "nvidia-l4"}
    assert lines["web_domain"] == lines["web_endpoint"] == "(none)"  # optional, and absent from this stack's


def test_outputs_json_from_the_env_variable_and_show_secrets(cli, tmp_path):
    path = write_outputs(tmp_path, GOOD)
    env = {**no_pulumi_env(tmp_path), STACK_OUTPUTS_ENV: str(path)}
    hidden = cli(["infra", "outputs", "--json"], cwd=tmp_path, env=env)
    assert hidden.returncode == 0, hidden.stderr
    defaults = {"web_domain": "", "web_endpoint": ""}  # the optional keys, which GOOD leaves out
    assert json.loads(hidden.stdout) == {**GOOD, **defaults, "kubeconfig": "[secret]"}
    shown = cli(["infra", "outputs", "--json", "--show-secrets"], cwd=tmp_path, env=env)
    assert json.loads(shown.stdout) == {**GOOD, **defaults}  # what --stack-outputs reads back
    plain = cli(["infra", "outputs", "--show-secrets"], cwd=tmp_path, env=env)
    assert "clusters: []" in plain.stdout


def test_outputs_of_local_with_an_empty_kubeconfig(cli, tmp_path):
    local = {**GOOD, "cloud": "local", "kubeconfig": "", "gpu_types": {}, "bucket_url": "file:///srv/v"}
    proc = cli(["infra", "outputs", "--stack-outputs", str(write_outputs(tmp_path, local))], cwd=tmp_path,
                   env=no_pulumi_env(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert "(secret, 0 bytes)" in proc.stdout and "gpu_types          {}" in proc.stdout


@pytest.mark.parametrize("content,fragments", [
    (None, ["cannot read stack outputs from", "No such file"]),
    ("{not json", ["are not valid JSON"]),
    ({k: v for k, v in GOOD.items() if k not in ("bucket_url", "gpu_types")}, ["missing bucket_url, gpu_types"]),
    ({**GOOD, "kubeconfig": "[secret]"}, ["hide kubeconfig", "--show-secrets"]),
    ({**GOOD, "cloud": "gce"}, ["ill-typed cloud"]),
])
def test_bad_outputs_file_is_one_line(cli, tmp_path, content, fragments):
    path = tmp_path / "missing.json" if content is None else write_outputs(tmp_path, content)
    proc = cli(["infra", "outputs", "--stack-outputs", str(path)], cwd=tmp_path, env=no_pulumi_env(tmp_path))
    assert_one_line_error(proc, *fragments)


def test_outputs_without_file_or_pulumi_say_what_to_do(cli, tmp_path):
    proc = cli(["infra", "outputs"], cwd=tmp_path, env=no_pulumi_env(tmp_path))
    assert_one_line_error(proc, "the pulumi CLI is not on PATH", "--stack-outputs FILE", STACK_OUTPUTS_ENV)


def test_outputs_without_a_file_ask_pulumi(cli, project):
    tmp_path, env = project
    proc = cli(["infra", "outputs", "--json"], cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["registry_url"] == GOOD["registry_url"]
    assert calls(tmp_path) == [{"argv": ["stack", "output", "--json", "--show-secrets"], "cwd": str(tmp_path)}]


def test_outputs_of_a_named_stack(cli, project):
    tmp_path, env = project
    proc = cli(["infra", "outputs", "--stack", "prod"], cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    assert [c["argv"] for c in calls(tmp_path)] == [["stack", "output", "--json", "--show-secrets", "--stack", "prod"]]
    both = cli(["infra", "outputs", "--stack", "prod", "--stack-outputs", "x.json"], cwd=tmp_path, env=env)
    assert_one_line_error(both, "not both")


def test_pulumi_failing_stack_output_is_one_line(cli, project):
    tmp_path, env = project
    (tmp_path / "pulumi-outputs.json").write_text("")
    proc = cli(["infra", "outputs"], cwd=tmp_path, env=env)
    assert_one_line_error(proc, "not valid JSON")


# --- up and destroy -------------------------------------------------------------------------


def test_up_runs_the_pulumi_commands_in_the_project_dir(project):
    tmp_path, env = project
    sub = tmp_path / "sub"
    sub.mkdir()
    proc = run_cli(["infra", "up", "--cloud", "gcp", "--stack", "dev", "--yes"], cwd=sub, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "fake pulumi up: 3 resources" in proc.stdout  # its output passes through
    assert calls(tmp_path) == [
        {"argv": ["stack", "select", "--create", "dev"], "cwd": str(tmp_path)},
        {"argv": ["config", "set", "runner:cloud", "gcp", "--stack", "dev"], "cwd": str(tmp_path)},
        {"argv": ["up", "--stack", "dev", "--yes"], "cwd": str(tmp_path)},
    ]


def test_up_defaults_the_stack_to_the_cloud_and_asks_without_yes(cli, project):
    tmp_path, env = project
    proc = cli(["infra", "up", "--cloud", "local"], cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    assert [c["argv"] for c in calls(tmp_path)][-1] == ["up", "--stack", "local"]
    assert calls(tmp_path)[0]["argv"] == ["stack", "select", "--create", "local"]


def test_up_passes_pulumis_exit_status_through(cli, project):
    tmp_path, env = project
    proc = cli(["infra", "up", "--cloud", "aws", "--yes"], cwd=tmp_path, env={**env, "FAKE_PULUMI_FAIL": "up"})
    assert proc.returncode == 7
    assert "error: up failed" in proc.stderr and "Traceback" not in proc.stderr


def test_destroy_checks_the_cloud_then_destroys(cli, project):
    tmp_path, env = project
    proc = cli(["infra", "destroy", "--cloud", "gcp", "--stack", "dev", "--yes"], cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    assert [c["argv"] for c in calls(tmp_path)] == [["config", "get", "runner:cloud", "--stack", "dev"],
                                                    ["destroy", "--stack", "dev", "--yes"]]
    wrong = cli(["infra", "destroy", "--cloud", "aws", "--stack", "dev"], cwd=tmp_path, env=env)
    assert_one_line_error(wrong, "stack dev is for cloud gcp, not aws")
    assert not any(c["argv"][0] == "destroy" for c in calls(tmp_path)[2:])


@pytest.mark.parametrize("command", ["up", "destroy"])
def test_no_pulumi_on_path_is_the_clear_line(cli, tmp_path, command):
    proc = cli(["infra", command, "--cloud", "gcp"], cwd=tmp_path, env=no_pulumi_env(tmp_path))
    assert_one_line_error(proc, "the Pulumi CLI is not installed: see https://www.pulumi.com/docs/install/",
                          "plain `pulumi up` in this directory does the same")


def test_unknown_cloud_is_one_line(cli, project):
    tmp_path, env = project
    proc = cli(["infra", "up", "--cloud", "gce"], cwd=tmp_path, env=env)
    assert_one_line_error(proc, "--cloud 'gce' is not one of gcp, aws, azure, local")
    assert calls(tmp_path) == []


def test_help_lists_the_commands(cli, tmp_path):
    proc = cli(["infra", "--help"], cwd=tmp_path)
    assert proc.returncode == 0
    for name in ("outputs", "up", "destroy"):
        assert name in proc.stdout

"""The stack-outputs contract (runner._stack) and the shared infra platform (infra/common), under Pulumi mocks."""

from __future__ import annotations

import json
import os
import sys
import types

import pulumi
import pytest
from infra_harness import MOCK_LB_IP, assert_golden, dummy_k8s_provider, run, tolerates, validate_manifest

from infra.common.manifests import GPU_NODE_LABEL_KEYS
from runner._stack import OUTPUT_KEYS, SECRET_KEYS, StackOutputs, load_outputs, read_outputs
from runner.exception import InvalidError

GOOD = {
    "cloud": "gcp",
    "kubeconfig": "apiVersion: v1\nkind: Config\n",
    "registry_url": "europe-west4-docker.pkg.dev/proj/runner",
    "bucket_url": "gs://runner-bucket",
    "namespace": "runner",
    "service_account": "runner",
    "pod_labels": {},
    "queue_endpoint": "redis://runner-queue.runner.svc.cluster.local:6379/0",
    "queue_secret_name": "runner-queue-auth",
    "gpu_types": {"L4": {"node_selector": {"cloud.google.com/gke-accelerator": "nvidia-l4"},
                         "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]}},
}

NS = "kubernetes:core/v1:Namespace"
SECRET = "kubernetes:core/v1:Secret"
SERVICE = "kubernetes:core/v1:Service"
STATEFULSET = "kubernetes:apps/v1:StatefulSet"
DAEMONSET = "kubernetes:apps/v1:DaemonSet"
ROLE = "kubernetes:rbac.authorization.k8s.io/v1:Role"
ROLE_BINDING = "kubernetes:rbac.authorization.k8s.io/v1:RoleBinding"
NETPOL = "kubernetes:networking.k8s.io/v1:NetworkPolicy"
RELEASE = "kubernetes:helm.sh/v3:Release"
PASSWORD = "random:index/randomPassword:RandomPassword"


# --- the contract ---------------------------------------------------------------------------


def test_output_keys_are_the_fields():
    assert OUTPUT_KEYS == ("cloud", "kubeconfig", "registry_url", "bucket_url", "namespace", "service_account",
                           "pod_labels", "queue_endpoint", "queue_secret_name", "gpu_types", "web_domain", "web_endpoint")
    assert SECRET_KEYS == ("kubeconfig",)


def test_the_web_keys_are_optional_so_an_older_stack_still_loads():
    old = {k: v for k, v in GOOD.items() if k not in ("web_domain", "web_endpoint")}
    outputs = load_outputs(old)
    assert (outputs.web_domain, outputs.web_endpoint) == ("", "")
    given = load_outputs({**GOOD, "web_domain": "apps.example.com", "web_endpoint": "http://203.0.113.7"})
    assert (given.web_domain, given.web_endpoint) == ("apps.example.com", "http://203.0.113.7")


def test_load_outputs_reads_good_data_and_ignores_unknown_keys():
    outputs = load_outputs({**GOOD, "added_later": 1})
    assert isinstance(outputs, StackOutputs)
    assert outputs.bucket_url == "gs://runner-bucket"
    assert outputs.gpu_types["L4"]["node_selector"] == {"cloud.google.com/gke-accelerator": "nvidia-l4"}
    assert "apiVersion" not in repr(outputs)  # the kubeconfig stays out of logs
    assert load_outputs({**GOOD, "cloud": "local", "kubeconfig": ""}).kubeconfig == ""


def test_load_outputs_names_every_missing_key_in_one_line():
    data = {k: v for k, v in GOOD.items() if k not in ("bucket_url", "namespace")}
    with pytest.raises(InvalidError) as e:
        load_outputs(data)
    message = str(e.value)
    assert "missing bucket_url, namespace" in message
    assert "pulumi up" in message and "--stack-outputs" in message
    assert "\n" not in message


@pytest.mark.parametrize("key,value,expect", [
    ("cloud", "gce", "cloud ('gce' is not one of gcp, aws, azure, local)"),
    ("namespace", 3, "namespace (a string, not int)"),
    ("registry_url", "", "registry_url (empty)"),
    ("gpu_types", ["H100"], "gpu_types"),
    ("gpu_types", {"H100": {"node_selector": {"a": 1}, "tolerations": []}}, "gpu_types"),
    ("gpu_types", {"H100": {"node_selector": {}}}, "gpu_types"),
    ("web_domain", "Apps.Example.COM/", "web_domain ('Apps.Example.COM/' is not a DNS name such as apps.example.com)"),
    ("web_endpoint", 80, "web_endpoint (a string, not int)"),
])
def test_load_outputs_names_ill_typed_keys(key, value, expect):
    with pytest.raises(InvalidError, match="ill-typed") as e:
        load_outputs({**GOOD, key: value})
    assert expect in str(e.value)


def test_load_outputs_explains_hidden_secrets_and_non_objects():
    with pytest.raises(InvalidError, match=r"hide kubeconfig \(read them with --show-secrets\)"):
        load_outputs({**GOOD, "kubeconfig": "[secret]"})
    with pytest.raises(InvalidError, match="must be a JSON object, not list"):
        load_outputs([GOOD])


def test_read_outputs_from_path_and_env(tmp_path, monkeypatch):
    env_file, arg_file = tmp_path / "env.json", tmp_path / "arg.json"
    env_file.write_text(json.dumps({**GOOD, "namespace": "from-env"}))
    arg_file.write_text(json.dumps({**GOOD, "namespace": "from-arg"}))
    monkeypatch.setenv("RUNNER_STACK_OUTPUTS", str(env_file))
    assert read_outputs().namespace == "from-env"
    assert read_outputs(str(arg_file)).namespace == "from-arg"


def test_read_outputs_bad_file(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(InvalidError, match=r"are not valid JSON") as e:
        read_outputs(str(bad))
    assert str(bad) in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(InvalidError, match=r"cannot read stack outputs from .*nothing\.json: No such file"):
        read_outputs(str(tmp_path / "nothing.json"))


def test_read_outputs_without_pulumi_cli(tmp_path, monkeypatch):
    monkeypatch.delenv("RUNNER_STACK_OUTPUTS", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(InvalidError, match="the pulumi CLI is not on PATH and RUNNER_STACK_OUTPUTS is unset"):
        read_outputs()


def _fake_pulumi(bin_dir, script: str) -> None:
    exe = bin_dir / "pulumi"
    exe.write_text(f"#!/bin/sh\n{script}\n")
    exe.chmod(0o755)


def test_read_outputs_runs_the_cli_in_the_project_dir(tmp_path, monkeypatch):
    monkeypatch.delenv("RUNNER_STACK_OUTPUTS", raising=False)
    (tmp_path / "outputs.json").write_text(json.dumps(GOOD))
    _fake_pulumi(tmp_path, '[ "$*" = "stack output --json --show-secrets" ] && cat outputs.json')
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    assert read_outputs(project_dir=str(tmp_path)).registry_url == GOOD["registry_url"]


def test_read_outputs_of_a_named_stack_asks_the_cli_for_it(tmp_path, monkeypatch):
    (tmp_path / "outputs.json").write_text(json.dumps({**GOOD, "namespace": "from-prod"}))
    (tmp_path / "env.json").write_text(json.dumps({**GOOD, "namespace": "from-env"}))
    monkeypatch.setenv("RUNNER_STACK_OUTPUTS", str(tmp_path / "env.json"))  # a named stack wins over it
    _fake_pulumi(tmp_path, '[ "$*" = "stack output --json --show-secrets --stack prod" ] && cat outputs.json')
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    assert read_outputs(stack="prod", project_dir=str(tmp_path)).namespace == "from-prod"
    with pytest.raises(InvalidError, match=r"`pulumi stack output --stack dev` failed in "):
        read_outputs(stack="dev", project_dir=str(tmp_path))
    with pytest.raises(InvalidError, match="not both"):
        read_outputs(str(tmp_path / "env.json"), stack="prod")


def test_read_outputs_reports_cli_failure(tmp_path, monkeypatch):
    monkeypatch.delenv("RUNNER_STACK_OUTPUTS", raising=False)
    _fake_pulumi(tmp_path, 'echo "warning: ignore me" >&2; echo "error: no stack selected" >&2; exit 255')
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    with pytest.raises(InvalidError, match=r"`pulumi stack output` failed in .*: error: no stack selected: run"):
        read_outputs(project_dir=str(tmp_path))


# --- the platform -----------------------------------------------------------------------------


def _platform(**kwargs):
    """A program putting RunnerPlatform on a dummy cluster and exporting the whole contract."""
    from infra.common import PlatformArgs, RunnerPlatform, export_contract

    def program():
        platform = RunnerPlatform("runner", PlatformArgs(**kwargs), dummy_k8s_provider())
        export_contract({
            "cloud": "local", "kubeconfig": "", "registry_url": "localhost:5000", "bucket_url": "file:///srv/runner",
            "gpu_types": {}, **platform.contract_outputs(),
        })

    return program


@pytest.fixture(scope="module")
def full():
    """The platform with every optional part on, run once for the read-only checks below."""
    return run(_platform(install_device_plugin=True,
                         service_account_annotations={"iam.gke.io/gcp-service-account": "r@p.iam.gserviceaccount.com"}))


def test_every_manifest_validates(full):
    manifests = full.k8s_manifests()
    assert {m["kind"] for m in manifests} == {"Namespace", "ServiceAccount", "Role", "RoleBinding", "Secret",
                                              "Service", "StatefulSet", "NetworkPolicy", "DaemonSet"}
    for manifest in manifests:
        validate_manifest(manifest)


def test_validate_manifest_is_strict():
    with pytest.raises(AssertionError, match=r"Service q: spec: Additional properties"):
        validate_manifest({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "q"},
                           "spec": {"type": "ClusterIP", "publicEndpoint": True}})
    with pytest.raises(AssertionError, match=r"replicas"):
        validate_manifest({"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "q"},
                           "spec": {"replicas": "one", "selector": {}, "template": {}, "serviceName": "q"}})


def test_golden_manifests(full):
    assert_golden("platform", full.k8s_manifests())
    assert_golden("keda-release", full.one(RELEASE, "runner-keda").inputs)
    assert_golden("http-addon-release", full.one(RELEASE, "runner-http-addon").inputs)


def test_children_are_parented_and_use_the_given_provider(full):
    component = full.one("runner:platform:RunnerPlatform")
    provider = full.one("pulumi:providers:kubernetes")
    children = full.children_of(component)
    assert len(children) == 13  # 10 objects, the KEDA and HTTP add-on releases, the random password
    for child in children:
        if child.type.startswith("kubernetes:"):
            assert child.provider == f"{provider.urn}::{provider.name}_id", child.name


def test_rbac_is_namespaced_and_narrow(full):
    manifests = full.k8s_manifests()
    assert not [m for m in manifests if m["kind"] in ("ClusterRole", "ClusterRoleBinding")]
    role = full.one(ROLE).inputs
    assert role["metadata"]["namespace"] == "runner"
    for rule in role["rules"]:
        assert "*" not in rule["verbs"] and "*" not in rule["resources"] and "*" not in rule["apiGroups"]
    granted = {(g, r) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"]}
    assert {("", "pods"), ("", "pods/exec"), ("", "secrets"), ("apps", "deployments"), ("batch", "jobs"),
            ("keda.sh", "scaledobjects")} <= granted
    assert ("", "nodes") not in granted and ("rbac.authorization.k8s.io", "roles") not in granted
    binding = full.one(ROLE_BINDING).inputs
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "runner"}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "runner", "namespace": "runner"}]


def test_service_account_carries_workload_identity(full):
    account = full.one("kubernetes:core/v1:ServiceAccount").inputs["metadata"]
    assert account["annotations"] == {"iam.gke.io/gcp-service-account": "r@p.iam.gserviceaccount.com"}


def test_queue_is_internal_and_fenced(full):
    service = full.one(SERVICE, "runner-queue-service").inputs
    assert service["spec"]["type"] == "ClusterIP" and "externalIPs" not in service["spec"]
    assert full.exports["queue_endpoint"] == "redis://runner-queue.runner.svc.cluster.local:6379/0"
    pod_labels = full.one(STATEFULSET).inputs["spec"]["template"]["metadata"]["labels"]
    policy = full.one(NETPOL).inputs["spec"]
    selector = policy["podSelector"]["matchLabels"]
    assert selector.items() <= pod_labels.items() and service["spec"]["selector"].items() <= pod_labels.items()
    assert policy["policyTypes"] == ["Ingress"]
    [rule] = policy["ingress"]
    same_namespace, keda = rule["from"]
    assert same_namespace == {"podSelector": {}}  # no namespaceSelector: this namespace only
    assert keda["namespaceSelector"] == {"matchLabels": {"kubernetes.io/metadata.name": "keda"}}
    assert rule["ports"] == [{"protocol": "TCP", "port": 6379}]


def test_queue_password_is_a_secret(full):
    secret = full.one(SECRET)
    assert secret.is_secret("stringData.password")
    assert secret.inputs["stringData"]["password"] == f"mock-password-{full.one(PASSWORD).name}"
    env = full.one(STATEFULSET).inputs["spec"]["template"]["spec"]["containers"][0]["env"]
    assert env == [{"name": "REDIS_PASSWORD", "valueFrom": {"secretKeyRef": {"name": "runner-queue-auth",
                                                                             "key": "password"}}}]
    assert full.exports["queue_secret_name"] == "runner-queue-auth"


def test_queue_password_from_config():
    recorded = run(_platform(), secret_config={"runner:queuePassword": "s3cret-from-config"})
    assert not recorded.of_type(PASSWORD)
    secret = recorded.one(SECRET)
    assert secret.inputs["stringData"]["password"] == "s3cret-from-config" and secret.is_secret("stringData")


def test_optional_parts(full):
    release = full.one(RELEASE, "runner-keda").inputs
    assert (release["chart"], release["repositoryOpts"]["repo"]) == ("keda", "https://kedacore.github.io/charts")
    assert release["version"][0].isdigit() and release["namespace"] == "keda"
    plugin = full.one(DAEMONSET).inputs["spec"]["template"]["spec"]
    assert plugin["containers"][0]["image"].startswith("nvcr.io/nvidia/k8s-device-plugin:v0.17.")
    # Any taint a GPU node has (the GPU one, AKS's Spot one, ...) is tolerated; the node affinity
    # alone keeps the plugin on GPU nodes.
    for taint in ("nvidia.com/gpu=present:NoSchedule", "kubernetes.azure.com/scalesetpriority=spot:NoSchedule",
                  "cloud.google.com/gke-spot=true:NoExecute"):
        assert tolerates(plugin["tolerations"], taint), taint
    terms = plugin["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert [t["matchExpressions"] for t in terms] == [[{"key": k, "operator": "Exists"}] for k in GPU_NODE_LABEL_KEYS]

    bare = run(_platform(install_keda=False, install_http_addon=False, keda_namespace="kube-system"))
    assert not bare.of_type(RELEASE) and not bare.of_type(DAEMONSET)
    assert [s.name for s in bare.of_type(SERVICE)] == ["runner-queue-service"]
    assert (bare.exports["web_domain"], bare.exports["web_endpoint"]) == ("", "")  # no front door: in-cluster only
    sources = bare.one(NETPOL).inputs["spec"]["ingress"][0]["from"]
    assert sources[1]["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "kube-system"}


def test_the_front_door_is_the_http_add_on_behind_a_load_balancer(full):
    from infra.common.manifests import HTTP_ADDON_VALUES

    addon = full.one(RELEASE, "runner-http-addon").inputs
    assert (addon["chart"], addon["repositoryOpts"]["repo"]) == ("keda-add-ons-http", "https://kedacore.github.io/charts")
    assert addon["namespace"] == "keda" and addon["values"] == HTTP_ADDON_VALUES
    # A request waits for a cold start and for a slow handler far longer than the chart's defaults.
    assert HTTP_ADDON_VALUES["interceptor"]["responseHeaderTimeout"] == "150s"
    assert full.one(RELEASE, "runner-keda").urn in full.one(RELEASE, "runner-http-addon").depends_on
    door = full.one(SERVICE, "runner-web-service").inputs
    assert door["spec"]["type"] == "LoadBalancer" and door["metadata"]["namespace"] == "keda"
    assert door["spec"]["ports"] == [{"name": "http", "port": 80, "targetPort": "proxy", "protocol": "TCP"}]
    assert door["spec"]["selector"]["app.kubernetes.io/component"] == "interceptor"
    assert "loadBalancerSourceRanges" not in door["spec"]
    # The address the cloud gave the load balancer, and a domain that resolves without DNS set-up.
    assert full.exports["web_endpoint"] == f"http://{MOCK_LB_IP}"
    assert full.exports["web_domain"] == f"{MOCK_LB_IP}.sslip.io"
    assert load_outputs(full.exports).web_domain == f"{MOCK_LB_IP}.sslip.io"


def test_the_front_door_takes_its_domain_and_allowed_sources_from_config():
    recorded = run(_platform(), config={"runner:webDomain": "Apps.Example.com.",
                                        "runner:webAllowedCidrs": ["198.51.100.0/24"]})
    assert recorded.exports["web_domain"] == "apps.example.com"
    assert recorded.one(SERVICE, "runner-web-service").inputs["spec"]["loadBalancerSourceRanges"] == [
        "198.51.100.0/24"]


@pytest.mark.parametrize("bad", ["https://apps.example.com", "localhost", "apps_example.com"])
def test_a_web_domain_that_is_no_dns_name_stops_the_program_with_one_line(bad):
    with pytest.raises(pulumi.RunError, match=r"stack config runner:webDomain is .*, not a DNS name: `pulumi config set"):
        run(_platform(), config={"runner:webDomain": bad})


@pytest.mark.parametrize("status,configured,endpoint,domain", [
    ({"loadBalancer": {"ingress": [{"hostname": "a1b2.elb.eu-west-1.amazonaws.com"}]}}, None,
     "http://a1b2.elb.eu-west-1.amazonaws.com", ""),  # a host name: sslip.io cannot map it; set runner:webDomain
    ({"loadBalancer": {"ingress": [{"hostname": "a1b2.elb.eu-west-1.amazonaws.com"}]}}, "apps.example.com",
     "http://a1b2.elb.eu-west-1.amazonaws.com", "apps.example.com"),
    ({"loadBalancer": {}}, None, "", ""),  # not assigned yet
    (None, None, "", ""),
])
def test_web_address_and_domain(status, configured, endpoint, domain):
    from infra.common.manifests import web_address, web_domain

    assert web_address(status) == endpoint
    assert web_domain(configured, endpoint) == domain


def test_custom_namespace_flows_into_outputs():
    recorded = run(_platform(namespace="batch", service_account="worker"))
    assert recorded.one(NS).inputs["metadata"]["name"] == "batch"
    assert recorded.exports["namespace"] == "batch" and recorded.exports["service_account"] == "worker"
    assert recorded.exports["queue_endpoint"] == "redis://runner-queue.batch.svc.cluster.local:6379/0"
    spaces = {m["metadata"].get("namespace") for m in recorded.k8s_manifests() if m["kind"] != "Namespace"}
    assert spaces == {"batch", "keda"}  # the front door stands beside the HTTP add-on's interceptor
    assert [m["metadata"]["name"] for m in recorded.k8s_manifests() if m["metadata"].get("namespace") == "keda"] == [
        "runner-web"]


# --- export_contract and the entry point ------------------------------------------------------


def test_export_contract_marks_secrets(full):
    assert set(full.exports) == set(OUTPUT_KEYS)
    assert full.is_secret("kubeconfig")
    assert not full.is_secret("namespace") and not full.is_secret("queue_secret_name")


@pytest.mark.parametrize("change,expect", [
    (lambda d: d.pop("gpu_types"), "missing gpu_types"),
    (lambda d: d.update(extra=1), "unknown extra"),
])
def test_export_contract_rejects_wrong_keys(change, expect):
    from infra.common import export_contract

    outputs = dict(GOOD)
    change(outputs)
    with pytest.raises(ValueError, match=expect):
        run(lambda: export_contract(outputs))


def _main():
    import infra.__main__

    return infra.__main__.main


@pytest.mark.parametrize("config,expect", [
    ({"runner:cloud": "gke"}, "stack config runner:cloud is 'gke'; set one of gcp, aws, azure, local"),
    ({}, "stack config runner:cloud is not set"),
])
def test_main_rejects_unknown_cloud(config, expect):
    with pytest.raises(pulumi.RunError, match=expect):
        run(_main(), config=config)


def test_main_runs_only_the_chosen_cloud(monkeypatch):
    ran = []
    for cloud in ("aws", "local"):
        monkeypatch.setitem(sys.modules, f"infra.{cloud}", types.SimpleNamespace(program=lambda c=cloud: ran.append(c)))
    run(_main(), config={"runner:cloud": "local"})
    assert ran == ["local"]

"""Level 3 of issue 7: every manifest the kubernetes provider renders, checked without a cluster.

- Kubernetes kinds validate strictly (unknown fields rejected) against the official schemas that
  kubernetes-validate ships (1.31); KEDA kinds against the openAPIV3Schema of the CRDs vendored
  from kedacore/keda in tests/schemas/keda/, made strict (`additionalProperties: false` wherever
  the CRD does not allow unknown fields), their metadata as an ObjectMeta.
- Each case is compared with tests/golden/k8s/<case>.yaml (RUNNER_UPDATE_GOLDEN=1 rewrites them).
- Behaviour: no secret value anywhere outside its Secret, GPU fallback affinity and tolerations,
  the unknown-GPU error, the volume sidecar's trap (run for real under /bin/sh with a fake sync
  tool), ownerReferences on every object of a run, sandbox defaults and limits, the KEDA mapping.
"""

from __future__ import annotations

import base64
import copy
import datetime as dt
import json
import os
import pathlib
import re
import signal
import subprocess
import time

import jsonschema
import kubernetes_validate
import pytest
import yaml

import golden_files

from runner import Cron, Period, Retries, Secret, Volume
from runner._plane._wire import Keys
from runner._k8s import (
    SYNC_TOOLS,
    WORKER_COMMAND,
    Workload,
    cronjob,
    deployment,
    dns_name,
    function_manifests,
    gpu_placement,
    job_manifests,
    owned,
    period_to_cron,
    run_owner,
    sandbox_manifests,
    schedule_manifests,
    sidecar_script,
    web_host,
    web_manifests,
)
from runner._resources import FunctionOptions, parse_gpu
from runner._stack import StackOutputs
from runner.exception import InvalidError

ROOT = pathlib.Path(__file__).resolve().parent.parent
GOLDEN = ROOT / "tests" / "golden" / "k8s"
KEDA_CRDS = ROOT / "tests" / "schemas" / "keda"
K8S_VERSION = "1.31.0"
SECRET_VALUE = "s3cr3t-Value-that-must-never-be-inlined"
START = dt.datetime(2026, 3, 4, 10, 17, tzinfo=dt.timezone.utc)  # a Wednesday

GPU_TYPES = {
    "H100": {"node_selector": {"cloud.google.com/gke-accelerator": "nvidia-h100-80gb"},
             "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
                             {"key": "cloud.google.com/gke-spot", "operator": "Equal", "value": "true",
                              "effect": "NoSchedule"}]},
    "A100-80GB": {"node_selector": {"cloud.google.com/gke-accelerator": "nvidia-a100-80gb"},
                  "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
                                  {"key": "runner/a100", "operator": "Exists", "effect": "NoSchedule"}]},
    "L4": {"node_selector": {"cloud.google.com/gke-accelerator": "nvidia-l4"},
           "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]},
}


def stack(cloud: str = "gcp", **kw) -> StackOutputs:
    bucket = {"gcp": "gs://runner-bucket", "aws": "s3://runner-bucket",
              "azure": "https://acct.blob.core.windows.net/runner", "local": "file:///var/lib/runner/bucket"}[cloud]
    registry = {"gcp": "europe-docker.pkg.dev/proj/runner", "aws": "123456789012.dkr.ecr.eu-west-1.amazonaws.com/runner",
                "azure": "runneracr.azurecr.io/runner", "local": "localhost:5001/runner"}[cloud]
    values = {"cloud": cloud, "kubeconfig": "", "registry_url": registry, "bucket_url": bucket, "namespace": "runner",
              "service_account": "runner-workload", "pod_labels": {},
              "queue_endpoint": "redis://runner-queue.runner.svc.cluster.local:6379/0",
              "queue_secret_name": "runner-queue", "gpu_types": GPU_TYPES}
    values.update(kw)
    return StackOutputs(**values)


def workload(function: str = "square", *, deployed: bool = False, **options) -> Workload:
    return Workload(app="demo", function=function, run_id="ap-7Kq2", image="demo:3f2a9c",
                    options=FunctionOptions.build(**options), deployed=deployed)


def secrets() -> list[Secret]:
    return [Secret.from_dict({"API_TOKEN": SECRET_VALUE, "OTHER": "plain-looking"})]


# ---- the cases: every kind, every cloud flavour --------------------------------------------------

def case_function() -> list[dict]:
    w = workload(deployed=True, env={"MODE": "fast"}, secrets=secrets(), cpu=(1.0, 2.0), memory=1024,
                 min_containers=1, max_containers=10, scaledown_window=120)
    return function_manifests(stack("gcp"), w)


def case_function_gpu_volume() -> list[dict]:
    w = workload("train", gpu=["H100", "A100-80GB"], volumes={"/data": Volume.from_name("weights")},
                 secrets=secrets(), timeout=3600)
    return function_manifests(stack("aws"), w)


def case_web() -> list[dict]:
    w = workload("api", deployed=True, secrets=secrets(), min_containers=0)
    return web_manifests(stack("azure", pod_labels={"azure.workload.identity/use": "true"}), w)


def case_web_front_door() -> list[dict]:
    w = workload("chat", deployed=True, min_containers=0, max_containers=4, scaledown_window=90)
    s = stack("gcp", web_domain="203.0.113.10.sslip.io", web_endpoint="http://203.0.113.10")
    return web_manifests(s, w, host=web_host(s, w), concurrency=8)


def case_cron() -> list[dict]:
    w = workload("report", deployed=True, secrets=secrets(), retries=2)
    return schedule_manifests(stack("gcp"), w, Cron("0 9 * * 1-5", timezone="Europe/Paris"))


def case_period() -> list[dict]:
    w = workload("tick", deployed=True)
    return schedule_manifests(stack("gcp"), w, Period(hours=6), start=START)


def case_job() -> list[dict]:
    w = workload("once", secrets=secrets(), retries=Retries(max_retries=3))
    return job_manifests(stack("gcp"), w)


def case_sandbox() -> list[dict]:
    w = workload("sandbox", secrets=secrets(), gpu="L4", cpu=2.0, memory=4096, timeout=600,
                 volumes={"/work": Volume.from_name("scratch")})
    return sandbox_manifests(stack("local"), w, "sb-9xYz", command=["python", "-c", "print(1)"], block_network=True)


def case_sandbox_default() -> list[dict]:
    return sandbox_manifests(stack("gcp"), workload("sandbox"), "sb-default")


def case_run() -> list[dict]:
    s = stack("gcp")
    owner = run_owner(s, "demo", "ap-7Kq2")
    w = workload(secrets=secrets())
    return [owner, *owned(function_manifests(s, w), owner, "0b8f2c1e-3d4a-4f5b-8c6d-7e8f9a0b1c2d")]


CASES = {name.removeprefix("case_").replace("_", "-"): fn for name, fn in globals().items() if name.startswith("case_")}


# ---- validators ----------------------------------------------------------------------------------

def validate_k8s(manifest: dict) -> None:
    try:
        kubernetes_validate.validate(manifest, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as e:
        where = ".".join(str(p) for p in e.absolute_path) or "(top level)"
        raise AssertionError(f"{manifest.get('kind')} {manifest['metadata'].get('name')}: {where}: {e.message}") from None


def _strict(schema):
    """The CRD's structural schema with unknown fields rejected wherever the CRD itself does."""
    if isinstance(schema, list):
        return [_strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _strict(v) for k, v in schema.items()}
    if ("properties" in out and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    return out


def _keda_validators() -> dict[str, tuple[str, jsonschema.Draft7Validator]]:
    found = {}
    for path in sorted(KEDA_CRDS.glob("*.yaml")):
        crd = next(d for d in yaml.safe_load_all(path.read_text()) if d)
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            schema = _strict(version["schema"]["openAPIV3Schema"])
            jsonschema.Draft7Validator.check_schema(schema)
            found[kind] = (f"{group}/{version['name']}", jsonschema.Draft7Validator(schema))
    return found


KEDA = _keda_validators()


def validate_keda(manifest: dict) -> None:
    api_version, validator = KEDA[manifest["kind"]]
    assert manifest["apiVersion"] == api_version
    errors = sorted(validator.iter_errors(manifest), key=lambda e: list(e.absolute_path))
    if errors:
        e = errors[0]
        where = ".".join(str(p) for p in e.absolute_path) or "(top level)"
        raise AssertionError(f"{manifest['kind']} {manifest['metadata']['name']}: {where}: {e.message}")
    # The CRD says only `metadata: {type: object}`; check it as the ObjectMeta the API server applies.
    validate_k8s({"apiVersion": "v1", "kind": "ConfigMap", "metadata": manifest["metadata"]})


def validate(manifest: dict) -> None:
    (validate_keda if manifest["apiVersion"].split("/")[0] in ("keda.sh", "http.keda.sh") else validate_k8s)(manifest)


def assert_golden(name: str, docs: list[dict]) -> None:
    golden_files.assert_golden(GOLDEN, name, docs)


def by_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[dict], kind: str) -> dict:
    found = by_kind(docs, kind)
    assert len(found) == 1, f"expected one {kind}, got {[d['kind'] for d in docs]}"
    return found[0]


def pod_spec(m: dict) -> dict:
    if m["kind"] == "Pod":
        return m["spec"]
    if m["kind"] == "CronJob":
        return m["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return m["spec"]["template"]["spec"]


def main_container(m: dict) -> dict:
    return next(c for c in pod_spec(m)["containers"] if c["name"] == "main")


WORKLOAD_KINDS = ("Deployment", "Job", "CronJob", "Pod")


# ---- schemas and goldens -------------------------------------------------------------------------

def test_every_kind_is_rendered():
    kinds = {m["kind"] for fn in CASES.values() for m in fn()}
    assert kinds == {"ConfigMap", "CronJob", "Deployment", "HTTPScaledObject", "Job", "NetworkPolicy", "Pod",
                     "ScaledObject", "Secret", "Service", "TriggerAuthentication"}


@pytest.mark.parametrize("case", sorted(CASES))
def test_manifests_validate_against_the_official_schemas(case):
    for manifest in CASES[case]():
        validate(manifest)


@pytest.mark.parametrize("case", sorted(CASES))
def test_manifests_match_golden_files(case):
    assert_golden(case, CASES[case]())


@pytest.mark.parametrize("case", sorted(CASES))
def test_rendering_is_deterministic(case):
    assert json.dumps(CASES[case](), sort_keys=True) == json.dumps(CASES[case](), sort_keys=True)


def test_the_validators_reject_what_the_api_server_would():
    dep = one(case_function(), "Deployment")
    bad = copy.deepcopy(dep)
    main_container(bad)["enviroment"] = []  # misspelled field
    with pytest.raises(AssertionError, match="enviroment"):
        validate(bad)
    so = one(case_function(), "ScaledObject")
    bad = copy.deepcopy(so)
    bad["spec"]["minReplicas"] = 1  # the HPA's name, not KEDA's
    with pytest.raises(AssertionError, match="minReplicas"):
        validate(bad)
    bad = copy.deepcopy(so)
    bad["spec"]["triggers"][0]["metadata"]["lagCount"] = 1  # trigger metadata values are strings
    with pytest.raises(AssertionError, match="lagCount"):
        validate(bad)
    bad = copy.deepcopy(so)
    bad["metadata"]["label"] = bad["metadata"].pop("labels")  # checked as an ObjectMeta
    with pytest.raises(AssertionError, match="label"):
        validate(bad)


# ---- secrets -------------------------------------------------------------------------------------

@pytest.mark.parametrize("case", sorted(CASES))
def test_no_secret_value_outside_its_secret(case):
    docs = CASES[case]()
    encoded = base64.b64encode(SECRET_VALUE.encode()).decode()
    for m in docs:
        text = json.dumps(m)
        assert SECRET_VALUE not in text, f"{m['kind']} {m['metadata']['name']} inlines the secret value"
        if m["kind"] != "Secret":
            assert encoded not in text, f"{m['kind']} {m['metadata']['name']} holds the encoded secret value"
    secret_objs = by_kind(docs, "Secret")
    names = {s["metadata"]["name"] for s in secret_objs}
    for m in docs:
        if m["kind"] in WORKLOAD_KINDS:
            refs = {e["secretRef"]["name"] for e in main_container(m).get("envFrom", [])}
            assert refs == names, f"{m['kind']} refers to {refs}, rendered Secrets are {names}"
            queue = [e for e in main_container(m)["env"] if e["name"] == "RUNNER_QUEUE_PASSWORD"]
            if m["kind"] == "Pod":
                assert not queue, "a sandbox must not get the queue password"
                continue
            assert queue[0] == {"name": "RUNNER_QUEUE_PASSWORD",
                             "valueFrom": {"secretKeyRef": {"name": "runner-queue", "key": "password"}}}
            assert all(set(e) <= {"name", "value", "valueFrom"} for e in main_container(m)["env"])
    for s in secret_objs:
        assert base64.b64decode(s["data"]["API_TOKEN"]).decode() == SECRET_VALUE
        assert "stringData" not in s


# ---- GPUs ----------------------------------------------------------------------------------------

def test_gpu_fallback_list_is_required_affinity_in_order_with_preferences_and_tolerations_union():
    dep = one(case_function_gpu_volume(), "Deployment")
    spec = pod_spec(dep)
    node = spec["affinity"]["nodeAffinity"]
    terms = node["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    values = [t["matchExpressions"][0]["values"] for t in terms]
    assert values == [["nvidia-h100-80gb"], ["nvidia-a100-80gb"]]
    assert all(t["matchExpressions"][0]["operator"] == "In" for t in terms)
    preferred = node["preferredDuringSchedulingIgnoredDuringExecution"]
    assert [p["preference"] for p in preferred] == terms
    weights = [p["weight"] for p in preferred]
    assert weights == sorted(weights, reverse=True) and weights[0] > weights[1] >= 1
    assert spec["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
        {"key": "cloud.google.com/gke-spot", "operator": "Equal", "value": "true", "effect": "NoSchedule"},
        {"key": "runner/a100", "operator": "Exists", "effect": "NoSchedule"},
    ]
    assert "nodeSelector" not in spec
    assert main_container(dep)["resources"]["limits"] == {"nvidia.com/gpu": "1"}


def test_single_gpu_is_a_node_selector():
    p = gpu_placement(stack(), parse_gpu("H100:2"))
    assert p.node_selector == {"cloud.google.com/gke-accelerator": "nvidia-h100-80gb"}
    assert p.affinity is None and p.gpu_count == 2
    assert list(p.tolerations) == GPU_TYPES["H100"]["tolerations"]
    dep = deployment(stack(), workload(gpu="H100:2"))
    assert pod_spec(dep)["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-h100-80gb"}
    assert main_container(dep)["resources"]["limits"]["nvidia.com/gpu"] == "2"


def test_gpu_the_stack_does_not_offer_is_a_clear_error_before_rendering():
    with pytest.raises(InvalidError) as e:
        function_manifests(stack(), workload(gpu=["H100", "B200"], secrets=secrets()))
    assert str(e.value) == ("gpu B200 is not offered by this stack's cluster (it offers: A100-80GB, H100, L4); "
                            "choose one of those or add a pool in infra/")
    assert "\n" not in str(e.value)
    with pytest.raises(InvalidError, match=r"gpu T4 is not offered .*\(it offers: none\)"):
        sandbox_manifests(stack(gpu_types={}), workload(gpu="T4"), "sb-1")
    with pytest.raises(InvalidError, match="different counts"):
        gpu_placement(stack(), parse_gpu(["H100:2", "A100-80GB"]))


def test_gpu_any_is_every_offered_type():
    p = gpu_placement(stack(), parse_gpu("any"))
    terms = p.affinity["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert len(terms) == len(GPU_TYPES)


# ---- volumes -------------------------------------------------------------------------------------

def test_volume_is_synced_down_by_an_init_container_and_up_by_a_native_sidecar():
    dep = one(case_function_gpu_volume(), "Deployment")
    spec = pod_spec(dep)
    down, up = spec["initContainers"]
    assert down["command"][3:] == ["runner-sync", "down", "s3://runner-bucket", "weights", "/data"]
    assert "aws s3 sync" in down["command"][2]
    assert "restartPolicy" not in down and up["restartPolicy"] == "Always"
    assert {"name": "volume-0", "emptyDir": {}} in spec["volumes"]
    assert {"name": "volume-0", "mountPath": "/data"} in main_container(dep)["volumeMounts"]
    assert {"name": "volume-0", "mountPath": "/data"} in up["volumeMounts"]
    assert spec["terminationGracePeriodSeconds"] == 120
    env = {e["name"]: e.get("value") for e in main_container(dep)["env"]}
    assert json.loads(env["RUNNER_VOLUMES"]) == {"weights": "/data"}
    assert deployment(stack(), workload(volumes={"/d": Volume.from_name("v")}), grace_seconds=600)[
        "spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 600


def test_sidecar_trap_is_the_correct_form():
    for tool in SYNC_TOOLS.values():
        script = sidecar_script(tool, [("gs://b/volumes/v", "/data")])
        assert "trap 'sync_up; exit $?' TERM" in script
        assert re.search(r"^\s*sleep \S+ & wait \$!$", script, re.MULTILINE)
        foreground = [line for line in script.splitlines() if re.match(r"^\s*sleep\b", line) and "&" not in line]
        assert not foreground, f"foreground sleep delays the TERM trap: {foreground}"
        assert script.index("trap ") < script.index("while true")


def _fake_tool(tmp_path: pathlib.Path, fail: bool = False) -> dict:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "calls.log"
    (bin_dir / "gsutil").write_text(f'#!/bin/sh\necho "$*" >> {log}\n' + ("exit 1\n" if fail else "exit 0\n"))
    (bin_dir / "gsutil").chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}


def _run_sidecar(tmp_path, env):
    ctl = tmp_path / "ctl"
    ctl.mkdir()
    script = sidecar_script(SYNC_TOOLS["gcp"], [("gs://b/volumes/weights", "/data"), ("gs://b/volumes/x y", "/x y")],
                            sync_dir=str(ctl))
    proc = subprocess.Popen(["/bin/sh", "-c", script, "runner-sync-up"], env=env)
    time.sleep(0.3)
    return proc, ctl


def _wait_for(path: pathlib.Path, timeout: float = 5.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            return path.read_text()
        time.sleep(0.05)
    raise AssertionError(f"{path} never appeared")


def test_sidecar_uploads_on_commit_and_on_sigterm(tmp_path):
    env = _fake_tool(tmp_path)
    proc, ctl = _run_sidecar(tmp_path, env)
    try:
        (ctl / "request.tmp").write_text("tok-1")
        (ctl / "request.tmp").rename(ctl / "request")
        assert _wait_for(ctl / "done").strip() == "tok-1 ok"
        assert (tmp_path / "calls.log").read_text().splitlines() == [
            "-m -q rsync -r /data gs://b/volumes/weights", "-m -q rsync -r /x y gs://b/volumes/x y"]
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=5) == 0
        assert time.monotonic() - sent < 1.5, "the TERM trap waited for a sleep to end"
        assert len((tmp_path / "calls.log").read_text().splitlines()) == 4  # the final upload ran
    finally:
        proc.kill()
        proc.wait()


def test_sidecar_reports_a_failed_upload(tmp_path):
    proc, ctl = _run_sidecar(tmp_path, _fake_tool(tmp_path, fail=True))
    try:
        (ctl / "request").write_text("tok-2")
        assert _wait_for(ctl / "done").strip() == "tok-2 failed"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=5) != 0
    finally:
        proc.kill()
        proc.wait()


def test_each_cloud_uses_its_own_sync_tool():
    seen = {}
    for cloud in ("gcp", "aws", "azure", "local"):
        dep = deployment(stack(cloud), workload(volumes={"/data": Volume.from_name("weights")}))
        down = pod_spec(dep)["initContainers"][0]
        seen[cloud] = (down["image"], down["command"][2])
    assert "gsutil" in seen["gcp"][1] and "aws s3 sync" in seen["aws"][1] and "azcopy sync" in seen["azure"][1]
    assert "cp -a" in seen["local"][1]
    local = pod_spec(deployment(stack("local"), workload(volumes={"/data": Volume.from_name("weights")})))
    assert {"name": "bucket", "hostPath": {"path": "/var/lib/runner/bucket", "type": "DirectoryOrCreate"}} in local["volumes"]


# ---- KEDA ----------------------------------------------------------------------------------------

def test_scaled_object_maps_min_max_cooldown_and_targets_the_deployment():
    docs = case_function()
    so, dep, ta = one(docs, "ScaledObject"), one(docs, "Deployment"), one(docs, "TriggerAuthentication")
    spec = so["spec"]
    assert (spec["minReplicaCount"], spec["maxReplicaCount"], spec["cooldownPeriod"]) == (1, 10, 120)
    assert spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] == 120
    assert spec["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": dep["metadata"]["name"]}
    lag, pending = spec["triggers"]
    for t in (lag, pending):
        assert t["type"] == "redis-streams"
        assert t["authenticationRef"] == {"name": ta["metadata"]["name"]}
        assert t["metadata"]["address"] == "runner-queue.runner.svc.cluster.local:6379"
        assert t["metadata"]["stream"] == Keys("demo/square").inputs  # the plane's stream; deployed: no run id
        assert t["metadata"]["consumerGroup"] == "workers"
        assert "password" not in json.dumps(t["metadata"]).lower()
    assert lag["metadata"]["lagCount"] == "1" and "pendingEntriesCount" not in lag["metadata"]
    assert pending["metadata"]["pendingEntriesCount"] == "1" and "lagCount" not in pending["metadata"]
    assert ta["spec"] == {"secretTargetRef": [{"parameter": "password", "name": "runner-queue", "key": "password"}]}


def test_scaled_object_defaults():
    so = one(function_manifests(stack(), workload()), "ScaledObject")["spec"]
    assert (so["minReplicaCount"], so["maxReplicaCount"], so["cooldownPeriod"]) == (0, 100, 60)


# ---- web, schedules, jobs -------------------------------------------------------------------------

def test_web_service_reaches_the_deployments_port_8000():
    docs = case_web()
    dep, svc = one(docs, "Deployment"), one(docs, "Service")
    assert svc["spec"]["type"] == "ClusterIP"
    assert svc["spec"]["ports"] == [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}]
    assert main_container(dep)["ports"] == [{"name": "http", "containerPort": 8000, "protocol": "TCP"}]
    template_labels = dep["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= template_labels.items()
    assert template_labels["azure.workload.identity/use"] == "true"
    assert dep["spec"]["replicas"] == 1


def test_a_deployed_web_function_behind_the_front_door_scales_from_zero_on_its_host():
    docs = case_web_front_door()
    dep, svc, front = one(docs, "Deployment"), one(docs, "Service"), one(docs, "HTTPScaledObject")
    assert dep["spec"]["replicas"] == 0  # min_containers: the add-on wakes it on the first request
    spec = front["spec"]
    assert spec["hosts"] == ["demo-chat.203.0.113.10.sslip.io"]
    ref = spec["scaleTargetRef"]
    assert (ref["kind"], ref["name"], ref["service"]) == ("Deployment", dep["metadata"]["name"], svc["metadata"]["name"])
    # The CRD's CEL rule, which a JSON schema cannot say: exactly one of port and portName.
    assert ("port" in ref) != ("portName" in ref) and ref["port"] == svc["spec"]["ports"][0]["port"]
    assert spec["replicas"] == {"min": 0, "max": 4} and spec["scaledownPeriod"] == 90
    assert spec["scalingMetric"] == {"concurrency": {"targetValue": 8}}  # max_inputs requests per container
    assert front["metadata"]["labels"] == dep["metadata"]["labels"]  # removed with the app's other objects
    # Without a front door the Deployment keeps a pod, reachable in-cluster only.
    bare = stack("gcp")
    assert web_host(bare, workload("chat", deployed=True)) is None
    assert not by_kind(web_manifests(bare, workload("chat", deployed=True, min_containers=0)), "HTTPScaledObject")


def test_the_http_scaled_object_validator_rejects_what_the_crd_does():
    front = one(case_web_front_door(), "HTTPScaledObject")
    bad = copy.deepcopy(front)
    bad["spec"]["host"] = bad["spec"].pop("hosts")[0]  # the field's old name, gone from the CRD
    with pytest.raises(AssertionError, match="host"):
        validate(bad)
    bad = copy.deepcopy(front)
    bad["spec"]["replicas"]["min"] = "0"
    with pytest.raises(AssertionError, match="replicas.min"):
        validate(bad)


@pytest.mark.parametrize("case", sorted(CASES))
def test_pods_are_labelled_selected_and_unprivileged(case):
    for m in CASES[case]():
        if m["kind"] not in WORKLOAD_KINDS:
            continue
        spec = pod_spec(m)
        assert spec["serviceAccountName"] == "runner-workload"
        for c in spec["containers"] + spec.get("initContainers", []):
            assert c["securityContext"] == {"privileged": False, "allowPrivilegeEscalation": False}
        if m["kind"] == "Deployment":
            assert m["spec"]["selector"]["matchLabels"].items() <= m["spec"]["template"]["metadata"]["labels"].items()
            assert "runner/run-id" not in m["spec"]["selector"]["matchLabels"]
        assert main_container(m)["image"].startswith(("europe-docker.pkg.dev/proj/runner/",
                                                      "123456789012.dkr.ecr.eu-west-1.amazonaws.com/runner/",
                                                      "runneracr.azurecr.io/runner/", "localhost:5001/runner/"))


def test_worker_command_is_a_parameter():
    assert main_container(deployment(stack(), workload()))["command"] == list(WORKER_COMMAND)
    assert main_container(deployment(stack(), workload(), command=["w"]))["command"] == ["w"]


def test_cron_keeps_expression_and_time_zone():
    cj = one(case_cron(), "CronJob")
    assert (cj["spec"]["schedule"], cj["spec"]["timeZone"], cj["spec"]["concurrencyPolicy"]) == (
        "0 9 * * 1-5", "Europe/Paris", "Allow")
    job_spec = cj["spec"]["jobTemplate"]["spec"]
    assert job_spec["backoffLimit"] == 2
    assert pod_spec(cj)["restartPolicy"] == "Never"
    assert job_spec["podFailurePolicy"]["rules"][0]["onPodConditions"] == [{"type": "DisruptionTarget", "status": "True"}]


@pytest.mark.parametrize("period, expected", [
    (Period(minutes=1), "* * * * *"),
    (Period(minutes=5), "2-59/5 * * * *"),
    (Period(minutes=30), "17-59/30 * * * *"),
    (Period(hours=1), "17 0-23/1 * * *"),
    (Period(hours=6), "17 4-23/6 * * *"),
    (Period(days=1), "17 10 * * *"),
    (Period(hours=24), "17 10 * * *"),
    (Period(weeks=1), "17 10 * * 3"),
    (Period(months=3), "17 10 4 3-12/3 *"),
    (Period(years=1), "17 10 4 3 *"),
])
def test_period_maps_to_cron_in_phase_with_the_start(period, expected):
    assert period_to_cron(period, START) == expected


@pytest.mark.parametrize("period", [Period(minutes=7), Period(seconds=30), Period(hours=5), Period(days=2),
                                    Period(hours=1, seconds=1), Period(months=5), Period(months=1, days=1)])
def test_period_cron_cannot_express_is_an_error(period):
    with pytest.raises(InvalidError, match="cannot be a Kubernetes CronJob"):
        cronjob(stack(), workload(deployed=True), period, start=START)


def test_monthly_period_from_a_late_day_is_an_error():
    with pytest.raises(InvalidError, match="day 31"):
        period_to_cron(Period(months=1), dt.datetime(2026, 1, 31, tzinfo=dt.timezone.utc))


def test_job_counts_retries_and_ignores_disruptions():
    j = one(case_job(), "Job")
    assert j["spec"]["backoffLimit"] == 3
    assert j["spec"]["podFailurePolicy"]["rules"][0]["action"] == "Ignore"
    assert "activeDeadlineSeconds" not in j["spec"]


# ---- sandboxes -----------------------------------------------------------------------------------

def test_sandbox_defaults():
    pod = one(case_sandbox_default(), "Pod")
    c = main_container(pod)
    assert c["resources"] == {"requests": {"cpu": "250m", "memory": "256Mi"}}
    assert pod["spec"]["activeDeadlineSeconds"] == 300
    assert pod["spec"]["restartPolicy"] == "Never"
    assert c["command"] == ["sh", "-c", "trap 'exit 0' TERM; sleep infinity & wait"]
    assert not by_kind(case_sandbox_default(), "NetworkPolicy")


def test_sandbox_enforces_cpu_memory_gpu_as_limits_and_its_timeout():
    docs = case_sandbox()
    pod = one(docs, "Pod")
    assert main_container(pod)["resources"] == {"requests": {"cpu": "2", "memory": "4096Mi"},
                                                "limits": {"cpu": "2", "memory": "4096Mi", "nvidia.com/gpu": "1"}}
    assert pod["spec"]["activeDeadlineSeconds"] == 600
    assert pod["spec"]["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-l4"}
    function = main_container(deployment(stack(), workload(cpu=2.0, memory=4096)))["resources"]
    assert "limits" not in function  # a function's cpu=/memory= are requests, as on Modal


def test_block_network_denies_everything_for_exactly_that_sandbox():
    docs = case_sandbox()
    policy, pod = one(docs, "NetworkPolicy"), one(docs, "Pod")
    assert docs.index(policy) < docs.index(pod)
    spec = policy["spec"]
    assert spec["policyTypes"] == ["Ingress", "Egress"]
    assert "ingress" not in spec and "egress" not in spec
    assert spec["podSelector"]["matchLabels"] == {"runner/sandbox": "sb-9xYz"}
    assert spec["podSelector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    other = one(sandbox_manifests(stack(), workload("sandbox"), "sb-other"), "Pod")
    assert not spec["podSelector"]["matchLabels"].items() <= other["metadata"]["labels"].items()


def test_block_network_with_volumes_needs_a_local_bucket():
    w = workload("sandbox", volumes={"/work": Volume.from_name("scratch")})
    with pytest.raises(InvalidError, match="block_network=True with volumes is not supported on a gcp cluster"):
        sandbox_manifests(stack("gcp"), w, "sb-1", block_network=True)
    assert sandbox_manifests(stack("gcp"), w, "sb-1")  # without block_network it renders


def test_function_resources_default_to_modal_requests():
    assert main_container(deployment(stack(), workload()))["resources"] == {
        "requests": {"cpu": "250m", "memory": "256Mi"}}
    assert main_container(deployment(stack(), workload(cpu=(0.5, 1.5), memory=(512, 1024))))["resources"] == {
        "requests": {"cpu": "500m", "memory": "512Mi"}, "limits": {"cpu": "1500m", "memory": "1024Mi"}}


# ---- ownership -----------------------------------------------------------------------------------

def test_every_object_of_a_run_is_owned_by_its_configmap():
    docs = case_run()
    owner, rest = docs[0], docs[1:]
    assert owner["kind"] == "ConfigMap" and owner["metadata"]["name"] == "runner-run-ap-7kq2-" + owner[
        "metadata"]["name"].rsplit("-", 1)[1]
    assert "ownerReferences" not in owner["metadata"]
    assert {m["kind"] for m in rest} == {"Secret", "TriggerAuthentication", "Deployment", "ScaledObject"}
    for m in rest:
        assert m["metadata"]["ownerReferences"] == [{
            "apiVersion": "v1", "kind": "ConfigMap", "name": owner["metadata"]["name"],
            "uid": "0b8f2c1e-3d4a-4f5b-8c6d-7e8f9a0b1c2d", "blockOwnerDeletion": True, "controller": False}]
    again = owned(rest, owner, "0b8f2c1e-3d4a-4f5b-8c6d-7e8f9a0b1c2d")
    assert again == rest  # idempotent
    assert owned([owner], owner, "x") == [owner]


def test_deployed_names_are_stable_and_ephemeral_names_carry_the_run():
    assert workload(deployed=True).name == "demo-square"
    assert workload().name.startswith("demo-square-ap-7kq2-")
    assert dns_name("demo", "Model.predict").startswith("demo-model-predict-")
    assert dns_name("demo", "Model.predict") != dns_name("demo", "model-predict")
    long = dns_name("a" * 80, "b" * 80)
    assert len(long) <= 63 and re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", long)
    assert dns_name("9lives").startswith("r-9lives")

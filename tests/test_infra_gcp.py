"""The GCP program (infra/gcp) under Pulumi mocks: GKE, its node pools, registry, bucket, identities."""

from __future__ import annotations


import pulumi
import pytest
import yaml
from infra_harness import assert_golden, run, sdk_argument_problems, sdk_problems, validate_manifest

from runner._stack import OUTPUT_KEYS, load_outputs

gcp = pytest.importorskip("pulumi_gcp")

import infra.gcp  # noqa: E402
from infra.gcp.cluster import APIS, NODE_ROLES  # noqa: E402
from infra.gcp.gpus import GPU_MACHINES  # noqa: E402

CLUSTER = "gcp:container/cluster:Cluster"
POOL = "gcp:container/nodePool:NodePool"
BUCKET = "gcp:storage/bucket:Bucket"
BUCKET_IAM = "gcp:storage/bucketIAMMember:BucketIAMMember"
REPO = "gcp:artifactregistry/repository:Repository"
REPO_IAM = "gcp:artifactregistry/repositoryIamMember:RepositoryIamMember"
ACCOUNT = "gcp:serviceaccount/account:Account"
ACCOUNT_IAM = "gcp:serviceaccount/iAMMember:IAMMember"
PROJECT_IAM = "gcp:projects/iAMMember:IAMMember"
SERVICE = "gcp:projects/service:Service"
COMPONENT = "runner:gcp:GcpCluster"
K8S_PROVIDER = "pulumi:providers:kubernetes"

NODES = "serviceAccount:runner-nodes@proj.iam.gserviceaccount.com"
WORKLOADS_EMAIL = "runner-workloads@proj.iam.gserviceaccount.com"
WORKLOADS = f"serviceAccount:{WORKLOADS_EMAIL}"

# What GCP computes and the program reads: the cluster's endpoint and CA, account emails.
HOOKS = {
    CLUSTER: lambda a: {"endpoint": "34.1.2.3", "masterAuth": {"clusterCaCertificate": "Q0EtREFUQQ=="}},
    ACCOUNT: lambda a: {"email": f"{a.inputs['accountId']}@{a.inputs['project']}.iam.gserviceaccount.com",
                        "name": f"projects/{a.inputs['project']}/serviceAccounts/{a.inputs['accountId']}"},
}
BASE = {"runner:cloud": "gcp", "gcp:project": "proj"}


def _run(**config):
    return run(infra.gcp.program, config={**BASE, **config}, hooks=HOOKS)


@pytest.fixture(scope="module")
def default():
    """The program on a stack that sets only the project, run once for the read-only checks."""
    return _run()


@pytest.fixture(scope="module")
def fallback():
    """Several GPU types, each with a Spot and an on-demand pool, pinned to chosen zones."""
    return _run(**{"runner:gpuTypes": ["L4", "H100", "B200"], "runner:onDemandFallback": True,
                   "runner:gpuZones": {"H100": ["us-central1-a", "us-central1-c"]}})


def _pools(recorded):
    return {p.inputs["name"]: p.inputs for p in recorded.of_type(POOL)}


# --- the contract --------------------------------------------------------------------------


def test_every_contract_output_exists_and_kubeconfig_is_secret(default):
    assert set(default.exports) == set(OUTPUT_KEYS)
    assert default.is_secret("kubeconfig")
    assert not [k for k in OUTPUT_KEYS if k != "kubeconfig" and default.is_secret(k)]
    outputs = load_outputs(default.exports)  # what the runner reads back
    assert outputs.cloud == "gcp"
    assert outputs.registry_url == "us-central1-docker.pkg.dev/proj/runner"
    assert outputs.bucket_url == "gs://proj-runner-volumes"
    assert (outputs.namespace, outputs.service_account, outputs.pod_labels) == ("runner", "runner", {})
    assert outputs.queue_endpoint == "redis://runner-queue.runner.svc.cluster.local:6379/0"
    assert outputs.queue_secret_name == "runner-queue-auth"


def test_kubeconfig_authenticates_with_the_gke_plugin(default):
    config = yaml.safe_load(default.exports["kubeconfig"])
    [cluster] = config["clusters"]
    assert cluster["cluster"] == {"server": "https://34.1.2.3", "certificate-authority-data": "Q0EtREFUQQ=="}
    [user] = config["users"]
    assert set(user["user"]) == {"exec"}  # no token, no client key
    assert user["user"]["exec"]["command"] == "gke-gcloud-auth-plugin"
    assert user["user"]["exec"]["apiVersion"] == "client.authentication.k8s.io/v1beta1"
    assert config["current-context"] == config["contexts"][0]["name"] == "runner"
    provider = default.one(K8S_PROVIDER)
    assert provider.is_secret("kubeconfig") and provider.inputs["kubeconfig"] == default.exports["kubeconfig"]


def test_gpu_types_select_the_pools_and_tolerate_their_taint(default, fallback):
    assert default.exports["gpu_types"] == {"L4": {
        "node_selector": {"cloud.google.com/gke-accelerator": "nvidia-l4", "cloud.google.com/gke-spot": "true"},
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Equal", "value": "present",
                         "effect": "NoSchedule"}]}}
    pools = _pools(fallback)
    assert set(fallback.exports["gpu_types"]) == {"L4", "H100", "B200"}
    for gpu, placement in fallback.exports["gpu_types"].items():
        # With an on-demand fallback the selector must not pin Spot, or that pool is never used.
        assert placement["node_selector"] == {"cloud.google.com/gke-accelerator": GPU_MACHINES[gpu].accelerator}
        for kind in ("spot", "ondemand"):
            config = pools[f"gpu-{gpu.lower()}-{kind}"]["nodeConfig"]
            assert config["guestAccelerators"][0]["type"] == GPU_MACHINES[gpu].accelerator
            [taint] = config["taints"]
            [toleration] = placement["tolerations"]
            assert (toleration["key"], toleration["value"]) == (taint["key"], taint["value"])
            assert taint["effect"] == "NO_SCHEDULE" and toleration["effect"] == "NoSchedule"


# --- cluster and node pools ------------------------------------------------------------------


def test_cluster_has_workload_identity_and_no_default_pool(default):
    cluster = default.one(CLUSTER).inputs
    assert cluster["workloadIdentityConfig"] == {"workloadPool": "proj.svc.id.goog"}
    assert cluster["releaseChannel"] == {"channel": "REGULAR"}
    assert cluster["removeDefaultNodePool"] is True
    assert cluster["deletionProtection"] is False  # `pulumi destroy` must get back to zero
    assert cluster["datapathProvider"] == "ADVANCED_DATAPATH"  # enforces the queue's NetworkPolicy
    assert (cluster["location"], cluster["name"], cluster["project"]) == ("us-central1", "runner", "proj")
    assert "nodeLocations" not in cluster


def test_cpu_pool_is_autoscaled_on_demand_and_untainted(default):
    cpu = _pools(default)["cpu"]
    assert cpu["autoscaling"]["totalMinNodeCount"] == 1 and cpu["autoscaling"]["totalMaxNodeCount"] == 10
    config = cpu["nodeConfig"]
    assert config["machineType"] == "e2-standard-4"
    assert not config.get("spot") and not config.get("taints") and not config.get("guestAccelerators")
    assert config["workloadMetadataConfig"] == {"mode": "GKE_METADATA"}
    assert config["serviceAccount"] == NODES.removeprefix("serviceAccount:")


def test_gpu_pools_scale_from_zero_on_spot_with_driver_and_taint(default, fallback):
    assert set(_pools(default)) == {"cpu", "gpu-l4-spot"}
    pools = _pools(fallback)
    assert set(pools) == {"cpu", "gpu-l4-spot", "gpu-l4-ondemand", "gpu-h100-spot", "gpu-h100-ondemand",
                          "gpu-b200-spot", "gpu-b200-ondemand"}
    for name, pool in pools.items():
        if name == "cpu":
            continue
        assert pool["initialNodeCount"] == 0
        assert pool["autoscaling"] == {"totalMinNodeCount": 0, "totalMaxNodeCount": 4, "locationPolicy": "ANY"}
        config = pool["nodeConfig"]
        assert config["spot"] is name.endswith("-spot")
        assert config["taints"] == [{"key": "nvidia.com/gpu", "value": "present", "effect": "NO_SCHEDULE"}]
        [accelerator] = config["guestAccelerators"]
        assert accelerator["gpuDriverInstallationConfig"] == {"gpuDriverVersion": "LATEST"}
        assert config["workloadMetadataConfig"] == {"mode": "GKE_METADATA"}
    # Google sells 1-GPU H100 machines as Spot only; the on-demand pool takes the 8-GPU shape.
    h100_spot, h100_on_demand = pools["gpu-h100-spot"]["nodeConfig"], pools["gpu-h100-ondemand"]["nodeConfig"]
    assert (h100_spot["machineType"], h100_spot["guestAccelerators"][0]["count"]) == ("a3-highgpu-1g", 1)
    assert (h100_on_demand["machineType"], h100_on_demand["guestAccelerators"][0]["count"]) == ("a3-highgpu-8g", 8)
    assert pools["gpu-b200-spot"]["nodeConfig"]["diskType"] == "hyperdisk-balanced"
    assert pools["gpu-h100-spot"]["nodeLocations"] == ["us-central1-a", "us-central1-c"]
    assert "nodeLocations" not in pools["gpu-l4-spot"]


def test_on_demand_only_when_spot_is_off():
    recorded = _run(**{"runner:spot": "false", "runner:gpuTypes": "L4,A100-80GB", "runner:gpuMaxNodes": "2"})
    pools = _pools(recorded)
    assert set(pools) == {"cpu", "gpu-l4-ondemand", "gpu-a100-80gb-ondemand"}
    assert all(p["nodeConfig"]["spot"] is False and p["autoscaling"]["totalMaxNodeCount"] == 2
               for n, p in pools.items() if n != "cpu")
    assert recorded.exports["gpu_types"]["A100-80GB"]["node_selector"] == {
        "cloud.google.com/gke-accelerator": "nvidia-a100-80gb"}


@pytest.mark.parametrize("zones,location,node_locations", [
    (["us-east1-b"], "us-east1-b", None),  # one zone: a zonal cluster
    (["us-east1-b", "us-east1-c"], "us-east1", ["us-east1-b", "us-east1-c"]),
])
def test_zones_choose_zonal_or_regional(zones, location, node_locations):
    recorded = _run(**{"gcp:region": "us-east1", "runner:zones": zones, "runner:gpuTypes": []})
    cluster = recorded.one(CLUSTER).inputs
    assert cluster["location"] == location and cluster.get("nodeLocations") == node_locations
    assert {p.inputs["location"] for p in recorded.of_type(POOL)} == {location}
    assert recorded.exports["registry_url"] == "us-east1-docker.pkg.dev/proj/runner"
    assert recorded.exports["gpu_types"] == {} and set(_pools(recorded)) == {"cpu"}


# --- registry, bucket, identities -----------------------------------------------------------


def test_bucket_is_private_and_versioned(default):
    bucket = default.one(BUCKET).inputs
    assert bucket["name"] == "proj-runner-volumes" and bucket["location"] == "US-CENTRAL1"
    assert bucket["uniformBucketLevelAccess"] is True
    assert bucket["publicAccessPrevention"] == "enforced"
    assert bucket["versioning"] == {"enabled": True}
    assert bucket["forceDestroy"] is False  # Volumes data survives an accidental destroy
    [grant] = default.of_type(BUCKET_IAM)
    assert (grant.inputs["bucket"], grant.inputs["role"], grant.inputs["member"]) == (
        "proj-runner-volumes", "roles/storage.objectAdmin", WORKLOADS)


def test_registry_is_private_nodes_pull_and_runner_pushes(default):
    repo = default.one(REPO).inputs
    assert (repo["format"], repo["location"], repo["repositoryId"]) == ("DOCKER", "us-central1", "runner")
    grants = {(g.inputs["role"], g.inputs["member"]) for g in default.of_type(REPO_IAM)
              if (g.inputs["repository"], g.inputs["location"]) == ("runner", "us-central1")}
    assert grants == {("roles/artifactregistry.reader", NODES), ("roles/artifactregistry.writer", WORKLOADS)}


def test_nothing_is_public_and_nothing_is_project_wide_for_the_runner(default):
    members = [r.inputs["member"] for r in default.resources if "member" in r.inputs]
    assert members and not [m for m in members if m in ("allUsers", "allAuthenticatedUsers")]
    project_grants = {(g.inputs["role"], g.inputs["member"]) for g in default.of_type(PROJECT_IAM)}
    assert project_grants == {(role, NODES) for role in NODE_ROLES}  # nodes: logs and metrics only
    assert not [r for r in default.resources if r.type.endswith("Key")]  # no service-account keys


def test_workload_identity_binds_runner_pods_to_their_google_account(default):
    [binding] = default.of_type(ACCOUNT_IAM)
    assert binding.inputs == {"serviceAccountId": "projects/proj/serviceAccounts/runner-workloads",
                              "role": "roles/iam.workloadIdentityUser",
                              "member": "serviceAccount:proj.svc.id.goog[runner/runner]"}
    account = default.one("kubernetes:core/v1:ServiceAccount").inputs["metadata"]
    assert (account["namespace"], account["name"]) == ("runner", "runner")
    assert account["annotations"] == {"iam.gke.io/gcp-service-account": WORKLOADS_EMAIL}


def test_apis_are_enabled_and_left_on_at_destroy(default):
    services = default.of_type(SERVICE)
    assert {s.inputs["service"] for s in services} == set(APIS)
    assert all(s.inputs["disableOnDestroy"] is False for s in services)


# --- the Kubernetes side ---------------------------------------------------------------------


def test_manifests_validate_and_match_golden(default):
    manifests = default.k8s_manifests()
    for manifest in manifests:
        validate_manifest(manifest)
    kinds = {m["kind"] for m in manifests}
    assert "DaemonSet" not in kinds  # GKE installs the NVIDIA device plugin itself
    assert not kinds & {"ClusterRole", "ClusterRoleBinding"}
    release = default.one("kubernetes:helm.sh/v3:Release", "runner-keda").inputs
    assert (release["chart"], release["namespace"]) == ("keda", "keda")
    addon = default.one("kubernetes:helm.sh/v3:Release", "runner-http-addon").inputs
    assert (addon["chart"], addon["namespace"]) == ("keda-add-ons-http", "keda")
    assert default.exports["web_domain"].endswith(".sslip.io")  # GKE's load balancers have an IP
    assert_golden("gcp-platform", manifests)


def test_gcp_resources_match_golden(fallback):
    cloud = sorted((r for r in fallback.resources if r.type.startswith("gcp:")), key=lambda r: (r.type, r.name))
    assert_golden("gcp-resources", [{"type": r.type, "name": r.name, "inputs": r.inputs} for r in cloud])


def test_children_are_parented_to_the_component(default):
    component = default.one(COMPONENT)
    assert component.parent_type == "pulumi:pulumi:Stack"
    platform = default.one("runner:platform:RunnerPlatform")
    assert platform.parent == component.urn
    for resource in default.resources:
        if resource is component:
            continue
        assert resource.parent in (component.urn, platform.urn), resource.name
        if resource.type.startswith("gcp:"):
            assert resource.parent == component.urn, resource.name
    provider = default.one(K8S_PROVIDER)
    assert provider.parent == component.urn
    for resource in default.resources:
        if resource.type.startswith("kubernetes:"):
            assert resource.provider == f"{provider.urn}::{provider.name}_id", resource.name


# --- every argument exists in the installed SDK ----------------------------------------------


def test_every_argument_exists_in_the_installed_sdk(default, fallback):
    assert {r.type for r in fallback.resources if r.type.startswith("gcp:")} >= {CLUSTER, POOL, BUCKET, REPO}
    problems = sdk_problems(default, gcp) + sdk_problems(fallback, gcp)
    assert not problems, "\n".join(problems)


def test_the_argument_check_catches_a_misspelling(fallback):
    pool = next(r for r in fallback.resources if r.type == POOL)
    broken = {**pool.inputs, "nodeConfig": {**pool.inputs["nodeConfig"], "guestAccelerators": [
        {"type": "nvidia-l4", "count": 1, "gpuDriverInstall": {"gpuDriverVersion": "LATEST"}}]}}
    assert sdk_argument_problems(broken, gcp.container.NodePoolArgs, "pool") == [
        "pool.nodeConfig.guestAccelerators.0.gpuDriverInstall is not an argument of "
        "NodePoolNodeConfigGuestAcceleratorArgs"]


# --- config ----------------------------------------------------------------------------------


def _args(**config):
    captured = []
    run(lambda: captured.append(infra.gcp.args_from_config()), config={**BASE, **config})
    return captured[0]


def test_config_defaults():
    args = _args()
    assert (args.project, args.region, args.zones, args.name) == ("proj", "us-central1", (), "runner")
    assert (args.cpu_machine_type, args.cpu_min_nodes, args.cpu_max_nodes) == ("e2-standard-4", 1, 10)
    assert (args.gpu_types, args.gpu_max_nodes, args.spot, args.on_demand_fallback) == (("L4",), 4, True, False)
    assert (args.gpu_driver_version, args.release_channel, args.force_destroy) == ("LATEST", "REGULAR", False)


def test_config_values_and_region_precedence():
    args = _args(**{"gcp:region": "europe-west4", "runner:cpuMachineType": "n2-standard-8", "runner:cpuMaxNodes": 3,
                    "runner:gpuTypes": '["H100"]', "runner:spot": "False", "runner:name": "team-a"})
    assert (args.region, args.cpu_machine_type, args.cpu_max_nodes) == ("europe-west4", "n2-standard-8", 3)
    assert (args.gpu_types, args.spot, args.name) == (("H100",), False, "team-a")
    assert _args(**{"gcp:region": "europe-west4", "runner:region": "asia-east1"}).region == "asia-east1"


@pytest.mark.parametrize("config,expect", [
    ({"gcp:project": ""}, "stack config gcp:project is not set; set the Google Cloud project to deploy into: "
                          "`pulumi config set gcp:project MY_PROJECT`"),
    ({"runner:gpuTypes": ["L4", "A10G"]}, "stack config runner:gpuTypes 'A10G' is not a GPU GKE offers; choose from "
                                          "T4, L4, A100-40GB, A100-80GB, H100, H200, B200"),
    ({"runner:gpuMaxNodes": "lots"}, "stack config runner:gpuMaxNodes is 'lots', not a whole number"),
    ({"runner:gpuMaxNodes": 0}, "stack config runner:gpuMaxNodes 0 must be a whole number of at least 1"),
    ({"runner:spot": "maybe"}, "stack config runner:spot is 'maybe'; set true or false"),
    ({"runner:zones": ["europe-west4-a"]}, "stack config runner:zones 'europe-west4-a' is not a zone of region "
                                           "us-central1"),
    ({"runner:cpuMinNodes": 20}, "stack config runner:cpuMinNodes 20 must be a whole number from 0 to the CPU "
                                 "pool's maximum (10)"),
    ({"runner:gpuZones": "H100=us-central1-a"}, "stack config runner:gpuZones is 'H100=us-central1-a'; give GPU "
                                                "type -> zones as JSON"),
    ({"runner:name": "Runner_1"}, "stack config runner:name 'Runner_1' must be 2 to 20 lowercase letters"),
])
def test_bad_config_is_one_clear_line(config, expect):
    with pytest.raises(pulumi.RunError) as e:
        _run(**config)
    message = str(e.value)
    assert message.startswith(expect), message
    assert "\n" not in message


def test_the_pulumi_entry_point_runs_this_program():
    import infra.__main__

    recorded = run(infra.__main__.main, config=BASE, hooks=HOOKS)
    assert recorded.exports["cloud"] == "gcp" and recorded.one(COMPONENT).name == "runner"

"""The Azure program (infra/azure) under Pulumi mocks: what it declares, and what it exports.

The mocks return what Azure computes and the program reads: the cluster's kubelet identity and
OIDC issuer, the registry's login server, the account's endpoints, the identity's ids, and the
user kubeconfig AKS lists (an invoke). Arguments are also checked against the installed SDK's
input types and enums, which mocks alone would accept whatever they were.
"""

from __future__ import annotations

import base64
import dataclasses
import pathlib
import re

import pulumi
import pytest
import yaml
from infra_harness import (assert_golden, run, sdk_argument_problems, sdk_problems, tolerates,
                           validate_manifest)

from runner._stack import OUTPUT_KEYS, load_outputs

azure = pytest.importorskip("pulumi_azure_native")
from infra.azure import GPU_VM_SIZES  # noqa: E402

CLUSTER = "azure-native:containerservice:ManagedCluster"
POOL = "azure-native:containerservice:AgentPool"
REGISTRY = "azure-native:containerregistry:Registry"
ACCOUNT = "azure-native:storage:StorageAccount"
BLOB_SERVICE = "azure-native:storage:BlobServiceProperties"
CONTAINER = "azure-native:storage:BlobContainer"
IDENTITY = "azure-native:managedidentity:UserAssignedIdentity"
FEDERATION = "azure-native:managedidentity:FederatedIdentityCredential"
ROLE_ASSIGNMENT = "azure-native:authorization:RoleAssignment"
COMPONENT = "runner:azure:AzureCluster"
PLATFORM = "runner:platform:RunnerPlatform"
K8S_PROVIDER = "pulumi:providers:kubernetes"

ISSUER = "https://eastus2.oic.prod-aks.azure.com/tenant/cluster/"
SERVER = "https://runner-test-abc.hcp.eastus2.azmk8s.io:443"
ROLE_IDS = {"AcrPull": "7f951dac-4ce3-4ce0-945a-9b0a0e0b9d3a", "AcrPush": "8311e382-0749-4cb8-b61a-304f252e45ec",
            "Blob": "ba92f5b4-2d11-453d-a403-e96b0029c9fe", "ClusterAdmin": "b1ff04bb-8a4e-4dc4-8eb5-8693973ce19b"}
# What AKS puts on every node of a Spot pool, beyond the pool's own nodeTaints.
AKS_SPOT_TAINT = "kubernetes.azure.com/scalesetpriority=spot:NoSchedule"


def aks_kubeconfig(server_id: str = "6dae42f8-4368-4678-94ff-3960e28e3630") -> str:
    """What listClusterUserCredential returns (format=exec) on a cluster with Entra ID: base64 YAML."""
    doc = {
        "apiVersion": "v1", "kind": "Config", "current-context": "runner-aks",
        "clusters": [{"name": "runner-aks", "cluster": {"server": SERVER, "certificate-authority-data": "Q0E="}}],
        "contexts": [{"name": "runner-aks", "context": {"cluster": "runner-aks", "user": "clusterUser_rg_runner-aks"}}],
        "users": [{"name": "clusterUser_rg_runner-aks", "user": {"exec": {
            "apiVersion": "client.authentication.k8s.io/v1beta1", "command": "kubelogin",
            "args": ["get-token", "--environment", "AzurePublicCloud", "--server-id", server_id,
                     "--client-id", "80faf920-1908-4b52-b5ef-a8e7bedfc67a", "--tenant-id", "tenant",
                     "--login", "devicecode"]}}}],
    }
    return base64.b64encode(yaml.safe_dump(doc).encode()).decode()


HOOKS = {
    "azure-native:resources:ResourceGroup": lambda a: {"name": "runner-rg1234"},
    CLUSTER: lambda a: {"name": "runner-aks1234",
                        "identityProfile": {"kubeletidentity": {"objectId": "kubelet-object-id",
                                                                "clientId": "kubelet-client-id"}},
                        "oidcIssuerProfile": {"enabled": True, "issuerURL": ISSUER}},
    REGISTRY: lambda a: {"name": "runnerregistry1234", "loginServer": "runnerregistry1234.azurecr.io"},
    ACCOUNT: lambda a: {"name": "runnervols1234",
                        "primaryEndpoints": {k: f"https://runnervols1234.{k}.core.windows.net/"
                                             for k in ("blob", "dfs", "file", "queue", "table", "web")}},
    CONTAINER: lambda a: {"name": a.inputs["containerName"]},
    IDENTITY: lambda a: {"name": "runner-pods1234", "clientId": "pods-client-id", "principalId": "pods-principal-id"},
}
CALLS = {
    "azure-native:authorization:getClientConfig": lambda a: {
        "subscriptionId": "sub-1", "objectId": "deployer-object-id", "tenantId": "tenant", "clientId": "c"},
    "azure-native:containerservice:listManagedClusterUserCredentials": lambda a: {
        "kubeconfigs": [{"name": "clusterUser", "value": aks_kubeconfig()}]},
}


def _program():
    import infra.azure

    return infra.azure.program


def run_azure(config=None, calls=None):
    return run(_program(), config={"runner:cloud": "azure", **(config or {})},
               secret_config={"runner:queuePassword": "pw"}, hooks=HOOKS, calls={**CALLS, **(calls or {})})


@pytest.fixture(scope="module")
def default():
    return run_azure()


@pytest.fixture(scope="module")
def fallback():
    return run_azure({"runner:onDemandFallback": "true", "runner:gpuTypes": '["T4", "H100"]'})


def pools(rec) -> dict[str, dict]:
    return {r.inputs["agentPoolName"]: r.inputs for r in rec.of_type(POOL)}


def role_assignments(rec) -> dict[str, dict]:
    """role definition guid -> [assignment inputs]"""
    out: dict[str, list] = {}
    for r in rec.of_type(ROLE_ASSIGNMENT):
        out.setdefault(r.inputs["roleDefinitionId"].rsplit("/", 1)[-1], []).append(r.inputs)
    return out


def node_taints(pool: dict) -> list[str]:
    return list(pool.get("nodeTaints") or []) + ([AKS_SPOT_TAINT] if pool.get("scaleSetPriority") == "Spot" else [])


# --- the contract ---------------------------------------------------------------------------


def test_every_contract_output_is_exported_and_loads(default):
    assert set(default.exports) == set(OUTPUT_KEYS)
    outputs = load_outputs(default.exports)
    assert outputs.cloud == "azure"
    assert outputs.registry_url == "runnerregistry1234.azurecr.io"
    assert outputs.bucket_url == "https://runnervols1234.blob.core.windows.net/volumes"
    assert (outputs.namespace, outputs.service_account) == ("runner", "runner")
    assert outputs.pod_labels == {"azure.workload.identity/use": "true"}
    assert outputs.queue_endpoint == "redis://runner-queue.runner.svc.cluster.local:6379/0"
    assert outputs.queue_secret_name == "runner-queue-auth"
    assert set(outputs.gpu_types) == {"T4", "A100-80GB", "H100"}


def test_kubeconfig_is_secret_and_uses_kubelogin_without_a_prompt(default):
    assert default.is_secret("kubeconfig")
    assert default.one(K8S_PROVIDER).is_secret("kubeconfig")
    config = yaml.safe_load(default.exports["kubeconfig"])
    [cluster] = config["clusters"]
    assert cluster["cluster"] == {"server": SERVER, "certificate-authority-data": "Q0E="}
    [user] = config["users"]
    exec_ = user["user"]["exec"]
    assert exec_["command"] == "kubelogin"
    assert exec_["args"] == ["get-token", "--login", "azurecli", "--server-id", "6dae42f8-4368-4678-94ff-3960e28e3630"]
    assert config["current-context"] == config["contexts"][0]["name"]
    assert config["contexts"][0]["context"] == {"cluster": cluster["name"], "user": user["name"]}


def test_kubeconfig_keeps_a_sovereign_server_id_and_rejects_garbage():
    from infra.azure import kube

    other = "11111111-2222-3333-4444-555555555555"
    assert f"- {other}" in kube.kubelogin_kubeconfig(aks_kubeconfig(server_id=other))
    with pytest.raises(ValueError, match="without a cluster server"):
        kube.kubelogin_kubeconfig(base64.b64encode(b"kind: Config\n").decode())


# --- the cluster ----------------------------------------------------------------------------


def test_cluster_uses_entra_rbac_workload_identity_and_the_keda_add_on(default):
    c = default.one(CLUSTER).inputs
    assert c["aadProfile"] == {"managed": True, "enableAzureRBAC": True}
    assert c["disableLocalAccounts"] is True and c["enableRBAC"] is True
    assert c["oidcIssuerProfile"] == {"enabled": True}
    assert c["securityProfile"] == {"workloadIdentity": {"enabled": True}}
    assert c["workloadAutoScalerProfile"] == {"keda": {"enabled": True}}
    assert c["networkProfile"]["networkPolicy"] == "cilium"  # NetworkPolicies are enforced
    assert c["location"] == "eastus2" and c["sku"] == {"name": "Base", "tier": "Free"}
    [system] = c["agentPoolProfiles"]
    assert system["mode"] == "System" and system["enableAutoScaling"] is True
    assert (system["minCount"], system["maxCount"]) == (1, 3)


def test_cpu_pool_scales_from_zero_on_demand_untainted(default):
    cpu = pools(default)["cpu"]
    assert (cpu["mode"], cpu["enableAutoScaling"], cpu["minCount"], cpu["count"]) == ("User", True, 0, 0)
    assert cpu["maxCount"] == 10 and "scaleSetPriority" not in cpu and not cpu.get("nodeTaints")


def test_gpu_pools_scale_from_zero_on_spot_and_are_tainted(default):
    found = {name: p for name, p in pools(default).items() if name != "cpu"}
    assert {name: p["vmSize"] for name, p in found.items()} == {
        "t4spot": "Standard_NC4as_T4_v3", "a100x80spot": "Standard_NC24ads_A100_v4",
        "h100spot": "Standard_NC40ads_H100_v5"}
    for name, p in found.items():
        assert (p["enableAutoScaling"], p["minCount"], p["count"], p["maxCount"]) == (True, 0, 0, 2), name
        assert (p["scaleSetPriority"], p["scaleSetEvictionPolicy"], p["spotMaxPrice"]) == ("Spot", "Delete", -1), name
        assert p["nodeTaints"] == ["nvidia.com/gpu=present:NoSchedule"], name
        assert p["gpuProfile"] == {"driver": "Install"} and p["mode"] == "User", name
        assert p["resourceName"] == "runner-aks1234"


def _check_placement(rec):
    """Each exported GPU type selects exactly its pools, and tolerates every taint on them."""
    gpu_pools = {n: p for n, p in pools(rec).items() if n != "cpu"}
    for gpu, placement in rec.exports["gpu_types"].items():
        selector = placement["node_selector"]
        chosen = [p for p in gpu_pools.values() if selector.items() <= (p.get("nodeLabels") or {}).items()]
        assert chosen, f"{gpu}: {selector} selects no pool"
        assert {p["vmSize"] for p in chosen} == {GPU_VM_SIZES[gpu]}
        for pool in chosen:
            for taint in node_taints(pool):
                assert tolerates(placement["tolerations"], taint), f"{gpu}: {taint} not tolerated"
        # ... and the CPU pool and system pool stay free of GPU pods only through the taint:
        assert not tolerates(placement["tolerations"], "other=x:NoSchedule")
    return gpu_pools


def test_gpu_types_select_their_pools_and_tolerate_their_taints(default):
    _check_placement(default)
    assert default.exports["gpu_types"]["A100-80GB"]["node_selector"] == {"runner.dev/gpu": "a100-80gb"}


def test_device_plugin_runs_on_spot_gpu_nodes(default):
    [plugin] = [m for m in default.k8s_manifests() if m["kind"] == "DaemonSet"]
    spec = plugin["spec"]["template"]["spec"]
    for taint in node_taints(pools(default)["h100spot"]):
        assert tolerates(spec["tolerations"], taint)
    keys = {e["key"] for t in spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"] for e in t["matchExpressions"]}
    assert "runner.dev/gpu" in keys and "kubernetes.azure.com/accelerator" in keys


def test_on_demand_fallback_pools_and_priority_expander(fallback):
    found = _check_placement(fallback)
    assert {n: p.get("scaleSetPriority") for n, p in found.items()} == {
        "t4spot": "Spot", "t4": "Regular", "h100spot": "Spot", "h100": "Regular"}
    for name in ("t4", "h100"):
        assert found[name]["minCount"] == 0 and "spotMaxPrice" not in found[name]
    assert fallback.one(CLUSTER).inputs["autoScalerProfile"] == {"expander": "priority"}
    [expander] = [m for m in fallback.k8s_manifests() if m["kind"] == "ConfigMap"]
    assert (expander["metadata"]["name"], expander["metadata"]["namespace"]) == (
        "cluster-autoscaler-priority-expander", "kube-system")
    priorities = yaml.safe_load(expander["data"]["priorities"])

    def priority(pool):  # the autoscaler's node group name is the scale set's
        return max(p for p, patterns in priorities.items() if any(re.fullmatch(x, f"aks-{pool}-1234-vmss")
                                                                   for x in patterns))
    assert priority("h100spot") > priority("h100") and priority("t4spot") > priority("t4")
    assert priority("cpu") == priority("h100")
    validate_manifest(expander)
    assert_golden("azure-priority-expander", expander)


def test_on_demand_only():
    rec = run_azure({"runner:spot": "false", "runner:gpuTypes": '["H100"]'})
    found = {n: p for n, p in pools(rec).items() if n != "cpu"}
    assert list(found) == ["h100"] and found["h100"]["scaleSetPriority"] == "Regular"
    assert found["h100"]["minCount"] == 0
    assert rec.exports["gpu_types"]["H100"]["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Equal", "value": "present", "effect": "NoSchedule"}]
    assert not [m for m in rec.k8s_manifests() if m["kind"] == "ConfigMap"]


# --- registry, bucket, identity -------------------------------------------------------------


def test_registry_is_private_and_the_nodes_pull_from_it(default):
    registry = default.one(REGISTRY)
    assert registry.inputs["adminUserEnabled"] is False and registry.inputs["anonymousPullEnabled"] is False
    assert registry.inputs["sku"] == {"name": "Basic"}
    [pull] = role_assignments(default)[ROLE_IDS["AcrPull"]]
    assert pull["principalId"] == "kubelet-object-id" and pull["principalType"] == "ServicePrincipal"
    assert pull["scope"] == f"{registry.name}_id"
    assert pull["roleDefinitionId"] == f"/subscriptions/sub-1/providers/Microsoft.Authorization/roleDefinitions/" \
                                       f"{ROLE_IDS['AcrPull']}"


def test_bucket_is_private_and_versioned(default):
    account = default.one(ACCOUNT).inputs
    assert account["allowBlobPublicAccess"] is False and account["allowSharedKeyAccess"] is False
    assert account["enableHttpsTrafficOnly"] is True and account["minimumTlsVersion"] == "TLS1_2"
    service = default.one(BLOB_SERVICE).inputs
    assert service["accountName"] == "runnervols1234" and service["blobServicesName"] == "default"
    assert service["isVersioningEnabled"] is True
    container = default.one(CONTAINER).inputs
    assert container["accountName"] == "runnervols1234" and container["publicAccess"] == "None"


def test_runner_pods_reach_bucket_and_registry_through_workload_identity(default):
    federation = default.one(FEDERATION).inputs
    assert federation["issuer"] == ISSUER
    assert federation["subject"] == "system:serviceaccount:runner:runner"
    assert federation["audiences"] == ["api://AzureADTokenExchange"]
    assert federation["resourceName"] == "runner-pods1234"
    account = default.one("kubernetes:core/v1:ServiceAccount").inputs["metadata"]
    assert (account["name"], account["namespace"]) == ("runner", "runner")
    assert account["annotations"] == {"azure.workload.identity/client-id": "pods-client-id"}
    roles = role_assignments(default)
    [blob] = roles[ROLE_IDS["Blob"]]
    assert blob["principalId"] == "pods-principal-id" and blob["scope"] == f"{default.one(CONTAINER).name}_id"
    [push] = roles[ROLE_IDS["AcrPush"]]
    assert push["principalId"] == "pods-principal-id" and push["scope"] == f"{default.one(REGISTRY).name}_id"


def test_only_the_deployer_is_cluster_admin(default):
    roles = role_assignments(default)
    [admin] = roles[ROLE_IDS["ClusterAdmin"]]
    assert admin["principalId"] == "deployer-object-id" and admin["principalType"] == "User"
    assert admin["scope"] == f"{default.one(CLUSTER).name}_id"
    assert {a["principalId"] for a in roles[ROLE_IDS["ClusterAdmin"]]} == {"deployer-object-id"}
    assert sum(len(v) for v in roles.values()) == 4  # AcrPull, AcrPush, Blob, cluster admin: nothing else
    kinds = {m["kind"] for m in default.k8s_manifests()}
    assert not kinds & {"ClusterRole", "ClusterRoleBinding"}


# --- Kubernetes objects, structure ------------------------------------------------------------


def test_manifests_validate_and_match_golden(default):
    manifests = default.k8s_manifests()
    assert {m["kind"] for m in manifests} == {"Namespace", "ServiceAccount", "Role", "RoleBinding", "Secret",
                                              "Service", "StatefulSet", "NetworkPolicy", "DaemonSet"}
    for manifest in manifests:
        validate_manifest(manifest)
    assert_golden("azure-platform", manifests)
    # KEDA is the AKS add-on; the HTTP add-on (not part of it) goes beside it, in kube-system.
    assert [(r.inputs["chart"], r.inputs["namespace"]) for r in default.of_type("kubernetes:helm.sh/v3:Release")] == [
        ("keda-add-ons-http", "kube-system")]
    assert default.one("kubernetes:core/v1:Service", "runner-web-service").inputs["metadata"]["namespace"] == "kube-system"
    policy = default.one("kubernetes:networking.k8s.io/v1:NetworkPolicy").inputs["spec"]
    assert {"kubernetes.io/metadata.name": "kube-system"} in [
        s.get("namespaceSelector", {}).get("matchLabels") for s in policy["ingress"][0]["from"]]


def test_every_resource_is_parented_to_the_component(default):
    component = default.one(COMPONENT)
    assert component.parent_type == "pulumi:pulumi:Stack"
    platform = default.one(PLATFORM)
    provider = default.one(K8S_PROVIDER)
    for r in default.resources:
        if r is component:
            continue
        assert r.parent in (component.urn, platform.urn), f"{r.type} {r.name} is parented to {r.parent_type}"
        if r.type.startswith("kubernetes:"):
            assert r.provider == f"{provider.urn}::{provider.name}_id", r.name
    assert platform.parent == component.urn and provider.parent == component.urn


def test_arguments_exist_in_the_installed_sdk(default, fallback):
    problems = sdk_problems(default, azure) + sdk_problems(fallback, azure)
    assert not problems, "\n".join(problems)


def test_the_sdk_check_catches_a_wrong_name():
    problems = sdk_argument_problems({"aadProfile": {"enableAzureRbac": True}, "sku": {"tier": "Gold"}},
                                     azure.containerservice.ManagedClusterArgs, "c")
    assert len(problems) == 2 and "enableAzureRbac" in problems[0] and "'Gold'" in problems[1]


# --- config -----------------------------------------------------------------------------------


def test_config_defaults_are_documented():
    from infra.azure import AzureClusterArgs, config_key

    args = AzureClusterArgs()
    assert (args.location, args.spot, args.on_demand_fallback, args.gpu_max_nodes) == ("eastus2", True, False, 2)
    assert args.gpu_types == ("T4", "A100-80GB", "H100") and args.registry_sku == "Basic"
    readme = (pathlib.Path(__file__).parent.parent / "infra" / "azure" / "README.md").read_text()
    for field in dataclasses.fields(AzureClusterArgs):
        assert f"`{config_key(field.name)}`" in readme, f"README does not document {config_key(field.name)}"


def test_config_shapes_the_cluster():
    rec = run_azure({"azure-native:location": "westeurope", "runner:gpuTypes": '["H100"]', "runner:gpuMaxNodes": "5",
                     "runner:gpuVmSizes": '{"H100": "Standard_ND96isr_H100_v5"}',
                     "runner:deployerPrincipalType": "ServicePrincipal"})
    assert rec.one(CLUSTER).inputs["location"] == "westeurope"
    h100 = pools(rec)["h100spot"]
    assert (h100["vmSize"], h100["maxCount"]) == ("Standard_ND96isr_H100_v5", 5)
    assert set(rec.exports["gpu_types"]) == {"H100"}
    [admin] = role_assignments(rec)[ROLE_IDS["ClusterAdmin"]]
    assert admin["principalType"] == "ServicePrincipal"
    both = run_azure({"azure-native:location": "westeurope", "runner:location": "swedencentral", "runner:gpuTypes": "[]"})
    assert both.one(CLUSTER).inputs["location"] == "swedencentral"
    assert list(pools(both)) == ["cpu"] and both.exports["gpu_types"] == {}
    assert not [m for m in both.k8s_manifests() if m["kind"] == "DaemonSet"]  # no GPUs, no device plugin


@pytest.mark.parametrize("config,expect", [
    ({"runner:gpuTypes": '["L4"]'}, "stack config runner:gpuTypes has 'L4', which has no Azure VM size here; "
                                    "use some of T4, A100-80GB, A100-40GB, H100"),
    ({"runner:gpuTypes": "H100"}, "stack config runner:gpuTypes must be a JSON list of names"),
    ({"runner:gpuMaxNodes": "lots"}, "stack config runner:gpuMaxNodes must be a whole number, got 'lots'"),
    ({"runner:gpuMaxNodes": "0"}, "stack config runner:gpuMaxNodes must be a whole number from 1 to 1000, got 0"),
    ({"runner:spot": "yes"}, "stack config runner:spot must be true or false, got 'yes'"),
    ({"runner:registrySku": "Free"}, "stack config runner:registrySku must be one of Basic, Standard, Premium"),
    ({"runner:gpuVmSizes": '{"H100": "ND96"}'}, "stack config runner:gpuVmSizes maps Modal GPU names"),
    ({"azure-native:location": "East US"}, "stack config azure-native:location must be an Azure region name"),
    ({"runner:systemMinNodes": "4"}, "stack config runner:systemMinNodes (4) must not exceed system_max_nodes (3)"),
])
def test_bad_config_is_one_clear_line(config, expect):
    with pytest.raises(pulumi.RunError) as e:
        run_azure(config)
    message = str(e.value)
    assert message.startswith(expect), message
    assert "pulumi config set" in message and "\n" not in message


def test_the_entry_point_runs_this_program():
    import infra.__main__

    rec = run(infra.__main__.main, config={"runner:cloud": "azure"}, secret_config={"runner:queuePassword": "pw"},
              hooks=HOOKS, calls=CALLS)
    assert rec.exports["cloud"] == "azure" and rec.one(COMPONENT).name == "runner"

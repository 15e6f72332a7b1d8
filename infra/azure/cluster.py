"""`AzureCluster`: an AKS cluster, a registry, a bucket and an identity for the runner, plus the
in-cluster platform, as one Pulumi component.

    resource group      everything below, so `pulumi destroy` (or deleting the group) removes all
    AKS cluster         Entra ID + Azure RBAC, no local accounts; OIDC issuer and workload identity;
                        the KEDA add-on; Azure CNI overlay with Cilium (which enforces the queue's
                        NetworkPolicy); a small autoscaled system pool (where the queue runs)
    CPU pool "cpu"      on-demand, autoscaled from 0, for functions and sandboxes
    GPU pools           one per GPU type, autoscaled from 0, Spot (max price = on-demand price,
                        evicted nodes deleted) unless `spot=False`, tainted nvidia.com/gpu, labelled
                        runner.dev/gpu=<type>; with `on_demand_fallback`, an on-demand twin per type
                        that the autoscaler's priority expander uses only when Spot cannot grow
                        (AKS does not mix Spot and on-demand in one pool)
    ACR                 admin user off, anonymous pull off; the kubelet identity may pull
    storage account     no public blobs, no shared keys, HTTPS and TLS 1.2 only, versioned blobs,
                        one private container `volumes`
    runner identity     a user-assigned identity federated with the ServiceAccount runner/runner,
                        allowed to read and write the container and push to the registry
    RunnerPlatform      namespace, ServiceAccount (annotated with the identity's client id), Role,
                        queue, NVIDIA's device plugin (when there are GPU pools; it tolerates the
                        Spot taint AKS adds); KEDA comes from the add-on

The deploying principal gets "Azure Kubernetes Service RBAC Cluster Admin" on the cluster so the
Kubernetes provider can create the platform; the runner's ServiceAccount gets only its Role.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any

import pulumi
import pulumi_azure_native as azure
import pulumi_kubernetes as k8s

from infra.common import PlatformArgs, RunnerPlatform, apply_manifest
from infra.common.manifests import GPU_NODE_LABEL_KEYS
from runner._resources import GPU_TYPES

from . import kube

__all__ = ["GPU_VM_SIZES", "ROLES", "ArgsError", "AzureCluster", "AzureClusterArgs"]

# Modal GPU name -> the VM size of its pool: the smallest Azure size with that GPU. A100-40GB
# exists only as the 8-GPU ND96asr_v4, so it is offered but not on by default. Another mapping
# (e.g. "H100": "Standard_ND96isr_H100_v5" for 8 GPUs a node) goes in `gpu_vm_sizes`.
GPU_VM_SIZES: dict[str, str] = {
    "T4": "Standard_NC4as_T4_v3",
    "A100-80GB": "Standard_NC24ads_A100_v4",
    "A100-40GB": "Standard_ND96asr_v4",
    "H100": "Standard_NC40ads_H100_v5",
}
# Built-in Azure role definition ids (the same in every tenant).
ROLES = {
    "AcrPull": "7f951dac-4ce3-4ce0-945a-9b0a0e0b9d3a",
    "AcrPush": "8311e382-0749-4cb8-b61a-304f252e45ec",
    "Storage Blob Data Contributor": "ba92f5b4-2d11-453d-a403-e96b0029c9fe",
    "Azure Kubernetes Service RBAC Cluster Admin": "b1ff04bb-8a4e-4dc4-8eb5-8693973ce19b",
}
_MODAL_GPUS = tuple(g for g in GPU_TYPES if g not in ("ANY", "H100!"))
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_POOL_NAME = re.compile(r"^[a-z][a-z0-9]{0,11}$")  # AKS: Linux pool names, 1 to 12 characters


class ArgsError(ValueError):
    """A bad `AzureClusterArgs` field; `field` names it, the message says what it must be."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field} {message}")
        self.field = field
        self.reason = message


@dataclasses.dataclass(frozen=True)
class AzureClusterArgs:
    """How the AKS environment is sized. Each field is also stack config `runner:<camelCase>`."""

    # The Azure region; eastus2 has every default GPU size (check your quota there).
    location: str = "eastus2"
    # None: AKS's default version when the cluster is created.
    kubernetes_version: str | None = None
    # "Free" has no uptime SLA and costs nothing; "Standard" adds one for about $0.10 an hour.
    cluster_tier: str = "Free"
    # The system pool runs AKS's own pods and the queue; 1 node idle, up to 3.
    system_vm_size: str = "Standard_D4s_v5"
    system_min_nodes: int = 1
    system_max_nodes: int = 3
    # The CPU pool for functions and sandboxes, from 0 nodes.
    cpu_vm_size: str = "Standard_D8s_v5"
    cpu_max_nodes: int = 10
    # The GPU types offered (Modal names, keys of GPU_VM_SIZES or `gpu_vm_sizes`), each its own
    # pool from 0 to `gpu_max_nodes` nodes.
    gpu_types: tuple[str, ...] = ("T4", "A100-80GB", "H100")
    gpu_vm_sizes: Mapping[str, str] = dataclasses.field(default_factory=dict)
    gpu_max_nodes: int = 2
    # GPU pools on Spot VMs (up to ~90% cheaper, evictable); False: on-demand pools only.
    spot: bool = True
    # With `spot`, also an on-demand pool per GPU type, used only when Spot cannot scale up.
    on_demand_fallback: bool = False
    # "Basic" or "Standard" (more storage and throughput); "Premium" adds private endpoints.
    registry_sku: str = "Basic"
    # Who runs `pulumi up` (gets cluster admin through Azure RBAC): "User" for a person signed in
    # with `az login`, "ServicePrincipal" for CI; Azure rejects the grant when this is wrong.
    deployer_principal_type: str = "User"
    namespace: str = "runner"
    service_account: str = "runner"

    def __post_init__(self) -> None:
        object.__setattr__(self, "gpu_types", tuple(self.gpu_types))
        object.__setattr__(self, "gpu_vm_sizes", dict(self.gpu_vm_sizes))
        if not re.fullmatch(r"[a-z0-9]+", self.location or ""):
            raise ArgsError("location", f"must be an Azure region name such as eastus2, got {self.location!r}")
        for field, allowed in (("cluster_tier", ("Free", "Standard")),
                               ("registry_sku", ("Basic", "Standard", "Premium")),
                               ("deployer_principal_type", ("User", "ServicePrincipal", "Group"))):
            if getattr(self, field) not in allowed:
                raise ArgsError(field, f"must be one of {', '.join(allowed)}, got {getattr(self, field)!r}")
        for field, low, high in (("system_min_nodes", 1, 100), ("system_max_nodes", 1, 100),
                                 ("cpu_max_nodes", 1, 1000), ("gpu_max_nodes", 1, 1000)):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise ArgsError(field, f"must be a whole number from {low} to {high}, got {value!r}")
        if self.system_min_nodes > self.system_max_nodes:
            raise ArgsError("system_min_nodes", f"({self.system_min_nodes}) must not exceed system_max_nodes "
                                                f"({self.system_max_nodes})")
        for field in ("system_vm_size", "cpu_vm_size"):
            if not str(getattr(self, field)).startswith("Standard_"):
                raise ArgsError(field, f"must be an Azure VM size such as Standard_D4s_v5, got {getattr(self, field)!r}")
        for gpu, size in self.gpu_vm_sizes.items():
            if gpu not in _MODAL_GPUS or not isinstance(size, str) or not size.startswith("Standard_"):
                raise ArgsError("gpu_vm_sizes", f"maps Modal GPU names ({', '.join(_MODAL_GPUS)}) to VM sizes "
                                                f"such as Standard_ND96isr_H100_v5, got {gpu!r}: {size!r}")
        offered = self.vm_sizes()
        for gpu in self.gpu_types:
            if gpu not in offered:
                raise ArgsError("gpu_types", f"has {gpu!r}, which has no Azure VM size here; use some of "
                                             f"{', '.join(offered)} or map it in gpu_vm_sizes")
        if len(set(self.gpu_types)) != len(self.gpu_types):
            raise ArgsError("gpu_types", f"lists a GPU type twice: {list(self.gpu_types)}")
        for field in ("namespace", "service_account"):
            if not _DNS_LABEL.match(str(getattr(self, field))):
                raise ArgsError(field, f"must be a DNS label (lower case letters, digits, '-'), "
                                       f"got {getattr(self, field)!r}")

    def vm_sizes(self) -> dict[str, str]:
        """Every GPU type this configuration could offer, with its VM size."""
        return {**GPU_VM_SIZES, **self.gpu_vm_sizes}

    def gpu_pools(self) -> list[dict[str, Any]]:
        """One entry per GPU agent pool: name, gpu, vm_size, spot."""
        pools = []
        for gpu in self.gpu_types:
            slug = gpu.lower().replace("-", "x").replace("gb", "")
            kinds = [True, False] if self.spot and self.on_demand_fallback else [self.spot]
            for spot in kinds:
                pools.append({"name": slug + ("spot" if spot else ""), "gpu": gpu,
                              "vm_size": self.vm_sizes()[gpu], "spot": spot})
        for pool in pools:
            if not _POOL_NAME.match(pool["name"]):
                raise ArgsError("gpu_types", f"gives the pool name {pool['name']!r}, longer than AKS allows")
        return pools


def _role(subscription_id: pulumi.Input[str], role: str) -> pulumi.Output[str]:
    return pulumi.Output.concat("/subscriptions/", subscription_id,
                                "/providers/Microsoft.Authorization/roleDefinitions/", ROLES[role])


def _alnum(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower()) or "runner"


class AzureCluster(pulumi.ComponentResource):
    """The runner's environment on Azure. Outputs: `kubeconfig` (secret YAML), `registry_url`,
    `bucket_url`, `resource_group_name`, `cluster_name` (Outputs), `gpu_types` (plain dict) and
    `platform` (the `RunnerPlatform`)."""

    kubeconfig: pulumi.Output[str]
    registry_url: pulumi.Output[str]
    bucket_url: pulumi.Output[str]

    def __init__(self, name: str, args: AzureClusterArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("runner:azure:AzureCluster", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        tags = {"app": "runner", "managed-by": "pulumi", "pulumi-stack": pulumi.get_stack()}
        client = azure.authorization.get_client_config_output(opts=pulumi.InvokeOutputOptions(parent=self))
        sub = client.subscription_id
        pools = args.gpu_pools()
        fallback = any(not p["spot"] for p in pools) and any(p["spot"] for p in pools)

        group = azure.resources.ResourceGroup(name, location=args.location, tags=tags, opts=child)
        in_group = {"resource_group_name": group.name, "location": group.location, "tags": tags}

        cluster = azure.containerservice.ManagedCluster(
            f"{name}-aks", **in_group,
            dns_prefix=f"{_alnum(name)}-{_alnum(pulumi.get_stack())}"[:54],
            kubernetes_version=args.kubernetes_version,
            sku={"name": "Base", "tier": args.cluster_tier},
            identity={"type": "SystemAssigned"},
            enable_rbac=True,
            aad_profile={"managed": True, "enable_azure_rbac": True},
            disable_local_accounts=True,
            oidc_issuer_profile={"enabled": True},
            security_profile={"workload_identity": {"enabled": True}},
            workload_auto_scaler_profile={"keda": {"enabled": True}},
            network_profile={"network_plugin": "azure", "network_plugin_mode": "overlay",
                             "network_dataplane": "cilium", "network_policy": "cilium"},
            auto_scaler_profile={"expander": "priority" if fallback else "least-waste"},
            agent_pool_profiles=[{
                "name": "system", "mode": "System", "vm_size": args.system_vm_size, "os_type": "Linux",
                "os_sku": "Ubuntu", "type": "VirtualMachineScaleSets", "enable_auto_scaling": True,
                "count": args.system_min_nodes, "min_count": args.system_min_nodes,
                "max_count": args.system_max_nodes,
            }],
            # The autoscaler owns node counts; separate AgentPools own the other pools.
            opts=pulumi.ResourceOptions(parent=self, ignore_changes=["agentPoolProfiles[0].count"]))

        pool_opts = pulumi.ResourceOptions(parent=self, ignore_changes=["count"])
        on_cluster = {"resource_group_name": group.name, "resource_name_": cluster.name}
        common_pool = {"mode": "User", "os_type": "Linux", "os_sku": "Ubuntu", "type": "VirtualMachineScaleSets",
                       "enable_auto_scaling": True, "count": 0, "min_count": 0, "tags": tags}
        azure.containerservice.AgentPool(
            f"{name}-pool-cpu", **on_cluster, **common_pool, agent_pool_name="cpu", vm_size=args.cpu_vm_size,
            max_count=args.cpu_max_nodes, opts=pool_opts)
        for pool in pools:
            spot = {"scale_set_priority": "Spot", "scale_set_eviction_policy": "Delete", "spot_max_price": -1} \
                if pool["spot"] else {"scale_set_priority": "Regular"}
            azure.containerservice.AgentPool(
                f"{name}-pool-{pool['name']}", **on_cluster, **common_pool, **spot,
                agent_pool_name=pool["name"], vm_size=pool["vm_size"], max_count=args.gpu_max_nodes,
                node_labels={kube.GPU_LABEL: kube.gpu_label_value(pool["gpu"])},
                node_taints=[kube.taint_string(kube.GPU_TAINT)],
                gpu_profile={"driver": "Install"}, opts=pool_opts)

        registry = azure.containerregistry.Registry(
            f"{_alnum(name)}registry", **in_group, sku={"name": args.registry_sku}, admin_user_enabled=False,
            anonymous_pull_enabled=False, public_network_access="Enabled", opts=child)
        kubelet = cluster.identity_profile.apply(lambda p: p["kubeletidentity"].object_id)
        azure.authorization.RoleAssignment(
            f"{name}-kubelet-acr-pull", principal_id=kubelet, principal_type="ServicePrincipal",
            role_definition_id=_role(sub, "AcrPull"), scope=registry.id, opts=child)

        account = azure.storage.StorageAccount(
            f"{_alnum(name)}vols", **in_group, kind="StorageV2", sku={"name": "Standard_LRS"}, access_tier="Hot",
            allow_blob_public_access=False, allow_shared_key_access=False, default_to_o_auth_authentication=True,
            enable_https_traffic_only=True, minimum_tls_version="TLS1_2", opts=child)
        in_account = {"resource_group_name": group.name, "account_name": account.name}
        azure.storage.BlobServiceProperties(
            f"{name}-blob-service", **in_account, blob_services_name="default", is_versioning_enabled=True,
            delete_retention_policy={"enabled": True, "days": 7},
            container_delete_retention_policy={"enabled": True, "days": 7}, opts=child)
        container = azure.storage.BlobContainer(f"{name}-volumes", **in_account, container_name="volumes",
                                                public_access="None", opts=child)

        identity = azure.managedidentity.UserAssignedIdentity(f"{name}-pods", **in_group, opts=child)
        azure.managedidentity.FederatedIdentityCredential(
            f"{name}-pods-federation", resource_group_name=group.name, resource_name_=identity.name,
            federated_identity_credential_resource_name=f"{args.namespace}-{args.service_account}",
            issuer=cluster.oidc_issuer_profile.apply(lambda p: p.issuer_url),
            subject=f"system:serviceaccount:{args.namespace}:{args.service_account}",
            audiences=["api://AzureADTokenExchange"], opts=child)
        for role, scope in (("Storage Blob Data Contributor", container.id), ("AcrPush", registry.id)):
            azure.authorization.RoleAssignment(
                f"{name}-pods-{_alnum(role)}", principal_id=identity.principal_id, principal_type="ServicePrincipal",
                role_definition_id=_role(sub, role), scope=scope, opts=child)

        admin = azure.authorization.RoleAssignment(
            f"{name}-deployer-cluster-admin", principal_id=client.object_id,
            principal_type=args.deployer_principal_type,
            role_definition_id=_role(sub, "Azure Kubernetes Service RBAC Cluster Admin"), scope=cluster.id,
            opts=child)

        credentials = azure.containerservice.list_managed_cluster_user_credentials_output(
            resource_group_name=group.name, resource_name=cluster.name, format="exec",
            opts=pulumi.InvokeOutputOptions(parent=self))
        self.kubeconfig = pulumi.Output.secret(
            credentials.apply(lambda c: kube.kubelogin_kubeconfig(c.kubeconfigs[0].value)))
        provider = k8s.Provider(f"{name}-k8s", kubeconfig=self.kubeconfig,
                                opts=pulumi.ResourceOptions(parent=self, depends_on=[admin]))

        self.platform = RunnerPlatform(name, PlatformArgs(
            namespace=args.namespace, service_account=args.service_account,
            service_account_annotations={"azure.workload.identity/client-id": identity.client_id},
            pod_labels={"azure.workload.identity/use": "true"},
            install_keda=False, keda_namespace="kube-system",
            # AKS installs the driver on GPU pools, not the device plugin.
            install_device_plugin=bool(pools), gpu_node_label_keys=(*GPU_NODE_LABEL_KEYS, kube.GPU_LABEL),
        ), provider, opts=child)
        if fallback:
            apply_manifest(f"{name}-priority-expander", kube.priority_expander(),
                           pulumi.ResourceOptions(parent=self, provider=provider))

        self.gpu_types = {gpu: kube.gpu_placement(gpu, args.spot) for gpu in args.gpu_types}
        self.registry_url = registry.login_server
        # From the account's own endpoint, so sovereign clouds get their suffix. (Not Output.all:
        # it turns the typed EndpointsResponse back into a plain dict.)
        self.bucket_url = pulumi.Output.concat(account.primary_endpoints.apply(lambda e: e.blob.rstrip("/")), "/",
                                               container.name)
        self.resource_group_name = group.name
        self.cluster_name = cluster.name
        self.register_outputs({"kubeconfig": self.kubeconfig, "registry_url": self.registry_url,
                               "bucket_url": self.bucket_url, "resource_group_name": self.resource_group_name,
                               "cluster_name": self.cluster_name, "gpu_types": self.gpu_types})

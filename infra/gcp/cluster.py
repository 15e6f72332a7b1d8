"""`GcpCluster`: a GKE cluster, registry, bucket and identities for the runner, as one component.

    APIs             container, artifactregistry, iam, iamcredentials (left on at destroy)
    node identity    a dedicated Google service account for nodes: log and metric writer,
                     Artifact Registry reader on the one repository; not the Compute default
    cluster          GKE Standard, release channel REGULAR, Workload Identity (PROJECT.svc.id.goog),
                     Dataplane V2 (so the queue's NetworkPolicy is enforced), default pool removed
    CPU pool         on-demand, autoscaled `cpu_min_nodes`..`cpu_max_nodes` across the cluster's
                     zones; min 1 because kube-system, KEDA and the queue need a node to live on
    GPU pools        one per GPU type: min 0, Spot by default, drivers installed by GKE, taint
                     nvidia.com/gpu=present:NoSchedule; optionally a second, on-demand pool
    registry         Artifact Registry docker repository REGION-docker.pkg.dev/PROJECT/NAME (private)
    bucket           GCS, uniform bucket-level access, public access prevention, versioned
    runner identity  a Google service account bound to the Kubernetes ServiceAccount runner/runner
                     by Workload Identity: objectAdmin on the bucket and writer on the repository,
                     granted on those resources only (no project-wide roles, no keys)
    platform         `infra.common.RunnerPlatform` on the cluster, through a kubeconfig that
                     authenticates with gke-gcloud-auth-plugin (no static credentials)

Everything is parented to the component; `program()` in `__init__.py` reads the stack config.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import pulumi
import pulumi_gcp as gcp
import pulumi_kubernetes as k8s
import yaml

from infra.common import PlatformArgs, RunnerPlatform

from .gpus import GPU_MACHINES, GPU_TAINT, gpu_placement

__all__ = ["APIS", "GcpArgsError", "GcpCluster", "GcpClusterArgs", "NODE_ROLES", "kubeconfig"]

APIS = ("container.googleapis.com", "artifactregistry.googleapis.com", "iam.googleapis.com",
        "iamcredentials.googleapis.com")
# What a GKE node needs to report logs and metrics (GKE's documented least-privilege set);
# image pulls are granted on the repository itself.
NODE_ROLES = ("roles/logging.logWriter", "roles/monitoring.metricWriter", "roles/monitoring.viewer",
              "roles/stackdriver.resourceMetadata.writer")
_SCOPES = ["https://www.googleapis.com/auth/cloud-platform"]  # access is decided by IAM, not scopes
_NAME = re.compile(r"[a-z][a-z0-9-]{0,18}[a-z0-9]")  # fits "<name>-workloads" in 30 characters
_BUCKET = re.compile(r"[a-z0-9][a-z0-9._-]{1,61}[a-z0-9]")


class GcpArgsError(ValueError):
    """A bad `GcpClusterArgs` value; `field` names it, so config errors can name the config key."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclasses.dataclass
class GcpClusterArgs:
    """What `GcpCluster` builds; every field but `project` has a default that suits a first stack."""

    project: str
    region: str = "us-central1"
    # () : a regional cluster, nodes in GKE's default zones of `region`. One zone: a zonal
    # cluster there (no control-plane HA; the GKE free tier credit covers one zonal cluster).
    # Several: a regional cluster with nodes in exactly those zones.
    zones: tuple[str, ...] = ()
    # The cluster, repository and service-account prefix; one per project (set per stack).
    name: str = "runner"
    cpu_machine_type: str = "e2-standard-4"
    cpu_min_nodes: int = 1
    cpu_max_nodes: int = 10
    cpu_disk_size_gb: int = 100
    # Modal GPU names (keys of gpus.GPU_MACHINES); L4 is in most regions and cheapest to try.
    gpu_types: tuple[str, ...] = ("L4",)
    gpu_max_nodes: int = 4  # per GPU type and pool
    # GPU type -> zones for its pools, where not every zone of the cluster offers that GPU.
    gpu_zones: dict[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
    spot: bool = True
    # Also an on-demand pool (min 0) per GPU type, for when Spot capacity is out; see README.
    on_demand_fallback: bool = False
    gpu_driver_version: str = "LATEST"  # or "DEFAULT"
    gpu_disk_size_gb: int = 200
    release_channel: str = "REGULAR"
    bucket_name: str | None = None  # default "<project>-<name>-volumes"
    # Let `pulumi destroy` delete a bucket that still holds Volumes data.
    force_destroy: bool = False
    noncurrent_version_days: int = 30  # old object versions are deleted after this many days
    namespace: str = "runner"
    service_account: str = "runner"

    def __post_init__(self) -> None:
        self.zones = tuple(self.zones)
        self.gpu_types = tuple(self.gpu_types)
        self.gpu_zones = {k: tuple(v) for k, v in self.gpu_zones.items()}
        if not self.project:
            raise GcpArgsError("project", "is empty; give the Google Cloud project id")
        if not _NAME.fullmatch(self.name):
            raise GcpArgsError("name", f"{self.name!r} must be 2 to 20 lowercase letters, digits or '-', "
                                       "starting with a letter")
        for zone in (*self.zones, *(z for zs in self.gpu_zones.values() for z in zs)):
            if not zone.startswith(self.region + "-"):
                field = "zones" if zone in self.zones else "gpu_zones"
                raise GcpArgsError(field, f"{zone!r} is not a zone of region {self.region} "
                                          f"(zones look like {self.region}-a)")
        unknown = [g for g in (*self.gpu_types, *self.gpu_zones) if g not in GPU_MACHINES]
        if unknown:
            raise GcpArgsError("gpu_types" if unknown[0] in self.gpu_types else "gpu_zones",
                               f"{unknown[0]!r} is not a GPU GKE offers; choose from {', '.join(GPU_MACHINES)}")
        if len(set(self.gpu_types)) != len(self.gpu_types):
            raise GcpArgsError("gpu_types", "lists a GPU type twice")
        for field in ("cpu_max_nodes", "gpu_max_nodes", "cpu_disk_size_gb", "gpu_disk_size_gb",
                      "noncurrent_version_days"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise GcpArgsError(field, f"{value!r} must be a whole number of at least 1")
        if isinstance(self.cpu_min_nodes, bool) or not isinstance(self.cpu_min_nodes, int) or not (
                0 <= self.cpu_min_nodes <= self.cpu_max_nodes):
            raise GcpArgsError("cpu_min_nodes", f"{self.cpu_min_nodes!r} must be a whole number from 0 to "
                                                f"the CPU pool's maximum ({self.cpu_max_nodes})")
        if self.gpu_driver_version not in ("LATEST", "DEFAULT"):
            raise GcpArgsError("gpu_driver_version", f"{self.gpu_driver_version!r} must be LATEST or DEFAULT")
        if self.release_channel not in ("RAPID", "REGULAR", "STABLE", "EXTENDED"):
            raise GcpArgsError("release_channel", f"{self.release_channel!r} must be RAPID, REGULAR, STABLE or "
                                                  "EXTENDED")
        if self.bucket_name is not None and not _BUCKET.fullmatch(self.bucket_name):
            raise GcpArgsError("bucket_name", f"{self.bucket_name!r} is not a valid bucket name (3 to 63 "
                                              "lowercase letters, digits, '-', '_' or '.')")
        if self.bucket_name is None and not _BUCKET.fullmatch(self.default_bucket_name):
            raise GcpArgsError("bucket_name", f"the default {self.default_bucket_name!r} is too long; "
                                              "give a bucket name")

    @property
    def default_bucket_name(self) -> str:
        return f"{self.project}-{self.name}-volumes"

    @property
    def location(self) -> str:
        """Where the cluster lives: its one zone when zonal, else the region."""
        return self.zones[0] if len(self.zones) == 1 else self.region

    @property
    def workload_pool(self) -> str:
        return f"{self.project}.svc.id.goog"


def kubeconfig(cluster_name: str, endpoint: str, ca_certificate: str) -> str:
    """A kubeconfig for the cluster that authenticates through `gke-gcloud-auth-plugin`, i.e. the
    caller's gcloud credentials; it holds no token or key of its own."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": cluster_name,
                      "cluster": {"server": f"https://{endpoint}", "certificate-authority-data": ca_certificate}}],
        "users": [{"name": cluster_name, "user": {"exec": {
            "apiVersion": "client.authentication.k8s.io/v1beta1",
            "command": "gke-gcloud-auth-plugin",
            "installHint": "Install gke-gcloud-auth-plugin: gcloud components install gke-gcloud-auth-plugin",
            "provideClusterInfo": True,
            "interactiveMode": "Never",
        }}}],
        "contexts": [{"name": cluster_name, "context": {"cluster": cluster_name, "user": cluster_name}}],
        "current-context": cluster_name,
    }
    return yaml.safe_dump(config, sort_keys=False)


class GcpCluster(pulumi.ComponentResource):
    """The runner's environment on GCP; outputs `kubeconfig` (secret), `registry_url`,
    `bucket_url`, `cluster_name` (Output[str]), `gpu_types` (plain dict) and `platform`."""

    def __init__(self, name: str, args: GcpClusterArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("runner:gcp:GcpCluster", name, None, opts)
        self.args = args
        mine = pulumi.ResourceOptions(parent=self)
        project = args.project

        apis = [gcp.projects.Service(f"{name}-api-{api.split('.')[0]}", project=project, service=api,
                                     disable_on_destroy=False, opts=mine) for api in APIS]
        after_apis = pulumi.ResourceOptions(parent=self, depends_on=apis)

        # --- identities -------------------------------------------------------------------
        nodes_sa = gcp.serviceaccount.Account(
            f"{name}-nodes", project=project, account_id=f"{args.name}-nodes",
            display_name=f"GKE nodes of {args.name}", opts=after_apis)
        nodes_member = nodes_sa.email.apply(lambda e: f"serviceAccount:{e}")
        for role in NODE_ROLES:
            gcp.projects.IAMMember(f"{name}-nodes-{role.split('/')[1].replace('.', '-')}", project=project,
                                   role=role, member=nodes_member, opts=mine)
        runner_sa = gcp.serviceaccount.Account(
            f"{name}-workloads", project=project, account_id=f"{args.name}-workloads",
            display_name=f"runner pods ({args.namespace}/{args.service_account}) of {args.name}", opts=after_apis)
        runner_member = runner_sa.email.apply(lambda e: f"serviceAccount:{e}")

        # --- registry and bucket ------------------------------------------------------------
        repo = gcp.artifactregistry.Repository(
            f"{name}-registry", project=project, location=args.region, repository_id=args.name, format="DOCKER",
            description="runner images", opts=after_apis)
        gcp.artifactregistry.RepositoryIamMember(
            f"{name}-registry-nodes-read", project=project, location=repo.location, repository=repo.repository_id,
            role="roles/artifactregistry.reader", member=nodes_member, opts=mine)
        gcp.artifactregistry.RepositoryIamMember(
            f"{name}-registry-workloads-write", project=project, location=repo.location, repository=repo.repository_id,
            role="roles/artifactregistry.writer", member=runner_member, opts=mine)

        bucket = gcp.storage.Bucket(
            f"{name}-volumes", project=project, name=args.bucket_name or args.default_bucket_name,
            location=args.region.upper(), uniform_bucket_level_access=True, public_access_prevention="enforced",
            versioning={"enabled": True}, force_destroy=args.force_destroy,
            lifecycle_rules=[{"action": {"type": "Delete"},
                              "condition": {"days_since_noncurrent_time": args.noncurrent_version_days}}],
            labels={"app": "runner", "managed-by": "pulumi"}, opts=mine)
        gcp.storage.BucketIAMMember(f"{name}-volumes-workloads", bucket=bucket.name,
                                    role="roles/storage.objectAdmin", member=runner_member, opts=mine)

        # --- cluster and node pools -----------------------------------------------------------
        cluster = gcp.container.Cluster(
            f"{name}-cluster", project=project, name=args.name, location=args.location,
            node_locations=list(args.zones) if len(args.zones) > 1 else None,
            remove_default_node_pool=True, initial_node_count=1, deletion_protection=False,
            release_channel={"channel": args.release_channel},
            workload_identity_config={"workload_pool": args.workload_pool},
            networking_mode="VPC_NATIVE", ip_allocation_policy={}, datapath_provider="ADVANCED_DATAPATH",
            addons_config={"gcs_fuse_csi_driver_config": {"enabled": True}},
            resource_labels={"app": "runner", "managed-by": "pulumi"}, opts=after_apis)
        # The pool PROJECT.svc.id.goog exists once a cluster uses it; binding before fails.
        gcp.serviceaccount.IAMMember(
            f"{name}-workloads-identity", service_account_id=runner_sa.name, role="roles/iam.workloadIdentityUser",
            member=f"serviceAccount:{args.workload_pool}[{args.namespace}/{args.service_account}]",
            opts=pulumi.ResourceOptions(parent=self, depends_on=[cluster]))

        def node_config(machine_type: str, disk_size_gb: int, disk_type: str, **extra: Any) -> dict[str, Any]:
            return {"machine_type": machine_type, "disk_size_gb": disk_size_gb, "disk_type": disk_type,
                    "service_account": nodes_sa.email, "oauth_scopes": _SCOPES,
                    "workload_metadata_config": {"mode": "GKE_METADATA"},
                    "shielded_instance_config": {"enable_secure_boot": True, "enable_integrity_monitoring": True},
                    "resource_labels": {"app": "runner", "managed-by": "pulumi"}, **extra}

        pool_common = {"project": project, "cluster": cluster.name, "location": cluster.location,
                       "management": {"auto_repair": True, "auto_upgrade": True}}
        cpu_pool = gcp.container.NodePool(
            f"{name}-cpu", name="cpu", initial_node_count=1, **pool_common,
            autoscaling={"total_min_node_count": args.cpu_min_nodes, "total_max_node_count": args.cpu_max_nodes,
                         "location_policy": "BALANCED"},
            node_config=node_config(args.cpu_machine_type, args.cpu_disk_size_gb, "pd-balanced"), opts=mine)

        self.gpu_pools: list[gcp.container.NodePool] = []
        for gpu in args.gpu_types:
            machine = GPU_MACHINES[gpu]
            kinds = [args.spot] + ([False] if args.spot and args.on_demand_fallback else [])
            for spot in kinds:
                machine_type, count = machine.shape(spot)
                pool = f"gpu-{gpu.lower()}-{'spot' if spot else 'ondemand'}"
                zones = args.gpu_zones.get(gpu)
                self.gpu_pools.append(gcp.container.NodePool(
                    f"{name}-{pool}", name=pool, initial_node_count=0, **pool_common,
                    node_locations=list(zones) if zones else None,
                    # ANY: scale up in whichever zone has capacity, what Spot GPUs need.
                    autoscaling={"total_min_node_count": 0, "total_max_node_count": args.gpu_max_nodes,
                                 "location_policy": "ANY"},
                    node_config=node_config(
                        machine_type, args.gpu_disk_size_gb, machine.disk_type, spot=spot,
                        guest_accelerators=[{"type": machine.accelerator, "count": count,
                                             "gpu_driver_installation_config": {
                                                 "gpu_driver_version": args.gpu_driver_version}}],
                        taints=[dict(GPU_TAINT)], gvnic={"enabled": True}),
                    opts=mine))

        # --- in-cluster platform --------------------------------------------------------------
        self.kubeconfig = pulumi.Output.secret(pulumi.Output.all(
            cluster.name, cluster.endpoint, cluster.master_auth.cluster_ca_certificate).apply(
                lambda v: kubeconfig(*v)))
        # Waits for the CPU pool: without a node, KEDA's Helm release and the queue never get ready.
        provider = k8s.Provider(f"{name}-k8s", kubeconfig=self.kubeconfig, delete_unreachable=True,
                                opts=pulumi.ResourceOptions(parent=self, depends_on=[cpu_pool]))
        self.platform = RunnerPlatform(name, PlatformArgs(
            namespace=args.namespace, service_account=args.service_account,
            service_account_annotations={"iam.gke.io/gcp-service-account": runner_sa.email},
            install_keda=True, install_device_plugin=False), provider, opts=mine)

        self.cluster_name = cluster.name
        self.registry_url = pulumi.Output.all(repo.location, repo.project, repo.repository_id).apply(
            lambda v: f"{v[0]}-docker.pkg.dev/{v[1]}/{v[2]}")
        self.bucket_url = bucket.name.apply(lambda b: f"gs://{b}")
        spot_only = args.spot and not args.on_demand_fallback
        self.gpu_types = {gpu: gpu_placement(gpu, spot_only) for gpu in args.gpu_types}
        self.register_outputs({"kubeconfig": self.kubeconfig, "registry_url": self.registry_url,
                               "bucket_url": self.bucket_url, "cluster_name": self.cluster_name,
                               "gpu_types": self.gpu_types})

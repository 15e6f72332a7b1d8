"""`RunnerPlatform`: what the runner needs inside any Kubernetes cluster, the same on every cloud.

    Namespace        `args.namespace` (Pod Security baseline)
    ServiceAccount   `args.service_account`, annotated for the cloud's workload identity where it
                     uses annotations (GKE, AKS; EKS Pod Identity binds by association instead)
    Role, RoleBinding  the namespaced permissions of `manifests.RUNNER_RULES`; no cluster role
    queue            Redis (StatefulSet + PVC), ClusterIP Service `runner-queue`, a Secret with
                     key `password`, a NetworkPolicy letting only the namespace (and KEDA) in
    KEDA             Helm release into namespace `keda` (`install_keda`; AKS has an add-on)
    front door       the KEDA HTTP add-on (Helm release, in KEDA's namespace) and `runner-web`, a
                     LoadBalancer Service in front of its interceptor (`install_http_addon`):
                     deployed web endpoints answer at http://APP-FUNCTION.<web_domain> and wake
                     from zero on a request. web_domain: config `runner:webDomain` (a wildcard
                     DNS name pointed at the load balancer), else IP.sslip.io from the load
                     balancer's IP; config `runner:webAllowedCidrs` (a JSON list) limits who
                     may connect
    device plugin    NVIDIA's DaemonSet on GPU nodes (`install_device_plugin`)

A cloud program passes the `pulumi_kubernetes.Provider` of its cluster; every child is parented
to the component and uses that provider. The queue password is config secret
`runner:queuePassword` when set, else a `pulumi_random.RandomPassword` (`password.queue_password`).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import pulumi
import pulumi_kubernetes as k8s

from runner._stack import is_dns_name

from . import manifests
from .password import queue_password

__all__ = ["PlatformArgs", "RunnerPlatform", "apply_manifest"]

_KINDS: dict[tuple[str, str], type[pulumi.CustomResource]] = {
    ("v1", "Namespace"): k8s.core.v1.Namespace,
    ("v1", "ServiceAccount"): k8s.core.v1.ServiceAccount,
    ("v1", "Secret"): k8s.core.v1.Secret,
    ("v1", "Service"): k8s.core.v1.Service,
    ("v1", "ConfigMap"): k8s.core.v1.ConfigMap,
    ("apps/v1", "StatefulSet"): k8s.apps.v1.StatefulSet,
    ("apps/v1", "DaemonSet"): k8s.apps.v1.DaemonSet,
    ("apps/v1", "Deployment"): k8s.apps.v1.Deployment,
    ("rbac.authorization.k8s.io/v1", "Role"): k8s.rbac.v1.Role,
    ("rbac.authorization.k8s.io/v1", "RoleBinding"): k8s.rbac.v1.RoleBinding,
    ("networking.k8s.io/v1", "NetworkPolicy"): k8s.networking.v1.NetworkPolicy,
    ("storage.k8s.io/v1", "StorageClass"): k8s.storage.v1.StorageClass,
}


def _snake(key: str) -> str:
    return re.sub(r"(?<!^)([A-Z])", r"_\1", key).lower()


def apply_manifest(resource_name: str, manifest: dict[str, Any],
                   opts: pulumi.ResourceOptions | None = None) -> pulumi.CustomResource:
    """The typed `pulumi_kubernetes` resource for a manifest dict (camelCase, as in YAML).

    Top-level fields become keyword arguments (`stringData` -> `string_data`); nested dicts pass
    through unchanged. Kinds outside `_KINDS` raise ValueError: add them there.
    """
    key = (manifest["apiVersion"], manifest["kind"])
    cls = _KINDS.get(key)
    if cls is None:
        raise ValueError(f"apply_manifest: no typed resource for {key[0]} {key[1]}; add it to _KINDS")
    kwargs = {_snake(k): v for k, v in manifest.items() if k not in ("apiVersion", "kind")}
    return cls(resource_name, opts=opts, **kwargs)


@dataclasses.dataclass
class PlatformArgs:
    """How `RunnerPlatform` is set up; the defaults suit every cloud unless noted."""

    namespace: str = "runner"
    service_account: str = "runner"
    # Binds the ServiceAccount to a cloud identity: GKE {"iam.gke.io/gcp-service-account": EMAIL},
    # AKS {"azure.workload.identity/client-id": ID}. EKS needs none: infra/aws uses EKS Pod
    # Identity, whose association (namespace, service account) -> role lives in AWS, not here.
    service_account_annotations: dict[str, pulumi.Input[str]] = dataclasses.field(default_factory=dict)
    # Labels the runner's pods need, e.g. AKS {"azure.workload.identity/use": "true"}. Kept on
    # the component as `pod_labels`; the platform itself starts no runner pods.
    pod_labels: dict[str, str] = dataclasses.field(default_factory=dict)
    # KEDA from its Helm chart into `keda_namespace`. AKS: False, with its KEDA add-on, and
    # keda_namespace="kube-system" so the queue's NetworkPolicy lets that operator in.
    install_keda: bool = True
    keda_namespace: str = "keda"
    # The front door of deployed web endpoints (see the module docstring). `web_service_annotations`
    # choose the cloud's load balancer (AWS: an NLB); `web_domain` and `web_source_ranges`, when
    # None, come from config runner:webDomain and runner:webAllowedCidrs.
    install_http_addon: bool = True
    web_service_annotations: dict[str, str] = dataclasses.field(default_factory=dict)
    web_domain: str | None = None
    web_source_ranges: list[str] | None = None
    # NVIDIA's device plugin, on nodes with any of `gpu_node_label_keys`, tolerating every taint
    # (Spot ones too). GKE installs its own (False there); EKS and AKS GPU nodes need it.
    install_device_plugin: bool = False
    gpu_node_label_keys: tuple[str, ...] = manifests.GPU_NODE_LABEL_KEYS
    # The queue: Redis memory (request = limit; maxmemory is 80% of it) and its volume.
    queue_memory: str = "1Gi"
    queue_storage: str = "10Gi"
    queue_storage_class: str | None = None  # None: the cluster's default StorageClass
    queue_secret_name: str = "runner-queue-auth"
    # The queue password; None: config secret runner:queuePassword, else a random one.
    queue_password: pulumi.Input[str] | None = None


class RunnerPlatform(pulumi.ComponentResource):
    """The in-cluster platform; outputs `namespace`, `service_account`, `queue_endpoint`,
    `queue_secret_name`, `web_domain`, `web_endpoint` (all `pulumi.Output[str]`; the web ones ""
    without the front door), and `pod_labels` (plain, from args)."""

    namespace: pulumi.Output[str]
    service_account: pulumi.Output[str]
    queue_endpoint: pulumi.Output[str]
    queue_secret_name: pulumi.Output[str]

    def __init__(self, name: str, args: PlatformArgs, provider: k8s.Provider,
                 opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("runner:platform:RunnerPlatform", name, None, opts)
        self.pod_labels = dict(args.pod_labels)
        ns = args.namespace
        child = pulumi.ResourceOptions(parent=self, provider=provider)

        namespace = apply_manifest(f"{name}-namespace", manifests.namespace(ns), child)
        in_ns = pulumi.ResourceOptions.merge(child, pulumi.ResourceOptions(depends_on=[namespace]))
        account = apply_manifest(
            f"{name}-service-account",
            manifests.service_account(args.service_account, ns, args.service_account_annotations), in_ns)
        apply_manifest(f"{name}-role", manifests.role(args.service_account, ns), in_ns)
        apply_manifest(f"{name}-role-binding", manifests.role_binding(args.service_account, ns, args.service_account),
                       in_ns)

        secret = apply_manifest(f"{name}-queue-secret",
                                manifests.queue_secret(args.queue_secret_name, ns,
                                                       queue_password(name, args.queue_password, self)), in_ns)
        service = apply_manifest(f"{name}-queue-service", manifests.queue_service(ns), in_ns)
        apply_manifest(f"{name}-queue",
                       manifests.queue_statefulset(ns, args.queue_secret_name, args.queue_memory, args.queue_storage,
                                                   args.queue_storage_class),
                       pulumi.ResourceOptions.merge(in_ns, pulumi.ResourceOptions(depends_on=[secret])))
        apply_manifest(f"{name}-queue-network-policy",
                       manifests.queue_network_policy(ns, args.keda_namespace), in_ns)

        keda = None
        if args.install_keda:
            keda = k8s.helm.v3.Release(f"{name}-keda", opts=child, **manifests.keda_release_args(args.keda_namespace))
        self.web_domain: pulumi.Output[str] = pulumi.Output.from_input("")
        self.web_endpoint: pulumi.Output[str] = pulumi.Output.from_input("")
        if args.install_http_addon:
            config = pulumi.Config("runner")
            domain = args.web_domain if args.web_domain is not None else config.get("webDomain")
            if domain and not is_dns_name(manifests.web_domain(domain, "")):
                raise pulumi.RunError(f"stack config runner:webDomain is {domain!r}, not a DNS name: "
                                      "`pulumi config set runner:webDomain apps.example.com` (and point "
                                      "*.apps.example.com at the stack's web_endpoint)")
            ranges = args.web_source_ranges if args.web_source_ranges is not None else (
                config.get_object("webAllowedCidrs") or [])
            after_keda = pulumi.ResourceOptions.merge(child, pulumi.ResourceOptions(
                depends_on=[keda] if keda is not None else []))
            addon = k8s.helm.v3.Release(f"{name}-http-addon", opts=after_keda,
                                        **manifests.http_addon_release_args(args.keda_namespace))
            door = apply_manifest(f"{name}-web-service",
                                  manifests.web_service(args.keda_namespace, args.web_service_annotations, ranges),
                                  pulumi.ResourceOptions.merge(child, pulumi.ResourceOptions(depends_on=[addon])))
            self.web_endpoint = door.status.apply(manifests.web_address)
            self.web_domain = self.web_endpoint.apply(lambda address: manifests.web_domain(domain, address))
        if args.install_device_plugin:
            apply_manifest(f"{name}-device-plugin",
                           manifests.device_plugin_daemonset(node_label_keys=args.gpu_node_label_keys), child)

        # From the resources' outputs, so whoever uses them waits for the objects to exist.
        self.namespace = namespace.metadata.name
        self.service_account = account.metadata.name
        self.queue_endpoint = service.metadata.namespace.apply(manifests.queue_endpoint)
        self.queue_secret_name = secret.metadata.name
        self.register_outputs({"namespace": self.namespace, "service_account": self.service_account,
                               "queue_endpoint": self.queue_endpoint, "queue_secret_name": self.queue_secret_name,
                               "web_domain": self.web_domain, "web_endpoint": self.web_endpoint})

    def contract_outputs(self) -> dict[str, Any]:
        """The keys of the stack-outputs contract that the platform decides, for `export_contract`."""
        return {"namespace": self.namespace, "service_account": self.service_account, "pod_labels": self.pod_labels,
                "queue_endpoint": self.queue_endpoint, "queue_secret_name": self.queue_secret_name,
                "web_domain": self.web_domain, "web_endpoint": self.web_endpoint}

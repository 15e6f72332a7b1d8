"""`AwsCluster`: an EKS cluster with Karpenter, a private ECR repository and a private S3 bucket.

    network     a VPC, public and private subnets in 2-3 zones, one NAT gateway (one, not one
                per zone: ~$33/month plus traffic, at the price of losing egress if its zone fails)
    cluster     EKS with API authentication (access entries, no aws-auth ConfigMap), standard
                support only, the Pod Identity agent and the EBS CSI driver (for the queue's
                volume); a small on-demand managed node group for system pods
    Karpenter   controller role, node role + instance profile + access entry, the interruption
                queue with its four EventBridge rules, the Helm release, the EC2NodeClass and
                NodePools of `karpenter.py`
    storage     ECR (private, scan on push), S3 (public access blocked, versioned, encrypted,
                owner-enforced), and an IAM role for runner pods that reaches only those two

Every child is parented to the component. The kubeconfig authenticates with `aws eks get-token`
and is a Pulumi secret; `provider` is a `pulumi_kubernetes.Provider` on it that waits for the
system nodes, add-ons and the default StorageClass, so whatever uses it has somewhere to run.
"""

from __future__ import annotations

import ipaddress
import json
from typing import Any

import pulumi
import pulumi_aws as aws
import pulumi_kubernetes as k8s
import yaml

from infra.common import apply_manifest

from . import iam, karpenter
from .config import AwsClusterArgs

__all__ = ["AwsCluster", "kubeconfig", "storage_class"]

_EC2 = "ec2.amazonaws.com"
_CLUSTER_POLICY = "arn:aws:iam::aws:policy/AmazonEKSClusterPolicy"
_SYSTEM_NODE_POLICIES = karpenter.NODE_MANAGED_POLICIES[:3]  # no SSM for the managed group
_EBS_CSI_POLICY = "arn:aws:iam::aws:policy/service-role/AmazonEBSCSIDriverPolicy"


def kubeconfig(cluster_name: str, endpoint: str, ca_data: str, region: str) -> str:
    """A kubeconfig for the cluster that gets tokens from `aws eks get-token` (the caller's AWS identity)."""
    return yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": cluster_name,
        "clusters": [{"name": cluster_name, "cluster": {"server": endpoint, "certificate-authority-data": ca_data}}],
        "contexts": [{"name": cluster_name, "context": {"cluster": cluster_name, "user": cluster_name}}],
        "users": [{"name": cluster_name, "user": {"exec": {
            "apiVersion": "client.authentication.k8s.io/v1beta1", "command": "aws", "interactiveMode": "Never",
            "args": ["eks", "get-token", "--cluster-name", cluster_name, "--region", region, "--output", "json"]}}}],
    }, sort_keys=False)


def storage_class() -> dict[str, Any]:
    """The default StorageClass: encrypted gp3 through the EBS CSI driver (EKS ships none usable)."""
    return {"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
            "metadata": {"name": "gp3", "annotations": {"storageclass.kubernetes.io/is-default-class": "true"},
                         "labels": {"app.kubernetes.io/part-of": "runner", "app.kubernetes.io/managed-by": "pulumi"}},
            "provisioner": "ebs.csi.aws.com", "volumeBindingMode": "WaitForFirstConsumer",
            "allowVolumeExpansion": True, "reclaimPolicy": "Delete",
            "parameters": {"type": "gp3", "encrypted": "true"}}


class AwsCluster(pulumi.ComponentResource):
    """The AWS side of the runner; outputs `kubeconfig` (secret), `registry_url`, `bucket_url`,
    `cluster_name`, `runner_role_arn`, plus `provider` and `gpu_types` (plain) for the program."""

    kubeconfig: pulumi.Output[str]
    registry_url: pulumi.Output[str]
    bucket_url: pulumi.Output[str]
    cluster_name: pulumi.Output[str]
    runner_role_arn: pulumi.Output[str]

    def __init__(self, name: str, args: AwsClusterArgs, runner_namespace: str = "runner",
                 runner_service_account: str = "runner", opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("runner:aws:AwsCluster", name, None, opts)
        self._name, self._args = name, args
        self._tags = {"runner/cluster": args.cluster_name, **args.tags}
        self.gpu_types = karpenter.gpu_types(args.gpu_families)

        private, public = self._network()
        cluster = self._cluster(private)
        system_nodes = self._system_nodes(cluster, private)
        addons = self._addons(cluster, system_nodes)
        repository, bucket = self._registry(), self._bucket()
        runner_role = self._pod_role("runner", iam.runner_policy, [bucket.arn, repository.arn], cluster,
                                     runner_namespace, runner_service_account)
        queue = self._interruption_queue()
        node_role, profile, access = self._karpenter_node_identity(cluster)
        controller = self._pod_role(
            "karpenter-controller",
            lambda cluster_arn, queue_arn, role_arn, profile_arn: karpenter.controller_policy(
                args.cluster_name, cluster_arn, args.region, queue_arn, role_arn, profile_arn),
            [cluster.arn, queue.arn, node_role.arn, profile.arn], cluster, "kube-system", karpenter.SERVICE_ACCOUNT)

        self.cluster_name = cluster.name
        self.kubeconfig = pulumi.Output.secret(pulumi.Output.all(
            cluster.name, cluster.endpoint, cluster.certificate_authority.data).apply(
            lambda v: kubeconfig(v[0], v[1], v[2], args.region)))
        # Two providers on the same cluster: the first, once nodes and add-ons exist, makes the
        # default StorageClass; the second, which every other Kubernetes object uses (the
        # platform's too), waits for that class, so the queue's volume can bind on first try.
        bootstrap = k8s.Provider(f"{name}-k8s-bootstrap", kubeconfig=self.kubeconfig,
                                 opts=self._opts(depends_on=[system_nodes, *addons]))
        gp3 = apply_manifest(f"{name}-storage-class", storage_class(), self._opts(provider=bootstrap))
        self.provider = k8s.Provider(f"{name}-k8s", kubeconfig=self.kubeconfig,
                                     opts=self._opts(depends_on=[gp3, access]))
        self._karpenter(queue, profile, controller)

        self.registry_url = repository.repository_url
        self.bucket_url = bucket.bucket.apply(lambda b: f"s3://{b}")
        self.runner_role_arn = runner_role.arn
        self.register_outputs({"kubeconfig": self.kubeconfig, "registry_url": self.registry_url,
                               "bucket_url": self.bucket_url, "cluster_name": self.cluster_name,
                               "runner_role_arn": self.runner_role_arn})

    # --- helpers -------------------------------------------------------------------------------

    def _opts(self, **kwargs: Any) -> pulumi.ResourceOptions:
        return pulumi.ResourceOptions(parent=self, **kwargs)

    def _k8s(self, **kwargs: Any) -> pulumi.ResourceOptions:
        return pulumi.ResourceOptions(parent=self, provider=self.provider, **kwargs)

    def _tagged(self, name: str, **extra: str) -> dict[str, str]:
        return {"Name": f"{self._args.cluster_name}-{name}", **self._tags, **extra}

    def _role(self, name: str, service: str, managed: tuple[str, ...] = ()) -> aws.iam.Role:
        role = aws.iam.Role(f"{self._name}-{name}", assume_role_policy=iam.assume_role(service),
                            tags=self._tagged(name), opts=self._opts())
        for i, arn in enumerate(managed):
            aws.iam.RolePolicyAttachment(f"{self._name}-{name}-{i}", role=role.name, policy_arn=arn,
                                         opts=self._opts())
        return role

    def _pod_role(self, name: str, policy, arns: list[pulumi.Output[str]], cluster: aws.eks.Cluster,
                  namespace: str, service_account: str) -> aws.iam.Role:
        """A role for one Kubernetes service account through EKS Pod Identity, with an inline policy."""
        role = self._role(name, iam.POD_IDENTITY)
        aws.iam.RolePolicy(f"{self._name}-{name}", role=role.id,
                           policy=pulumi.Output.all(*arns).apply(lambda v: policy(*v)), opts=self._opts())
        aws.eks.PodIdentityAssociation(f"{self._name}-{name}", cluster_name=cluster.name, namespace=namespace,
                                       service_account=service_account, role_arn=role.arn,
                                       tags=self._tagged(name), opts=self._opts())
        return role

    # --- parts ---------------------------------------------------------------------------------

    def _network(self) -> tuple[list[aws.ec2.Subnet], list[aws.ec2.Subnet]]:
        a, cluster = self._args, self._args.cluster_name
        zones = aws.get_availability_zones(state="available", opts=pulumi.InvokeOptions(parent=self)).names
        if len(zones) < a.az_count:
            raise pulumi.RunError(f"aws:region {a.region} has {len(zones)} available zones; "
                                  f"set runner:azCount to at most {len(zones)}")
        net = ipaddress.ip_network(a.vpc_cidr)
        blocks = list(net.subnets(prefixlen_diff=2))  # 4 quarters: 3 private, the last for public
        private_cidrs = blocks[:a.az_count]
        public_cidrs = list(blocks[3].subnets(prefixlen_diff=2))[:a.az_count]

        vpc = aws.ec2.Vpc(f"{self._name}-vpc", cidr_block=a.vpc_cidr, enable_dns_hostnames=True,
                          enable_dns_support=True, tags=self._tagged("vpc"), opts=self._opts())
        igw = aws.ec2.InternetGateway(f"{self._name}-igw", vpc_id=vpc.id, tags=self._tagged("igw"), opts=self._opts())
        public, private = [], []
        for i, zone in enumerate(zones[:a.az_count]):
            public.append(aws.ec2.Subnet(
                f"{self._name}-public-{i}", vpc_id=vpc.id, availability_zone=zone, cidr_block=str(public_cidrs[i]),
                map_public_ip_on_launch=True, opts=self._opts(),
                tags=self._tagged(f"public-{zone}", **{"kubernetes.io/role/elb": "1"})))
            private.append(aws.ec2.Subnet(
                f"{self._name}-private-{i}", vpc_id=vpc.id, availability_zone=zone, cidr_block=str(private_cidrs[i]),
                opts=self._opts(),
                tags=self._tagged(f"private-{zone}", **{"kubernetes.io/role/internal-elb": "1",
                                                        "karpenter.sh/discovery": cluster,
                                                        f"kubernetes.io/cluster/{cluster}": "shared"})))
        eip = aws.ec2.Eip(f"{self._name}-nat", domain="vpc", tags=self._tagged("nat"), opts=self._opts())
        nat = aws.ec2.NatGateway(f"{self._name}-nat", allocation_id=eip.id, subnet_id=public[0].id,
                                 tags=self._tagged("nat"), opts=self._opts(depends_on=[igw]))
        public_routes = aws.ec2.RouteTable(f"{self._name}-public", vpc_id=vpc.id, tags=self._tagged("public"),
                                           routes=[{"cidr_block": "0.0.0.0/0", "gateway_id": igw.id}],
                                           opts=self._opts())
        private_routes = aws.ec2.RouteTable(f"{self._name}-private", vpc_id=vpc.id, tags=self._tagged("private"),
                                            routes=[{"cidr_block": "0.0.0.0/0", "nat_gateway_id": nat.id}],
                                            opts=self._opts())
        for kind, subnets, table in (("public", public, public_routes), ("private", private, private_routes)):
            for i, subnet in enumerate(subnets):
                aws.ec2.RouteTableAssociation(f"{self._name}-{kind}-{i}", subnet_id=subnet.id,
                                              route_table_id=table.id, opts=self._opts())
        return private, public

    def _cluster(self, private: list[aws.ec2.Subnet]) -> aws.eks.Cluster:
        a = self._args
        role = self._role("cluster", "eks.amazonaws.com", (_CLUSTER_POLICY,))
        cluster = aws.eks.Cluster(
            f"{self._name}-eks", name=a.cluster_name, version=a.kubernetes_version, role_arn=role.arn,
            vpc_config={"subnet_ids": [s.id for s in private], "endpoint_private_access": True,
                        "endpoint_public_access": True, "public_access_cidrs": list(a.api_allowed_cidrs)},
            # Access entries only; whoever runs `pulumi up` is the cluster's admin (the runner's
            # pods are not: they get the namespaced Role of infra/common).
            access_config={"authentication_mode": "API", "bootstrap_cluster_creator_admin_permissions": True},
            # Extended support costs six times standard; upgrade instead.
            upgrade_policy={"support_type": "STANDARD"},
            tags=self._tagged("eks"), opts=self._opts())
        # Karpenter finds the security group for its nodes by this tag: EKS's cluster security group,
        # which the managed node group uses too, so all nodes can talk to each other and the API.
        aws.ec2.Tag(f"{self._name}-cluster-sg-discovery", resource_id=cluster.vpc_config.cluster_security_group_id,
                    key="karpenter.sh/discovery", value=a.cluster_name, opts=self._opts())
        return cluster

    def _system_nodes(self, cluster: aws.eks.Cluster, private: list[aws.ec2.Subnet]) -> aws.eks.NodeGroup:
        a = self._args
        role = self._role("system-node", _EC2, _SYSTEM_NODE_POLICIES)
        return aws.eks.NodeGroup(
            f"{self._name}-system", cluster_name=cluster.name, node_role_arn=role.arn,
            subnet_ids=[s.id for s in private], instance_types=[a.system_instance_type], capacity_type="ON_DEMAND",
            ami_type="AL2023_x86_64_STANDARD",
            scaling_config={"min_size": a.system_min_nodes, "desired_size": a.system_min_nodes,
                            "max_size": a.system_max_nodes},
            update_config={"max_unavailable": 1}, labels={"runner/pool": "system"},
            tags=self._tagged("system"), opts=self._opts())

    def _addons(self, cluster: aws.eks.Cluster, nodes: aws.eks.NodeGroup) -> list[aws.eks.Addon]:
        agent = aws.eks.Addon(f"{self._name}-pod-identity-agent", cluster_name=cluster.name,
                              addon_name="eks-pod-identity-agent", tags=self._tags, opts=self._opts())
        ebs_role = self._role("ebs-csi", iam.POD_IDENTITY, (_EBS_CSI_POLICY,))
        ebs = aws.eks.Addon(f"{self._name}-ebs-csi", cluster_name=cluster.name, addon_name="aws-ebs-csi-driver",
                            pod_identity_associations=[{"role_arn": ebs_role.arn,
                                                        "service_account": "ebs-csi-controller-sa"}],
                            tags=self._tags, opts=self._opts(depends_on=[nodes, agent]))
        return [agent, ebs]

    def _registry(self) -> aws.ecr.Repository:
        a = self._args
        repository = aws.ecr.Repository(
            f"{self._name}-images", name=f"{a.cluster_name}/images",
            image_tag_mutability="IMMUTABLE" if a.immutable_tags else "MUTABLE",
            image_scanning_configuration={"scan_on_push": True},
            encryption_configurations=[{"encryption_type": "AES256"}],
            force_delete=a.force_destroy, tags=self._tagged("images"), opts=self._opts())
        # Untagged layers left by re-pushed tags cost storage for nothing.
        aws.ecr.LifecyclePolicy(f"{self._name}-images", repository=repository.name, opts=self._opts(),
                                policy=json.dumps({"rules": [{
                                    "rulePriority": 1, "description": "expire untagged images after 14 days",
                                    "selection": {"tagStatus": "untagged", "countType": "sinceImagePushed",
                                                  "countUnit": "days", "countNumber": 14},
                                    "action": {"type": "expire"}}]}))
        return repository

    def _bucket(self) -> aws.s3.Bucket:
        a = self._args
        bucket = aws.s3.Bucket(f"{self._name}-volumes", bucket_prefix=f"{a.cluster_name}-volumes-",
                               force_destroy=a.force_destroy, tags=self._tagged("volumes"), opts=self._opts())
        aws.s3.BucketPublicAccessBlock(f"{self._name}-volumes", bucket=bucket.id, block_public_acls=True,
                                       block_public_policy=True, ignore_public_acls=True,
                                       restrict_public_buckets=True, opts=self._opts())
        aws.s3.BucketOwnershipControls(f"{self._name}-volumes", bucket=bucket.id,
                                       rule={"object_ownership": "BucketOwnerEnforced"}, opts=self._opts())
        aws.s3.BucketVersioning(f"{self._name}-volumes", bucket=bucket.id,
                                versioning_configuration={"status": "Enabled"}, opts=self._opts())
        aws.s3.BucketServerSideEncryptionConfiguration(
            f"{self._name}-volumes", bucket=bucket.id, opts=self._opts(),
            rules=[{"apply_server_side_encryption_by_default": {"sse_algorithm": "AES256"},
                    "bucket_key_enabled": True}])
        return bucket

    def _interruption_queue(self) -> aws.sqs.Queue:
        queue = aws.sqs.Queue(f"{self._name}-interruptions", name=self._args.cluster_name,
                              message_retention_seconds=300, sqs_managed_sse_enabled=True,
                              tags=self._tagged("interruptions"), opts=self._opts())
        aws.sqs.QueuePolicy(f"{self._name}-interruptions", queue_url=queue.url,
                            policy=queue.arn.apply(karpenter.interruption_queue_policy), opts=self._opts())
        for rule_name, pattern in karpenter.INTERRUPTION_EVENTS.items():
            rule = aws.cloudwatch.EventRule(f"{self._name}-{rule_name}", event_pattern=json.dumps(pattern),
                                            tags=self._tagged(rule_name), opts=self._opts())
            aws.cloudwatch.EventTarget(f"{self._name}-{rule_name}", rule=rule.name, arn=queue.arn,
                                       target_id="karpenter-interruption-queue", opts=self._opts())
        return queue

    def _karpenter_node_identity(self, cluster: aws.eks.Cluster):
        role = self._role("karpenter-node", _EC2, karpenter.NODE_MANAGED_POLICIES)
        profile = aws.iam.InstanceProfile(f"{self._name}-karpenter-node", role=role.name,
                                          tags=self._tagged("karpenter-node"), opts=self._opts())
        # With API authentication, nodes join through an access entry of type EC2_LINUX.
        access = aws.eks.AccessEntry(f"{self._name}-karpenter-node", cluster_name=cluster.name,
                                     principal_arn=role.arn, type="EC2_LINUX", tags=self._tags, opts=self._opts())
        return role, profile, access

    def _karpenter(self, queue: aws.sqs.Queue, profile: aws.iam.InstanceProfile, controller: aws.iam.Role) -> None:
        a = self._args
        replicas = 2 if a.system_min_nodes >= 2 else 1
        release = k8s.helm.v3.Release(
            f"{self._name}-karpenter", name="karpenter", chart=karpenter.CHART, version=karpenter.CHART_VERSION,
            namespace=karpenter.NAMESPACE,
            values=queue.name.apply(lambda q: karpenter.helm_values(a.cluster_name, q, replicas)),
            opts=self._k8s(depends_on=[controller]))
        node_class = k8s.apiextensions.CustomResource(
            f"{self._name}-node-class", **_cr(karpenter.node_class(a.cluster_name, profile.name, a.ami_alias)),
            opts=self._k8s(depends_on=[release]))
        pools = [karpenter.cpu_node_pool(a.spot, a.cpu_limit, a.memory_limit, a.consolidate_after)]
        pools += [karpenter.gpu_node_pool(f, a.spot, a.gpu_limit, a.consolidate_after) for f in a.gpu_families]
        for pool in pools:
            k8s.apiextensions.CustomResource(f"{self._name}-pool-{pool['metadata']['name']}", **_cr(pool),
                                             opts=self._k8s(depends_on=[release, node_class]))


def _cr(manifest: dict[str, Any]) -> dict[str, Any]:
    """CustomResource keyword arguments of a manifest dict (its values may hold Outputs)."""
    return {"api_version": manifest["apiVersion"], "kind": manifest["kind"], "metadata": manifest["metadata"],
            "spec": manifest["spec"]}

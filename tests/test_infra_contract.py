"""THE CONTRACT TEST: every cloud's program, under mocks, exports what the runner's loader reads.

For each cloud, `infra.<cloud>.program()` runs under the harness with that cloud's minimal config
and the provider-computed fields it reads (one entry of `CASES`); its resolved exports are written
as `pulumi stack output --json --show-secrets` prints them and read back through
`runner._stack.read_outputs(path)`. Every field must be present and well formed, the secret ones
must have been Pulumi secrets, and the consumer must never need to branch on the cloud beyond
what the contract says (bucket scheme, kubeconfig's exec plugin).
"""

from __future__ import annotations

import base64
import dataclasses
import importlib
import json
from collections.abc import Callable
from typing import Any

import pytest
import yaml
from infra_harness import run

from infra.common.manifests import QUEUE_NAME, QUEUE_PORT
from runner._stack import CLOUDS, OUTPUT_KEYS, SECRET_KEYS, read_outputs

MODAL_GPUS = {"H100", "H200", "B200", "A100-80GB", "A100-40GB", "L40S", "L4", "T4", "A10G"}

_CA = base64.b64encode(b"-----BEGIN CERTIFICATE-----\nMOCK\n-----END CERTIFICATE-----\n").decode()
_AZ_KUBECONFIG = base64.b64encode(yaml.safe_dump({
    "apiVersion": "v1", "kind": "Config", "current-context": "runner",
    "clusters": [{"name": "runner", "cluster": {"server": "https://runner-dns.hcp.westeurope.azmk8s.io:443",
                                                "certificate-authority-data": _CA}}],
    "contexts": [{"name": "runner", "context": {"cluster": "runner", "user": "clusterUser_runner_runner"}}],
    "users": [{"name": "clusterUser_runner_runner", "user": {"exec": {
        "apiVersion": "client.authentication.k8s.io/v1beta1", "command": "kubelogin",
        "args": ["get-token", "--server-id", "6dae42f8-4368-4678-94ff-3960e28e3630"]}}}],
}).encode()).decode()


@dataclasses.dataclass
class Case:
    """One cloud's minimal stack config and the mocks its program needs."""

    config: dict[str, Any] = dataclasses.field(default_factory=dict)
    secret_config: dict[str, Any] = dataclasses.field(default_factory=dict)
    hooks: dict[str, Callable] = dataclasses.field(default_factory=dict)  # resource token -> outputs
    calls: dict[str, Callable] = dataclasses.field(default_factory=dict)  # invoke token -> result
    bucket_scheme: str = ""
    auth_plugin: str | None = None  # the exec plugin the kubeconfig uses; None: no cluster


CASES: dict[str, Case] = {
    "gcp": Case(
        config={"gcp:project": "proj"},
        hooks={
            "gcp:container/cluster:Cluster": lambda a: {"endpoint": "34.1.2.3",
                                                        "masterAuth": {"clusterCaCertificate": _CA}},
            "gcp:serviceaccount/account:Account": lambda a: {
                "email": f"{a.inputs['accountId']}@{a.inputs['project']}.iam.gserviceaccount.com",
                "name": f"projects/{a.inputs['project']}/serviceAccounts/{a.inputs['accountId']}"},
        },
        bucket_scheme="gs://", auth_plugin="gke-gcloud-auth-plugin"),
    "aws": Case(
        config={"aws:region": "us-east-1"},
        hooks={
            "aws:eks/cluster:Cluster": lambda a: {
                "endpoint": "https://ABC.gr7.us-east-1.eks.amazonaws.com", "certificateAuthority": {"data": _CA},
                "identities": [{"oidcs": [{"issuer": "https://oidc.eks.us-east-1.amazonaws.com/id/ABC"}]}],
                "arn": "arn:aws:eks:us-east-1:123456789012:cluster/runner"},
            "aws:iam/role:Role": lambda a: {"arn": f"arn:aws:iam::123456789012:role/{a.name}"},
            "aws:sqs/queue:Queue": lambda a: {"arn": f"arn:aws:sqs:us-east-1:123456789012:{a.name}",
                                              "url": f"https://sqs.us-east-1.amazonaws.com/123456789012/{a.name}"},
            "aws:ecr/repository:Repository": lambda a: {
                "repositoryUrl": f"123456789012.dkr.ecr.us-east-1.amazonaws.com/{a.inputs.get('name', a.name)}",
                "arn": f"arn:aws:ecr:us-east-1:123456789012:repository/{a.name}"},
            "aws:s3/bucketV2:BucketV2": lambda a: {"bucket": a.inputs.get("bucket", a.name),
                                                   "arn": f"arn:aws:s3:::{a.name}"},
            "aws:s3/bucket:Bucket": lambda a: {"bucket": a.inputs.get("bucket", a.name),
                                               "arn": f"arn:aws:s3:::{a.name}"},
        },
        calls={
            "aws:index/getCallerIdentity:getCallerIdentity": lambda a: {
                "accountId": "123456789012", "arn": "arn:aws:iam::123456789012:user/ci", "userId": "AID"},
            "aws:index/getRegion:getRegion": lambda a: {"name": "us-east-1", "region": "us-east-1"},
            "aws:index/getPartition:getPartition": lambda a: {"partition": "aws", "dnsSuffix": "amazonaws.com"},
            "aws:index/getAvailabilityZones:getAvailabilityZones": lambda a: {
                "names": ["us-east-1a", "us-east-1b", "us-east-1c"], "zoneIds": ["use1-az1", "use1-az2", "use1-az4"]},
        },
        bucket_scheme="s3://", auth_plugin="aws"),
    "azure": Case(
        config={"azure-native:location": "westeurope"},
        hooks={
            "azure-native:containerservice:ManagedCluster": lambda a: {
                "identityProfile": {"kubeletidentity": {"objectId": "kubelet-object-id", "clientId": "kubelet-client"}},
                "oidcIssuerProfile": {"issuerURL": "https://westeurope.oic.prod-aks.azure.com/tenant/uuid/"},
                "fqdn": "runner-dns.hcp.westeurope.azmk8s.io"},
            "azure-native:storage:StorageAccount": lambda a: {
                "primaryEndpoints": {
                    "blob": f"https://{a.inputs.get('accountName', 'runnerstore')}.blob.core.windows.net/"}},
            "azure-native:storage:BlobContainer": lambda a: {"name": a.inputs.get("containerName", a.name)},
            "azure-native:containerregistry:Registry": lambda a: {
                "loginServer": f"{a.inputs.get('registryName', 'runnerregistry')}.azurecr.io"},
            "azure-native:managedidentity:UserAssignedIdentity": lambda a: {
                "clientId": f"{a.name}-client-id", "principalId": f"{a.name}-principal-id"},
        },
        calls={
            "azure-native:authorization:getClientConfig": lambda a: {
                "clientId": "client", "objectId": "object", "subscriptionId": "00000000-0000-0000-0000-000000000000",
                "tenantId": "tenant"},
            "azure-native:containerservice:listManagedClusterUserCredentials": lambda a: {
                "kubeconfigs": [{"name": "clusterUser", "value": _AZ_KUBECONFIG}]},
        },
        bucket_scheme="https://", auth_plugin="kubelogin"),
    "local": Case(
        config={"runner:dataDir": "/srv/runner-local"},
        hooks={"docker:index/remoteImage:RemoteImage": lambda a: {"imageId": f"sha256:mock-{a.inputs['name']}"}},
        bucket_scheme="file:///"),
}


def _program(cloud: str) -> Callable[[], None]:
    try:
        module = importlib.import_module(f"infra.{cloud}")
    except ModuleNotFoundError as e:
        if e.name == f"infra.{cloud}":
            pytest.skip(f"infra.{cloud} not written yet")
        raise
    return module.program


@pytest.fixture(scope="module", params=CLOUDS)
def exported(request, tmp_path_factory):
    """(cloud, the resolved exports, which were secret, the StackOutputs read back from a JSON file)."""
    cloud = request.param
    program = _program(cloud)
    case = CASES[cloud]
    rec = run(program, config={"runner:cloud": cloud, **case.config}, secret_config=case.secret_config,
              hooks=case.hooks, calls=case.calls)
    path = tmp_path_factory.mktemp(f"contract-{cloud}") / "outputs.json"
    path.write_text(json.dumps(rec.exports, indent=2))  # as `pulumi stack output --json --show-secrets`
    return cloud, rec.exports, rec.secret_exports, read_outputs(str(path))


def test_every_cloud_has_a_case():
    assert set(CASES) == set(CLOUDS)


def test_exports_are_exactly_the_contract_and_read_back_unchanged(exported):
    cloud, exports, secret, outputs = exported
    assert set(exports) == set(OUTPUT_KEYS)
    assert dataclasses.asdict(outputs) == exports
    assert outputs.cloud == cloud
    for key in SECRET_KEYS:
        assert key in secret, f"{cloud}: {key} is not a Pulumi secret"


def test_kubeconfig_reaches_the_cluster_with_the_clouds_auth_plugin(exported):
    cloud, _, _, outputs = exported
    plugin = CASES[cloud].auth_plugin
    if plugin is None:
        assert outputs.kubeconfig == ""  # no cluster: the docker provider talks to Docker
        return
    config = yaml.safe_load(outputs.kubeconfig)
    assert config["kind"] == "Config"
    contexts = {c["name"]: c["context"] for c in config["contexts"]}
    context = contexts[config["current-context"]]
    cluster = {c["name"]: c["cluster"] for c in config["clusters"]}[context["cluster"]]
    user = {u["name"]: u["user"] for u in config["users"]}[context["user"]]
    assert cluster["server"].startswith("https://")
    assert base64.b64decode(cluster["certificate-authority-data"])
    assert user["exec"]["command"] == plugin  # short-lived tokens, no static credential
    assert user["exec"]["apiVersion"].startswith("client.authentication.k8s.io/")
    assert not {"token", "password", "client-key-data"} & set(user)


def test_registry_bucket_and_queue_are_well_formed(exported):
    cloud, _, _, outputs = exported
    assert "://" not in outputs.registry_url and outputs.registry_url.split("/")[0]  # a docker host[/path]
    assert outputs.bucket_url.startswith(CASES[cloud].bucket_scheme), outputs.bucket_url
    assert len(outputs.bucket_url) > len(CASES[cloud].bucket_scheme)
    assert outputs.namespace == "runner" and outputs.service_account == "runner"
    assert outputs.queue_secret_name
    if cloud == "local":
        assert outputs.queue_endpoint.startswith("unix:///") and outputs.queue_endpoint.endswith("?db=0")
        assert outputs.registry_url.startswith("127.0.0.1:")
    else:
        assert outputs.queue_endpoint == f"redis://{QUEUE_NAME}.{outputs.namespace}.svc.cluster.local:{QUEUE_PORT}/0"


def test_gpu_types_give_modal_names_a_placement(exported):
    cloud, _, _, outputs = exported
    assert set(outputs.gpu_types) <= MODAL_GPUS, set(outputs.gpu_types) - MODAL_GPUS
    if cloud == "local":
        assert outputs.gpu_types == {} and outputs.pod_labels == {}
        return
    assert outputs.gpu_types, f"{cloud} offers no GPU type by default"
    for name, placement in outputs.gpu_types.items():
        assert placement["node_selector"], name
        assert any(t.get("effect") == "NoSchedule" for t in placement["tolerations"]), name
    if cloud == "azure":
        assert outputs.pod_labels == {"azure.workload.identity/use": "true"}

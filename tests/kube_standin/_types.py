"""What the stand-in's API server is made of: the resource table, v1 Status errors, timestamps."""

from __future__ import annotations

import dataclasses
import datetime

__all__ = ["RESOURCES", "ApiError", "Resource", "now"]


@dataclasses.dataclass(frozen=True)
class Resource:
    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool = True
    status_subresource: bool = True
    short: tuple[str, ...] = ()

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def qualified(self) -> str:
        """How the API names it in messages: `pods`, `deployments.apps`."""
        return f"{self.plural}.{self.group}" if self.group else self.plural


RESOURCES = [
    Resource("", "v1", "pods", "Pod", short=("po",)),
    Resource("", "v1", "secrets", "Secret", status_subresource=False),
    Resource("", "v1", "configmaps", "ConfigMap", status_subresource=False, short=("cm",)),
    Resource("", "v1", "services", "Service", short=("svc",)),
    Resource("", "v1", "serviceaccounts", "ServiceAccount", status_subresource=False, short=("sa",)),
    Resource("", "v1", "persistentvolumeclaims", "PersistentVolumeClaim", short=("pvc",)),
    Resource("", "v1", "events", "Event", status_subresource=False, short=("ev",)),
    Resource("", "v1", "namespaces", "Namespace", namespaced=False, short=("ns",)),
    Resource("", "v1", "nodes", "Node", namespaced=False, short=("no",)),
    Resource("apps", "v1", "deployments", "Deployment", short=("deploy",)),
    Resource("apps", "v1", "replicasets", "ReplicaSet", short=("rs",)),
    Resource("apps", "v1", "statefulsets", "StatefulSet", short=("sts",)),
    Resource("batch", "v1", "jobs", "Job"),
    Resource("batch", "v1", "cronjobs", "CronJob", short=("cj",)),
    Resource("networking.k8s.io", "v1", "networkpolicies", "NetworkPolicy", status_subresource=False),
    Resource("networking.k8s.io", "v1", "ingresses", "Ingress", short=("ing",)),
    Resource("policy", "v1", "poddisruptionbudgets", "PodDisruptionBudget", short=("pdb",)),
    Resource("keda.sh", "v1alpha1", "scaledobjects", "ScaledObject", short=("so",)),
    Resource("keda.sh", "v1alpha1", "scaledjobs", "ScaledJob", short=("sj",)),
    Resource("keda.sh", "v1alpha1", "triggerauthentications", "TriggerAuthentication", short=("ta",)),
    Resource("keda.sh", "v1alpha1", "clustertriggerauthentications", "ClusterTriggerAuthentication",
             namespaced=False),
    Resource("http.keda.sh", "v1alpha1", "httpscaledobjects", "HTTPScaledObject"),
]

def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class ApiError(Exception):
    """An error the API answers with a v1 Status body."""

    def __init__(self, code: int, reason: str, message: str, details: dict | None = None):
        super().__init__(message)
        self.code, self.reason, self.message, self.details = code, reason, message, details

    def status(self) -> dict:
        body = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": self.message, "reason": self.reason, "code": self.code}
        if self.details is not None:
            body["details"] = self.details
        return body

    @classmethod
    def not_found(cls, res: Resource, name: str) -> ApiError:
        return cls(404, "NotFound", f'{res.qualified} "{name}" not found', details_for(res, name))

    @classmethod
    def already_exists(cls, res: Resource, name: str) -> ApiError:
        return cls(409, "AlreadyExists", f'{res.qualified} "{name}" already exists', details_for(res, name))

    @classmethod
    def conflict(cls, res: Resource, name: str) -> ApiError:
        return cls(409, "Conflict", f'Operation cannot be fulfilled on {res.qualified} "{name}": the object has '
                   "been modified; please apply your changes to the latest version and try again",
                   details_for(res, name))

    @classmethod
    def invalid(cls, res: Resource, name: str, causes: list[tuple[str, str, str]]) -> ApiError:
        """causes: (field, reason, message), e.g. ("spec.containers", "FieldValueRequired", "Required value")."""
        text = ", ".join(f"{field}: {message}" for field, _, message in causes)
        details = details_for(res, name) | {"kind": res.kind,
                                         "causes": [{"reason": r, "message": m, "field": f} for f, r, m in causes]}
        if len(causes) > 1:
            text = f"[{text}]"
        return cls(422, "Invalid", f'{res.kind} "{name}" is invalid: {text}', details)


def details_for(res: Resource, name: str) -> dict:
    details = {"name": name, "kind": res.plural}
    if res.group:
        details["group"] = res.group
    return details

"""Server-side defaults and validation (the 422s), per kind, as far as a provider's objects need them."""

from __future__ import annotations

import base64
import copy
import random
import re
from typing import Any

from ._selectors import label_selector_matches
from ._types import Resource

__all__ = ["apply_defaults", "immutable_changes", "pod_qos", "validate"]

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_LABEL_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
# Names that must be DNS labels (63 chars, no dots); the rest are DNS subdomains (253 chars).
_LABEL_NAMED = {"services", "namespaces"}



def apply_defaults(res: Resource, obj: dict) -> None:
    if res.plural in ("pods", "deployments", "replicasets", "statefulsets", "jobs", "cronjobs", "services",
                      "namespaces") and not isinstance(obj.get("spec"), dict):
        obj["spec"] = {}
    spec = obj.get("spec")
    if res.plural == "pods":
        _pod_spec_defaults(spec)
    elif res.plural in ("deployments", "replicasets", "jobs", "statefulsets", "cronjobs"):
        if res.plural != "jobs" and res.plural != "cronjobs":
            spec.setdefault("replicas", 1)
        if res.plural == "deployments":
            spec.setdefault("strategy", {"type": "RollingUpdate",
                                         "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}})
            spec.setdefault("revisionHistoryLimit", 10)
            spec.setdefault("progressDeadlineSeconds", 600)
        if res.plural == "jobs":
            for key, value in (("backoffLimit", 6), ("completions", 1), ("parallelism", 1)):
                spec.setdefault(key, value)
            labels = {"job-name": obj["metadata"].get("name", ""),
                      "batch.kubernetes.io/job-name": obj["metadata"].get("name", "")}
            if "selector" not in spec:
                spec["selector"] = {"matchLabels": {"batch.kubernetes.io/job-name": labels["job-name"]}}
            spec.setdefault("template", {}).setdefault("metadata", {}).setdefault("labels", {}).update(labels)
        template = (spec.get("jobTemplate", {}).get("spec", {}) if res.plural == "cronjobs" else spec).get("template")
        if isinstance(template, dict):
            _pod_spec_defaults(template.setdefault("spec", {}))
    elif res.plural == "secrets":
        obj.setdefault("type", "Opaque")
        for key, value in (obj.pop("stringData", None) or {}).items():
            obj.setdefault("data", {})[key] = base64.b64encode(str(value).encode()).decode()
    elif res.plural == "services":
        spec.setdefault("type", "ClusterIP")
        spec.setdefault("sessionAffinity", "None")
        if "clusterIP" not in spec:
            spec["clusterIP"] = f"10.96.{random.randint(0, 255)}.{random.randint(1, 254)}"
            spec["clusterIPs"] = [spec["clusterIP"]]
        for port in spec.get("ports") or []:
            port.setdefault("protocol", "TCP")
            if "targetPort" not in port and "port" in port:
                port["targetPort"] = port["port"]
    elif res.plural == "namespaces":
        spec.setdefault("finalizers", ["kubernetes"])
        obj["status"] = {"phase": "Terminating" if obj["metadata"].get("deletionTimestamp") else "Active"}
        obj["metadata"].setdefault("labels", {})["kubernetes.io/metadata.name"] = obj["metadata"].get("name", "")


def _pod_spec_defaults(spec: dict) -> None:
    spec.setdefault("restartPolicy", "Always")
    spec.setdefault("terminationGracePeriodSeconds", 30)
    spec.setdefault("dnsPolicy", "ClusterFirst")
    spec.setdefault("schedulerName", "default-scheduler")
    spec.setdefault("serviceAccountName", spec.get("serviceAccount", "default"))
    spec.setdefault("securityContext", {})
    for container in (spec.get("containers") or []) + (spec.get("initContainers") or []):
        if not isinstance(container, dict):
            continue
        image = str(container.get("image", ""))
        tag = image.rpartition("/")[2].partition("@")[0]
        latest = ":" not in tag or tag.endswith(":latest")
        container.setdefault("imagePullPolicy", "Always" if latest and "@" not in image else "IfNotPresent")
        container.setdefault("terminationMessagePath", "/dev/termination-log")
        container.setdefault("terminationMessagePolicy", "File")
        container.setdefault("resources", {})


def pod_qos(pod: dict) -> str:
    resources = [c.get("resources") or {} for c in pod.get("spec", {}).get("containers") or []
                 if isinstance(c, dict)]
    if not any(r.get("limits") or r.get("requests") for r in resources):
        return "BestEffort"

    def guaranteed(r: dict) -> bool:
        limits, requests = r.get("limits") or {}, r.get("requests") or {}
        return bool(limits.get("cpu") and limits.get("memory")) and all(
            requests.get(k, limits[k]) == limits[k] for k in ("cpu", "memory"))
    return "Guaranteed" if all(guaranteed(r) for r in resources) else "Burstable"


def _validate_name(res: Resource, name: str, causes: list) -> None:
    if not name:
        causes.append(("metadata.name", "FieldValueRequired", "Required value: name or generateName is required"))
        return
    pattern, limit = (_DNS_LABEL, 63) if res.plural in _LABEL_NAMED else (_DNS_SUBDOMAIN, 253)
    if len(name) > limit or not pattern.match(name):
        causes.append(("metadata.name", "FieldValueInvalid", f'Invalid value: "{name}": a lowercase RFC 1123 '
                       f"{'label' if limit == 63 else 'subdomain'} must consist of lower case alphanumeric "
                       "characters, '-' or '.', and must start and end with an alphanumeric character"))


def _validate_labels(labels: Any, field: str, causes: list) -> None:
    if labels is None:
        return
    if not isinstance(labels, dict):
        causes.append((field, "FieldValueInvalid", "Invalid value: must be a map of strings"))
        return
    for key, value in labels.items():
        name = str(key).rpartition("/")[2]
        if not _LABEL_NAME.match(name) or len(name) > 63:
            causes.append((field, "FieldValueInvalid", f'Invalid value: "{key}": name part must consist of '
                           "alphanumeric characters, '-', '_' or '.'"))
        if not isinstance(value, str) or len(value) > 63 or not _LABEL_VALUE.match(value):
            causes.append((field, "FieldValueInvalid", f'Invalid value: "{value}": a valid label must be an '
                           "empty string or consist of alphanumeric characters, '-', '_' or '.', "
                           "and must start and end with an alphanumeric character"))


def _validate_pod_spec(spec: Any, field: str, causes: list) -> None:
    if not isinstance(spec, dict):
        causes.append((field, "FieldValueRequired", "Required value"))
        return
    if spec.get("restartPolicy") not in ("Always", "OnFailure", "Never"):
        causes.append((f"{field}.restartPolicy", "FieldValueNotSupported",
                       f'Unsupported value: "{spec.get("restartPolicy")}": supported values: '
                       '"Always", "OnFailure", "Never"'))
    containers = spec.get("containers")
    if not containers:
        causes.append((f"{field}.containers", "FieldValueRequired", "Required value"))
    seen: set[str] = set()
    volumes = {v.get("name") for v in spec.get("volumes") or [] if isinstance(v, dict)}
    for kind in ("initContainers", "containers"):
        for i, c in enumerate(spec.get(kind) or []):
            where = f"{field}.{kind}[{i}]"
            if not isinstance(c, dict):
                causes.append((where, "FieldValueInvalid", "Invalid value: must be an object"))
                continue
            name = c.get("name")
            if not name:
                causes.append((f"{where}.name", "FieldValueRequired", "Required value"))
            elif not _DNS_LABEL.match(name) or len(name) > 63:
                causes.append((f"{where}.name", "FieldValueInvalid", f'Invalid value: "{name}": a lowercase '
                               "RFC 1123 label must consist of lower case alphanumeric characters or '-'"))
            elif name in seen:
                causes.append((f"{where}.name", "FieldValueDuplicate", f'Duplicate value: "{name}"'))
            seen.add(name or "")
            if not c.get("image"):
                causes.append((f"{where}.image", "FieldValueRequired", "Required value"))
            for j, m in enumerate(c.get("volumeMounts") or []):
                if m.get("name") not in volumes:
                    causes.append((f"{where}.volumeMounts[{j}].name", "FieldValueNotFound",
                                   f'Not found: "{m.get("name")}"'))
                if not str(m.get("mountPath", "")).startswith("/"):
                    causes.append((f"{where}.volumeMounts[{j}].mountPath", "FieldValueRequired", "Required value"))
            for j, e in enumerate(c.get("env") or []):
                if not e.get("name"):
                    causes.append((f"{where}.env[{j}].name", "FieldValueRequired", "Required value"))
            if kind == "initContainers" and c.get("restartPolicy") not in (None, "Always"):
                causes.append((f"{where}.restartPolicy", "FieldValueNotSupported",
                               f'Unsupported value: "{c.get("restartPolicy")}": supported values: "Always"'))


def validate(res: Resource, obj: dict) -> list[tuple[str, str, str]]:
    causes: list[tuple[str, str, str]] = []
    meta = obj.get("metadata", {})
    _validate_name(res, meta.get("name", ""), causes)
    _validate_labels(meta.get("labels"), "metadata.labels", causes)
    spec = obj.get("spec")
    if res.plural == "pods":
        _validate_pod_spec(spec, "spec", causes)
    elif res.plural in ("deployments", "replicasets", "statefulsets", "jobs"):
        template = (spec or {}).get("template") or {}
        _validate_pod_spec(template.get("spec"), "spec.template.spec", causes)
        selector = (spec or {}).get("selector")
        labels = (template.get("metadata") or {}).get("labels") or {}
        if res.plural != "jobs" and not selector:
            causes.append(("spec.selector", "FieldValueRequired", "Required value"))
        elif selector and not label_selector_matches(selector, labels):
            causes.append(("spec.template.metadata.labels", "FieldValueInvalid",
                           f"Invalid value: {labels}: `selector` does not match template `labels`"))
        if res.plural == "jobs" and (template.get("spec") or {}).get("restartPolicy") not in ("Never", "OnFailure"):
            causes.append(("spec.template.spec.restartPolicy", "FieldValueRequired",
                           'Required value: valid values: "OnFailure", "Never"'))
        if isinstance((spec or {}).get("replicas"), int) and spec["replicas"] < 0:
            causes.append(("spec.replicas", "FieldValueInvalid", "Invalid value: must be greater than or equal to 0"))
    elif res.plural == "secrets":
        for key, value in (obj.get("data") or {}).items():
            try:
                base64.b64decode(value, validate=True)
            except (ValueError, TypeError):
                causes.append((f"data[{key}]", "FieldValueInvalid", "Invalid value: illegal base64 data"))
    elif res.plural == "services":
        for i, port in enumerate((spec or {}).get("ports") or []):
            if not isinstance(port.get("port"), int) or not 0 < port["port"] < 65536:
                causes.append((f"spec.ports[{i}].port", "FieldValueInvalid",
                               f"Invalid value: {port.get('port')}: must be between 1 and 65535, inclusive"))
    elif res.plural == "configmaps":
        for key in list(obj.get("data") or {}) + list(obj.get("binaryData") or {}):
            if not re.match(r"^[-._a-zA-Z0-9]+$", key):
                causes.append((f"data[{key}]", "FieldValueInvalid", f'Invalid value: "{key}": a valid config key '
                               "must consist of alphanumeric characters, '-', '_' or '.'"))
    return causes


def immutable_changes(res: Resource, old: dict, new: dict) -> list[tuple[str, str, str]]:
    if res.plural == "pods":
        def strip(spec: dict) -> dict:
            spec = copy.deepcopy(spec or {})
            spec.pop("activeDeadlineSeconds", None)
            spec.pop("tolerations", None)
            for c in spec.get("containers", []) + spec.get("initContainers", []):
                c.pop("image", None)
            return spec
        if strip(old.get("spec")) != strip(new.get("spec")):
            return [("spec", "FieldValueForbidden", "Forbidden: pod updates may not change fields other than "
                     "`spec.containers[*].image`, `spec.initContainers[*].image`, `spec.activeDeadlineSeconds` "
                     "or `spec.tolerations`")]
    if res.plural in ("secrets", "configmaps") and old.get("immutable") and \
            (old.get("data"), old.get("binaryData")) != (new.get("data"), new.get("binaryData")):
        return [("data", "FieldValueForbidden", "Forbidden: field is immutable when `immutable` is set")]
    if res.plural in ("deployments", "replicasets", "jobs") and old["spec"].get("selector") != new["spec"].get(
            "selector"):
        return [("spec.selector", "FieldValueInvalid", "Invalid value: field is immutable")]
    return []

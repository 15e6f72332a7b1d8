"""What a pod spec refers to, resolved against the store: env, Secret/ConfigMap files, pull credentials.

The kubelet resolves these when it creates each container, so a missing Secret or key is not an
API error but a container stuck in CreateContainerConfigError until it appears (ConfigError).
"""

from __future__ import annotations

import base64
import json
import math
import re
from typing import Any

from ._store import Store

__all__ = ["ConfigError", "PodRefs", "expand", "parse_quantity"]

_SUFFIX = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
           "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18, "m": 10**-3, "": 1}


def parse_quantity(text: Any) -> float:
    """A Kubernetes quantity: `500m` -> 0.5, `256Mi` -> 268435456, `1e3` -> 1000."""
    m = re.fullmatch(r"([+-]?[0-9.]+(?:[eE][+-]?[0-9]+)?)(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E|m)?", str(text).strip())
    if not m:
        raise ValueError(f"quantities must match the regular expression: {text!r}")
    return float(m.group(1)) * _SUFFIX[m.group(2) or ""]


class ConfigError(Exception):
    """A container's env or volumes refer to a Secret or ConfigMap (or key) that does not exist."""


class PodRefs:
    """One pod's references, looked up in its namespace each time (so a late Secret is picked up)."""

    def __init__(self, store: Store, pod: dict, node_name: str):
        self.store, self.pod, self.node_name = store, pod, node_name
        self.namespace = pod["metadata"]["namespace"]
        self.spec = pod["spec"]

    def projected_files(self, vol: dict) -> dict[str, tuple[bytes, int]]:
        kind, src = ("secret", vol["secret"]) if "secret" in vol else ("configMap", vol["configMap"])
        name = src.get("secretName") if kind == "secret" else src.get("name")
        data = self.config_data(kind, name, optional=bool(src.get("optional")))
        mode = src.get("defaultMode", 0o644)
        items = src.get("items")
        if items:
            return {i["path"]: (data[i["key"]], i.get("mode", mode)) for i in items if i["key"] in data}
        return {k: (v, mode) for k, v in data.items()}

    def config_data(self, kind: str, name: str, optional: bool = False) -> dict[str, bytes]:
        store = self.store
        res = store.resource("", "secrets" if kind == "secret" else "configmaps")
        obj = store.find(res, self.namespace, name)
        if obj is None:
            if optional:
                return {}
            raise ConfigError(f'{kind} "{name}" not found')
        if kind == "secret":
            return {k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()}
        data = {k: str(v).encode() for k, v in (obj.get("data") or {}).items()}
        return data | {k: base64.b64decode(v) for k, v in (obj.get("binaryData") or {}).items()}

    def env(self, c: dict) -> dict[str, str]:
        env: dict[str, str] = {}
        for src in c.get("envFrom") or []:
            prefix = src.get("prefix", "")
            ref = src.get("secretRef") or src.get("configMapRef") or {}
            kind = "secret" if "secretRef" in src else "configMap"
            for k, v in self.config_data(kind, ref.get("name"), bool(ref.get("optional"))).items():
                env[prefix + k] = v.decode(errors="replace")
        for item in c.get("env") or []:
            name = item["name"]
            if "valueFrom" not in item:
                env[name] = expand(str(item.get("value", "")), env)
                continue
            vf = item["valueFrom"]
            if "secretKeyRef" in vf or "configMapKeyRef" in vf:
                kind, ref = ("secret", vf["secretKeyRef"]) if "secretKeyRef" in vf else ("configMap",
                                                                                           vf["configMapKeyRef"])
                data = self.config_data(kind, ref["name"], bool(ref.get("optional")))
                if ref["key"] in data:
                    env[name] = data[ref["key"]].decode(errors="replace")
                elif not ref.get("optional"):
                    what = "Secret" if kind == "secret" else "ConfigMap"
                    raise ConfigError(f"couldn't find key {ref['key']} in {what} {self.namespace}/{ref['name']}")
            elif "fieldRef" in vf:
                env[name] = self._field(vf["fieldRef"]["fieldPath"])
            elif "resourceFieldRef" in vf:
                ref = vf["resourceFieldRef"]
                cname = ref.get("containerName") or c["name"]
                target = next(x for x in self.spec["containers"] + (self.spec.get("initContainers") or [])
                              if x["name"] == cname)
                kind, _, what = ref["resource"].partition(".")
                value = ((target.get("resources") or {}).get(kind) or {}).get(what)
                divisor = parse_quantity(ref.get("divisor", "1"))
                env[name] = str(math.ceil(parse_quantity(value) / divisor)) if value else "0"
        return env

    def _field(self, path: str) -> str:
        meta = self.pod["metadata"]
        m = re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", path)
        if m:
            return (meta.get(m.group(1)) or {}).get(m.group(2), "")
        return {"metadata.name": meta["name"], "metadata.namespace": meta["namespace"], "metadata.uid": meta["uid"],
                "spec.nodeName": self.node_name,
                "spec.serviceAccountName": self.spec.get("serviceAccountName", "default"),
                "status.podIP": "", "status.podIPs": "", "status.hostIP": "", "status.hostIPs": ""}.get(path, "")

    # containers

    def pull_auth(self, image: str) -> dict | None:
        registry = image.split("/")[0] if "/" in image and ("." in image.split("/")[0] or ":" in
                                                           image.split("/")[0]) else "docker.io"
        for ref in self.spec.get("imagePullSecrets") or []:
            try:
                data = self.config_data("secret", ref["name"])
            except ConfigError:
                continue
            raw = data.get(".dockerconfigjson") or data.get(".dockercfg")
            auths = json.loads(raw or b"{}")
            auths = auths.get("auths", auths)
            entry = auths.get(registry) or auths.get(f"https://{registry}") or {}
            if entry.get("auth") and not entry.get("username"):
                user, _, password = base64.b64decode(entry["auth"]).decode().partition(":")
                entry = {"username": user, "password": password}
            if entry.get("username"):
                return {"username": entry["username"], "password": entry.get("password", "")}
        return None

def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion: defined variables are replaced, $$ escapes, unknown ones stay."""
    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)",
                  lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)), text)

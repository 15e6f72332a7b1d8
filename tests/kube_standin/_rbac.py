"""Role-based access for the stand-in: what one namespaced Role lets its ServiceAccount do.

`KubeStandin(rbac=RULES)` gives the kubeconfig it writes (the one the runner uses) the token of a
ServiceAccount bound to a Role with RULES (the `rules` of a rbac.authorization.k8s.io/v1 Role) in
its namespace, and `api_client()` (the tests' own client) an administrator's token. A request
with the ServiceAccount's token is decided as the API server's RBAC authorizer decides it:

- the verb: get, list or watch (`?watch=true`) for GET, create for POST, update for PUT, patch
  for PATCH, delete or deletecollection (no name) for DELETE; pods/exec, pods/attach and
  pods/portforward need create, whatever the method (their WebSocket upgrade is a GET: Kubernetes
  1.31 authorizes it as create).
- the resource: the plural, or `plural/subresource`; the group: "" for the core API.
- allowed when one rule lists the group (or "*"), the resource (or "*") and the verb (or "*"),
  and the request is in the Role's namespace: a Role grants nothing cluster-wide, so lists
  across namespaces and cluster-scoped resources (nodes, namespaces) are forbidden.

Else 403 Forbidden, with the API server's message. Discovery, /version and health are open to any
authenticated user, as the system:discovery ClusterRole makes them. resourceNames and
nonResourceURLs rules are not modelled.
"""

from __future__ import annotations

from dataclasses import dataclass

from ._store import ApiError, Resource

__all__ = ["Rbac"]

CONNECT = ("exec", "attach", "portforward")


@dataclass(frozen=True)
class Rbac:
    rules: tuple[dict, ...]
    namespace: str
    service_account: str
    token: str  # the ServiceAccount's; any other accepted token is an administrator's

    @property
    def user(self) -> str:
        return f"system:serviceaccount:{self.namespace}:{self.service_account}"

    @staticmethod
    def verb(method: str, name: str | None, sub: str, watch: bool) -> str:
        if sub in CONNECT:
            return "create"
        if method == "GET":
            return "watch" if watch else ("get" if name is not None else "list")
        if method == "DELETE":
            return "delete" if name is not None else "deletecollection"
        return {"POST": "create", "PUT": "update", "PATCH": "patch"}.get(method, method.lower())

    def allows(self, verb: str, group: str, resource: str, namespace: str | None) -> bool:
        if namespace != self.namespace:
            return False
        return any((group in r.get("apiGroups", []) or "*" in r.get("apiGroups", []))
                   and (resource in r.get("resources", []) or "*" in r.get("resources", []))
                   and (verb in r.get("verbs", []) or "*" in r.get("verbs", [])) for r in self.rules)

    def check(self, token: str, method: str, res: Resource, namespace: str | None, name: str | None, sub: str,
              watch: bool) -> None:
        """Raises the 403 the API server answers when the ServiceAccount may not do this."""
        if token != self.token:
            return
        verb = self.verb(method, name, sub, watch)
        resource = f"{res.plural}/{sub}" if sub else res.plural
        if self.allows(verb, res.group, resource, namespace if res.namespaced else None):
            return
        what = f'{resource} "{name}"' if name else resource
        where = f' in the namespace "{namespace}"' if res.namespaced and namespace else " at the cluster scope"
        raise ApiError(403, "Forbidden", f'{what} is forbidden: User "{self.user}" cannot {verb} resource '
                       f'"{resource}" in API group "{res.group}"{where}')

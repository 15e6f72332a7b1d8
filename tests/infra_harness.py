"""Run an infra/ Pulumi program under `pulumi.runtime.set_mocks` and look at what it declared.

    recorded = run(program, config={"runner:cloud": "gcp"})
    ns = recorded.one("kubernetes:core/v1:Namespace")
    assert ns.inputs["metadata"]["name"] == "runner"
    assert recorded.exports["namespace"] == "runner" and recorded.is_secret("kubeconfig")
    for m in recorded.k8s_manifests():
        validate_manifest(m)

Each `run` gets a fresh Mocks object, a fresh event loop and a fresh `contextvars` context, so
the Pulumi runtime's per-context state (root Stack, config, settings) never leaks between tests.
Every registered resource is recorded from the monitor (type token, name, parent URN, provider,
inputs with secrets unwrapped and their paths noted). A resource's outputs are its inputs plus
what a hook for its type token adds (`hooks={token: fn(MockResourceArgs) -> dict}`); its id is
`name + "_id"`. Invokes need a hook in `calls={token: fn(MockCallArgs) -> dict}`; an invoke
without one fails, naming the token.

Stack exports are read from the root `pulumi:pulumi:Stack` component's `outputs` dict, where
`pulumi.export` puts them, and resolved, remembering which were secret.
"""

from __future__ import annotations

import asyncio
import collections.abc
import contextvars
import dataclasses
import enum
import json
import logging
import pathlib
import sys
import threading
import typing
from collections.abc import Callable
from typing import Any

import pulumi

import golden_files
from pulumi.runtime import mocks as _mocks
from pulumi.runtime import rpc, settings
from pulumi.runtime.stack import run_pulumi_func

ROOT = pathlib.Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

GOLDEN = ROOT / "tests" / "golden" / "infra"
K8S_VERSION = "1.31.0"  # kubernetes-validate ships schemas 1.25 to 1.37, offline

__all__ = ["DEFAULT_HOOKS", "GOLDEN", "K8S_VERSION", "MOCK_LB_IP", "Recorded", "Resource", "assert_golden",
           "dummy_k8s_provider", "run", "sdk_argument_problems", "sdk_problems", "tolerates", "validate_manifest"]

Hook = Callable[[_mocks.MockResourceArgs], dict]
CallHook = Callable[[_mocks.MockCallArgs], dict]


def _release_status(args: _mocks.MockResourceArgs) -> dict:
    i = args.inputs
    return {"status": {"name": i.get("name", args.name), "namespace": i.get("namespace", "default"),
                       "chart": i.get("chart"), "version": i.get("version"), "status": "deployed"}}


MOCK_LB_IP = "203.0.113.10"  # TEST-NET-3: what the cloud would assign a LoadBalancer Service


def _service_status(args: _mocks.MockResourceArgs) -> dict:
    if ((args.inputs.get("spec") or {}).get("type")) != "LoadBalancer":
        return {}
    return {"status": {"loadBalancer": {"ingress": [{"ip": MOCK_LB_IP}]}}}


# Provider-computed outputs programs read; `run(hooks=...)` adds to or replaces these.
DEFAULT_HOOKS: dict[str, Hook] = {
    "kubernetes:core/v1:Service": _service_status,
    "random:index/randomPassword:RandomPassword": lambda a: {"result": f"mock-password-{a.name}",
                                                              "bcryptHash": "mock-bcrypt"},
    "random:index/randomString:RandomString": lambda a: {"result": f"mock-string-{a.name}"},
    "kubernetes:helm.sh/v3:Release": _release_status,
}


@dataclasses.dataclass
class Resource:
    """One registered resource, as the engine saw it."""

    type: str
    name: str
    urn: str
    parent: str  # the parent's URN; top-level resources have the Stack's
    provider: str  # "URN::ID" of the explicit provider, "" for the default one
    custom: bool  # False for components
    inputs: dict[str, Any]  # secrets unwrapped; see `secret_paths`
    secret_paths: frozenset[str]  # dotted paths ("stringData", "spec.containers.0.env") sent as secrets
    depends_on: tuple[str, ...] = ()  # URNs of its explicit dependencies (ResourceOptions.depends_on)

    @property
    def parent_type(self) -> str:
        return self.parent.split("::")[2].split("$")[-1] if self.parent else ""

    @property
    def parent_name(self) -> str:
        return self.parent.split("::")[-1] if self.parent else ""

    def is_secret(self, path: str = "") -> bool:
        """Whether the input at dotted `path` (or an enclosing one) was sent as a secret; with no
        path, whether any input was."""
        if not path:
            return bool(self.secret_paths)
        parts = path.split(".")
        return any(".".join(parts[:n]) in self.secret_paths for n in range(1, len(parts) + 1))


@dataclasses.dataclass
class Recorded:
    """What a program declared: its resources, its stack exports, the engine log."""

    resources: list[Resource]
    exports: dict[str, Any]
    secret_exports: frozenset[str]
    logs: list[logging.LogRecord]

    def of_type(self, token: str) -> list[Resource]:
        return [r for r in self.resources if r.type == token]

    def one(self, token: str, name: str | None = None) -> Resource:
        """The single resource of `token` (and logical `name`, when given); AssertionError otherwise."""
        found = [r for r in self.of_type(token) if name is None or r.name == name]
        assert len(found) == 1, f"expected one {token} {name or ''}, found {[r.name for r in found]}"
        return found[0]

    def children_of(self, parent: Resource) -> list[Resource]:
        return [r for r in self.resources if r.parent == parent.urn]

    def is_secret(self, export: str) -> bool:
        """Whether stack export `export` is a Pulumi secret; KeyError if it was not exported."""
        if export not in self.exports:
            raise KeyError(f"no stack export {export!r}; exports are {sorted(self.exports)}")
        return export in self.secret_exports

    def k8s_manifests(self) -> list[dict[str, Any]]:
        """The Kubernetes objects declared through typed `kubernetes:*` resources (not Helm
        releases, not providers), rebuilt as manifests, sorted by kind, namespace, name."""
        out = []
        for r in self.resources:
            if not r.type.startswith("kubernetes:") or r.type.startswith("kubernetes:helm.sh/"):
                continue
            group_version, kind = r.type.split(":")[1:]
            api_version = group_version.removeprefix("core/")
            body = {k: v for k, v in r.inputs.items() if k not in ("apiVersion", "kind")}
            out.append({"apiVersion": r.inputs.get("apiVersion", api_version), "kind": r.inputs.get("kind", kind),
                        **body})

        def key(m: dict) -> tuple:
            meta = m.get("metadata") or {}
            return m["kind"], meta.get("namespace", ""), meta.get("name", "")

        return sorted(out, key=key)


class _Mocks(pulumi.runtime.Mocks):
    def __init__(self, hooks: dict[str, Hook], calls: dict[str, CallHook]):
        self.hooks = hooks
        self.calls = calls

    def new_resource(self, args: _mocks.MockResourceArgs) -> tuple[str, dict]:
        outputs = dict(args.inputs)
        hook = self.hooks.get(args.typ)
        if hook is not None:
            outputs.update(hook(args))
        return f"{args.name}_id", outputs

    def call(self, args: _mocks.MockCallArgs) -> tuple[dict, list]:
        hook = self.calls.get(args.token)
        if hook is None:
            raise KeyError(f"no mock for invoke {args.token}; pass calls={{{args.token!r}: fn}} to run()")
        return hook(args), []


class _Monitor(_mocks.MockMonitor):
    """The mock monitor, also recording what `Mocks.new_resource` is not told (parent, URN)."""

    def __init__(self, mocks: _Mocks):
        super().__init__(mocks)
        self.recorded: list[Resource] = []
        self._lock = threading.Lock()  # registrations arrive on executor threads

    def RegisterResource(self, request):  # noqa: N802 - the gRPC method's name
        response = super().RegisterResource(request)
        if request.type != "pulumi:pulumi:Stack":
            self._record(request, request.object, response.urn, bool(request.custom))
        return response

    def ReadResource(self, request):  # noqa: N802 - the gRPC method's name
        response = super().ReadResource(request)
        self._record(request, request.properties, response.urn, True)
        return response

    def _record(self, request, properties, urn: str, custom: bool) -> None:
        secrets: set[str] = set()
        inputs = _unwrap(rpc.deserialize_properties(properties), "", secrets)
        with self._lock:
            self.recorded.append(Resource(request.type, request.name, urn, request.parent, request.provider,
                                          custom, inputs, frozenset(secrets),
                                          tuple(getattr(request, "dependencies", ()) or ())))


def _unwrap(value: Any, path: str, secrets: set[str]) -> Any:
    """`value` without RPC secret wrappers (noting their paths), integral floats back to ints
    (protobuf numbers are doubles)."""
    if rpc.is_rpc_secret(value):
        secrets.add(path)
        return _unwrap(rpc.unwrap_rpc_secret(value), path, secrets)
    if isinstance(value, dict):
        return {k: _unwrap(v, f"{path}.{k}" if path else str(k), secrets) for k, v in value.items()}
    if isinstance(value, list):
        return [_unwrap(v, f"{path}.{i}" if path else str(i), secrets) for i, v in enumerate(value)]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


class _ListHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def run(program: Callable[[], Any], *, config: dict[str, Any] | None = None,
        secret_config: dict[str, Any] | None = None, hooks: dict[str, Hook] | None = None,
        calls: dict[str, CallHook] | None = None, project: str = "runner", stack: str = "test") -> Recorded:
    """Run `program()` as a Pulumi program (an update, not a preview) and return what it declared.

    `config` keys are full ("runner:cloud", "gcp:project"); non-string values are JSON-encoded,
    as the CLI stores them. `secret_config` is the same, marked secret. What the program raises
    (`pulumi.RunError`, ValueError, ...) propagates once outstanding registrations finished.
    """
    values = {**(config or {}), **(secret_config or {})}
    values = {k: v if isinstance(v, str) else json.dumps(v) for k, v in values.items()}
    mocks = _Mocks({**DEFAULT_HOOKS, **(hooks or {})}, dict(calls or {}))
    monitor = _Monitor(mocks)
    handler = _ListHandler()
    logger = logging.getLogger(f"infra_harness.{id(handler)}")
    logger.addHandler(handler)
    logger.propagate = False
    loop = asyncio.new_event_loop()

    def body() -> tuple[dict[str, Any], frozenset[str]]:
        asyncio.set_event_loop(loop)
        settings.ROOT.set(None)  # set_mocks makes a new root Stack only when there is none
        pulumi.runtime.set_all_config(values, list(secret_config or {}))
        pulumi.runtime.set_mocks(mocks, project=project, stack=stack, preview=False, logger=logger, monitor=monitor)
        loop.run_until_complete(run_pulumi_func(program))
        return loop.run_until_complete(_resolve(dict(settings.get_root_resource().outputs)))

    try:
        exports, secret = contextvars.copy_context().run(body)
    finally:
        loop.run_until_complete(loop.shutdown_default_executor())
        loop.close()
        asyncio.set_event_loop(None)
        logger.removeHandler(handler)
    return Recorded(list(monitor.recorded), exports, secret, handler.records)


async def _resolve(outputs: dict[str, Any]) -> tuple[dict[str, Any], frozenset[str]]:
    values, secret = {}, set()
    for key, value in outputs.items():
        out = pulumi.Output.from_input(value)
        values[key] = _unwrap(await out.future(), "", set())
        if await out.is_secret():
            secret.add(key)
    return values, frozenset(secret)


def dummy_k8s_provider(name: str = "k8s") -> Any:
    """A `pulumi_kubernetes.Provider` for a cluster that does not exist; call it inside the program."""
    import pulumi_kubernetes as k8s

    return k8s.Provider(name, kubeconfig=pulumi.Output.secret("apiVersion: v1\nkind: Config\n"))


def tolerates(tolerations: list[dict[str, Any]], taint: str) -> bool:
    """Kubernetes' rule: does any of `tolerations` match the taint `key=value:Effect`?"""
    key_value, effect = taint.rsplit(":", 1)
    key, value = key_value.split("=", 1)
    for t in tolerations:
        if t.get("effect") not in (None, "", effect):
            continue
        if t.get("operator", "Equal") == "Exists" and t.get("key") in (None, "", key):
            return True
        if t.get("operator", "Equal") == "Equal" and t.get("key") == key and t.get("value") == value:
            return True
    return False


# --- arguments against the installed SDK --------------------------------------------------------
# Mocks accept any input; a misspelled argument or an enum value the provider does not know would
# only fail on a real `pulumi up`. Each recorded input (camelCase, as sent) must be a property of
# the resource's `XArgs` input type, recursively, and a string where the SDK has an enum one of
# its values.


def sdk_problems(recorded: Recorded, sdk: Any) -> list[str]:
    """What `sdk_argument_problems` finds in every resource of package `sdk` (pulumi_gcp, pulumi_aws,
    pulumi_azure_native) that `recorded` holds. Type tokens are `PKG:module[/file]:Name`; the
    arguments class is `sdk.<module>.<Name>Args`, or `<Name>InitArgs` where an input type of the
    same module took that name (pulumi_aws.s3.BucketVersioning)."""
    prefix = sdk.__name__.removeprefix("pulumi_").replace("_", "-") + ":"
    problems: list[str] = []
    for r in recorded.resources:
        if not r.type.startswith(prefix):
            continue
        _, module, name = r.type.split(":")
        package = getattr(sdk, module.split("/")[0])
        args_cls = getattr(package, f"{name}InitArgs", None) or getattr(package, f"{name}Args")
        problems += sdk_argument_problems(r.inputs, args_cls, f"{r.type} {r.name}")
    return problems


def sdk_argument_problems(inputs: dict[str, Any], args_cls: type, where: str) -> list[str]:
    """One line per input of `inputs` that `args_cls` (an SDK `XArgs` class) does not have, or
    whose string is not a value of the SDK's enum there."""
    problems: list[str] = []
    _check_sdk(inputs, args_cls, where, problems)
    return problems


def _input_type(tp):
    """The @pulumi.input_type class inside an annotation (Optional[Input[Union[XArgs, XArgsDict]]])."""
    if isinstance(tp, type) and pulumi._types.is_input_type(tp):
        return tp
    for arg in typing.get_args(tp):
        found = _input_type(arg)
        if found is not None:
            return found
    return None


def _enum(tp):
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return tp
    for arg in typing.get_args(tp):
        found = _enum(arg)
        if found is not None:
            return found
    return None


def _check_sdk(value, tp, path, problems):
    origin = typing.get_origin(_strip(tp))
    if isinstance(value, dict):
        if origin in (dict, typing.Mapping, collections.abc.Mapping):
            item = typing.get_args(_strip(tp))[1]
            for k, v in value.items():
                _check_sdk(v, item, f"{path}.{k}", problems)
            return
        cls = _input_type(tp)
        if cls is None:
            return
        types = pulumi._types.input_type_types(cls)
        for k, v in value.items():
            if k not in types:
                problems.append(f"{path}.{k} is not an argument of {cls.__name__}")
            else:
                _check_sdk(v, types[k], f"{path}.{k}", problems)
    elif isinstance(value, list):
        args = typing.get_args(_strip(tp))
        for i, v in enumerate(value):
            _check_sdk(v, args[0] if args else None, f"{path}.{i}", problems)
    elif isinstance(value, str) and tp is not None:
        kind = _enum(tp)
        if kind is not None and value not in {e.value for e in kind}:
            problems.append(f"{path}={value!r} is not one of {kind.__name__}: {[e.value for e in kind]}")


def _strip(tp):
    """Optional[Input[X]] -> X, as far as a single non-None, non-Awaitable member goes."""
    while True:
        args = [a for a in typing.get_args(tp) if a is not type(None)
                and typing.get_origin(a) is not collections.abc.Awaitable
                and a is not pulumi.Output and typing.get_origin(a) is not pulumi.Output]
        if typing.get_origin(tp) is typing.Union and len(args) == 1:
            tp = args[0]
            continue
        return tp



def validate_manifest(manifest: dict[str, Any], version: str = K8S_VERSION) -> None:
    """Check `manifest` against the official Kubernetes JSON schema, strictly (no unknown fields).

    Raises AssertionError naming the object, the field path and the schema's complaint.
    """
    import kubernetes_validate

    try:
        kubernetes_validate.validate(manifest, version, strict=True)
    except kubernetes_validate.ValidationError as e:
        where = ".".join(str(p) for p in e.absolute_path) or "(top level)"
        name = (manifest.get("metadata") or {}).get("name")
        raise AssertionError(f"{manifest.get('kind')} {name}: {where}: {e.message}") from None
    except kubernetes_validate.SchemaNotFoundError as e:
        raise AssertionError(e.message) from None


def assert_golden(name: str, obj: Any) -> None:
    """Compare `obj` as YAML with tests/golden/infra/<name>.yaml (see golden_files)."""
    golden_files.assert_golden(GOLDEN, name, obj)

"""The stand-in's KEDA: ScaledObjects with redis-streams triggers scale their apps/v1 Deployment.

On a cluster two controllers do this: KEDA's operator, which polls the triggers every
pollingInterval, moves the target between 0 and its minimum itself and keeps the ScaledObject's
status; and the HPA it creates, which moves it between non-zero counts on the metrics KEDA
serves. Here both are one thread, on the ScaledObject's pollingInterval (the HPA's own 15 s sync
would make every test wait), with the rules they apply:

- metric, per trigger, read with redis-py on the unix socket of the loopback service that the
  trigger's `address` resolves to (from KEDA's namespace, `keda`: a bare Service name does not
  resolve, as it would not for KEDA's operator): `lagCount` -> the consumer group's `lag` from
  XINFO GROUPS (0 without the stream; the stream's XLEN while the group does not exist; a NULL
  lag reads 0, as go-redis reads it), else `pendingEntriesCount` -> XPENDING's count (0 without
  stream or group), and without a `consumerGroup`, `streamLength` -> XLEN. KEDA's defaults: a
  target of 5, `activationLagCount` 0 for every kind, databaseIndex 0.
- active: any trigger's metric above its activation. lastActiveTime is the last poll that was.
- recommendation: the largest ceil(metric / target), clamped to [max(minReplicaCount, 1),
  maxReplicaCount] (defaults 0 and 100).
- KEDA: at 0 replicas and active, the recommendation at once; with minReplicaCount 0 and
  inactive for cooldownPeriod (default 300 s; at once when it never was active), down to 0; at
  0 and inactive, up to minReplicaCount.
- HPA: up to the recommendation at once; down only to the largest recommendation of the last
  advanced.horizontalPodAutoscalerConfig.behavior.scaleDown.stabilizationWindowSeconds
  (default 300 s), the replicas found when KEDA first saw the target counting as one.
- A count someone else set (the scale subresource, a patch) is not undone before that window
  has passed since they set it, by the HPA rule or by the cooldown. A real HPA counts only its
  own recommendations and would undo it at its next sync: this is the stand-in's rule, so that a
  client that scales up ahead of KEDA's next poll is not fought (docs/kubernetes.md).

Status: conditions Ready (False, ScaledObjectCheckFailed, with the reason, when the target, an
address, a TriggerAuthentication or its Secret cannot be used, or Redis refuses) and Active, and
lastActiveTime. Not modelled: other trigger types, ScaledJobs, fallback, pausing annotations,
the HPA's tolerance and scale policies, restoring replicas when the ScaledObject is deleted.
"""

from __future__ import annotations

import base64
import logging
import math
import threading
import time
from dataclasses import dataclass, field

import redis

from ._loopback import LoopbackService, LoopbackServices
from ._store import ApiError, Store, now

__all__ = ["Keda"]

log = logging.getLogger(__name__)
KEDA_NAMESPACE = "keda"  # where KEDA's operator runs: names in trigger addresses resolve from here
DEFAULTS = {"pollingInterval": 30, "cooldownPeriod": 300, "minReplicaCount": 0, "maxReplicaCount": 100}
DEFAULT_WINDOW = 300


class _CheckFailed(Exception):
    """A ScaledObject KEDA cannot act on: its Ready condition says why."""


@dataclass
class _Metric:
    value: int
    target: int
    activation: int


@dataclass
class _State:
    """What KEDA and the HPA remember of one ScaledObject between polls."""

    next_poll: float = 0.0
    last_active: float | None = None
    written: int | None = None  # the replicas this controller last saw or set on the target
    history: list[tuple[float, int, bool]] = field(default_factory=list)  # (when, replicas, set by someone else)

    def observe(self, current: int, at: float, window: float) -> None:
        """Notes the target's replicas: the first sight and every change made by someone else enter the window."""
        if self.written is None or current != self.written:
            self.history.append((at, current, self.written is not None))
        self.written = current
        self.history = [h for h in self.history if h[0] > at - window]

    def highest(self, external_only: bool = False) -> int:
        return max((n for _, n, external in self.history if external or not external_only), default=0)


class Keda:
    def __init__(self, store: Store, services: LoopbackServices):
        self.store, self.services = store, services
        self._states: dict[str, _State] = {}  # ScaledObject uid -> its state
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="kube-standin-keda", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self.thread.is_alive():
            self.thread.join(timeout=10)

    def _res(self, group: str, plural: str):
        return self.store.resource(group, plural)

    def _loop(self) -> None:
        while not self._stop.wait(0.1):
            live = set()
            for so in self.store.list(self._res("keda.sh", "scaledobjects")):
                uid = so["metadata"]["uid"]
                live.add(uid)
                state = self._states.setdefault(uid, _State())
                if so["metadata"].get("deletionTimestamp") or time.monotonic() < state.next_poll:
                    continue
                try:
                    self._poll(so, state)
                except ApiError:
                    pass  # raced with a client's write or delete: the next poll looks again
                except Exception:  # a stand-in bug: say so, and keep scaling the others
                    log.exception("kube-standin KEDA: polling %s/%s failed", so["metadata"]["namespace"],
                                  so["metadata"]["name"])
            for uid in set(self._states) - live:
                del self._states[uid]

    # one poll

    def _poll(self, so: dict, state: _State) -> None:
        at = time.monotonic()
        state.next_poll = at + 1.0  # until the ScaledObject's own interval can be read
        try:
            spec = _numbers(so["spec"])
            state.next_poll = at + max(0.1, spec["pollingInterval"])
            target = self._target(so)
            metrics = [self._metric(so, i, t) for i, t in enumerate(so["spec"].get("triggers") or [])]
        except _CheckFailed as e:
            self._status(so, ("False", "ScaledObjectCheckFailed", str(e)),
                         ("Unknown", "UnknownState", "ScaledObject check failed"))
            return
        active = any(m.value > m.activation for m in metrics)
        if active:
            state.last_active = at
            so.setdefault("status", {})["lastActiveTime"] = now()
        current = target["spec"].get("replicas", 1)
        state.observe(current, at, spec["window"])
        desired = self._desired(spec, state, current, metrics, active, at)
        if desired != current:
            self.store.patch(self._res("apps", "deployments"), target["metadata"]["namespace"],
                             target["metadata"]["name"], "application/merge-patch+json",
                             {"spec": {"replicas": desired}})
            state.written = desired
        self._status(so, ("True", "ScaledObjectReady", "ScaledObject is defined correctly and is ready for scaling"),
                     ("True", "ScalerActive", "Scaling is performed because triggers are active") if active else
                     ("False", "ScalerNotActive", "Scaling is not performed because triggers are not active"))

    @staticmethod
    def _desired(spec: dict, state: _State, current: int, metrics: list[_Metric], active: bool, at: float) -> int:
        """The replicas KEDA and its HPA settle on this poll (the module docstring's rules); an HPA
        recommendation made here enters the stabilization window."""
        low, high = spec["minReplicaCount"], spec["maxReplicaCount"]
        wanted = max((math.ceil(m.value / m.target) for m in metrics), default=0)
        recommendation = min(max(wanted, low, 1), high)
        kept = state.highest(external_only=True)  # what someone else set within the window
        idle = state.last_active is None or at - state.last_active >= spec["cooldownPeriod"]
        if not active and (current == 0 or (idle and low == 0)):
            return max(low, min(current, kept))  # KEDA's own moves: to zero, or from zero up to minReplicaCount
        state.history.append((at, recommendation, False))
        if current == 0 or recommendation > current:
            return recommendation  # scale up at once
        return max(min(current, state.highest(), high), recommendation)

    def _status(self, so: dict, ready: tuple[str, str, str], active: tuple[str, str, str]) -> None:
        status = dict(so.get("status") or {})
        status["conditions"] = [{"type": kind, "status": s, "reason": reason, "message": message}
                                for kind, (s, reason, message) in (("Ready", ready), ("Active", active))]
        self.store.update_status(self._res("keda.sh", "scaledobjects"), so["metadata"]["namespace"],
                                 so["metadata"]["name"], status)

    # what a ScaledObject refers to

    def _target(self, so: dict) -> dict:
        ref = so["spec"].get("scaleTargetRef") or {}
        kind, api_version = ref.get("kind", "Deployment"), ref.get("apiVersion", "apps/v1")
        if (api_version, kind) != ("apps/v1", "Deployment"):
            raise _CheckFailed(f"the stand-in's KEDA scales apps/v1 Deployments only, not {api_version} {kind}")
        target = self.store.find(self._res("apps", "deployments"), so["metadata"]["namespace"], ref.get("name", ""))
        if target is None:
            raise _CheckFailed("ScaledObject doesn't have correct scaleTargetRef specification: "
                               f'deployments.apps "{ref.get("name", "")}" not found')
        return target

    def _metric(self, so: dict, index: int, trigger: dict) -> _Metric:
        label = f'trigger {trigger.get("name") or index}'
        if trigger.get("type") != "redis-streams":
            raise _CheckFailed(f"{label}: type {trigger.get('type')!r} is not implemented by the stand-in's KEDA "
                               "(redis-streams only)")
        meta = trigger.get("metadata") or {}
        unsupported = sorted(k for k in meta if k.endswith("FromEnv")) + \
            (["enableTLS"] if str(meta.get("enableTLS", "false")).lower() == "true" else [])
        if unsupported:
            raise _CheckFailed(f"{label}: {', '.join(unsupported)} is not implemented by the stand-in's KEDA")
        stream, group = meta.get("stream"), meta.get("consumerGroup")
        if not stream:
            raise _CheckFailed(f"{label}: missing redis stream name")
        try:
            lag, activation = int(meta.get("lagCount", 0)), int(meta.get("activationLagCount", 0))
            if group and lag:
                kind, target = _lag, lag
            elif group:
                kind, target = _pending, int(meta.get("pendingEntriesCount", 5))
            else:
                kind, target = _length, int(meta.get("streamLength", 5))
            db = int(meta.get("databaseIndex", 0))
        except ValueError as e:
            raise _CheckFailed(f"{label}: {e}") from None
        if target <= 0:
            raise _CheckFailed(f"{label}: the target must be a positive count")
        service = self._service(label, meta)
        try:
            with redis.Redis(unix_socket_path=service.socket, db=db,
                             decode_responses=True, socket_timeout=2, socket_connect_timeout=2,
                             **self._credentials(so, trigger)) as client:
                value = kind(client, stream, group)
        except redis.RedisError as e:
            raise _CheckFailed(f"{label}: {service.name}.{service.namespace} ({service.socket}): {e}") from None
        return _Metric(value, target, activation)

    def _service(self, label: str, meta: dict) -> LoopbackService:
        address = meta.get("address") or f"{meta.get('host', '')}:{meta.get('port', '')}"
        host, _, port = address.rpartition(":")
        service = self.services.resolve(host, int(port), KEDA_NAMESPACE) if port.isdigit() else None
        if service is None:
            known = ", ".join(self.services.known(KEDA_NAMESPACE)) or "none"
            raise _CheckFailed(f"{label}: address {address!r} is not a loopback service of the stand-in, as KEDA "
                               f"resolves it from namespace {KEDA_NAMESPACE!r} (services= gives: {known})")
        return service

    def _credentials(self, so: dict, trigger: dict) -> dict[str, str]:
        """username/password from the trigger's (Cluster)TriggerAuthentication secretTargetRef."""
        ref = trigger.get("authenticationRef")
        if not ref:
            return {}
        kind = ref.get("kind") or "TriggerAuthentication"
        cluster = kind == "ClusterTriggerAuthentication"
        auth = self.store.find(self._res("keda.sh", "clustertriggerauthentications" if cluster else
                                         "triggerauthentications"), "" if cluster else so["metadata"]["namespace"],
                               ref.get("name", ""))
        if auth is None:
            raise _CheckFailed(f'error getting triggerAuth: {kind} "{ref.get("name", "")}" not found')
        secrets_ns = KEDA_NAMESPACE if cluster else so["metadata"]["namespace"]
        params = {}
        for target in (auth.get("spec") or {}).get("secretTargetRef") or []:
            secret = self.store.find(self._res("", "secrets"), secrets_ns, target.get("name", ""))
            data = (secret or {}).get("data") or {}
            if target.get("key") not in data:
                raise _CheckFailed(f'{kind} "{ref["name"]}": secret {secrets_ns}/{target.get("name")} has no key '
                                   f'{target.get("key")!r}' if secret else
                                   f'{kind} "{ref["name"]}": secret {secrets_ns}/{target.get("name")} not found')
            params[target.get("parameter")] = base64.b64decode(data[target["key"]]).decode()
        return {k: v for k, v in params.items() if k in ("username", "password")}


def _numbers(spec: dict) -> dict[str, float]:
    """The ScaledObject's counts and durations, with KEDA's and the HPA's defaults."""
    window = ((((spec.get("advanced") or {}).get("horizontalPodAutoscalerConfig") or {}).get("behavior") or {})
              .get("scaleDown") or {}).get("stabilizationWindowSeconds", DEFAULT_WINDOW)
    try:
        numbers = {k: float(spec.get(k, default)) for k, default in DEFAULTS.items()} | {"window": float(window)}
    except (TypeError, ValueError) as e:
        raise _CheckFailed(f"ScaledObject spec: {e}") from None
    return numbers | {k: int(numbers[k]) for k in ("minReplicaCount", "maxReplicaCount")}


# the three metrics, as KEDA's redis-streams scaler reads them

def _missing(e: redis.ResponseError) -> bool:
    text = str(e)
    return "no such key" in text.lower() or text.startswith("NOGROUP")


def _lag(client: redis.Redis, stream: str, group: str) -> int:
    try:
        groups = client.xinfo_groups(stream)
    except redis.ResponseError as e:
        if _missing(e):
            return 0
        raise
    for g in groups:
        if g["name"] == group:
            return int(g.get("lag") or 0)
    return client.xlen(stream)


def _pending(client: redis.Redis, stream: str, group: str) -> int:
    try:
        return int(client.xpending(stream, group)["pending"])
    except redis.ResponseError as e:
        if _missing(e):
            return 0
        raise


def _length(client: redis.Redis, stream: str, group: str | None) -> int:
    return client.xlen(stream)

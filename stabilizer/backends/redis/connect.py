"""Build a redis.asyncio client for ``redis_url``: standalone, Cluster or Sentinel."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from stabilizer.config import WebSocketConfig
from stabilizer.errors import ConfigError


def client_for(config: WebSocketConfig) -> tuple[Redis | RedisCluster, list[Any]]:
    """A client for config.redis_url, and the other clients it made that must be closed
    with it (a Sentinel's connections)."""
    url = config.redis_url
    assert url is not None
    if url.startswith("redis+sentinel://"):
        return _sentinel_client(config, url)
    if config.redis_cluster:
        # per node; RedisCore.call keeps the calls in flight below this
        return RedisCluster.from_url(url, socket_connect_timeout=config.op_timeout,
                                     max_connections=config.redis_pool_size + 8), []
    # A blocking pool: a burst of connects waits for a connection (bounded by op_timeout)
    # instead of failing with "Too many connections".
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=config.redis_pool_size,
        timeout=config.op_timeout,
        socket_connect_timeout=config.op_timeout,
        socket_timeout=None,
        # one immediate retry: a pooled connection that died with a Redis restart is
        # replaced transparently; op_timeout still bounds the whole call
        retry=Retry(NoBackoff(), 1),
        health_check_interval=0,
    )
    return Redis.from_pool(pool), []


def _sentinel_client(config: WebSocketConfig, url: str) -> tuple[Redis, list[Any]]:
    """``redis+sentinel://[:password@]host:port[,host:port...]/service[/db]``."""
    from redis.asyncio.sentinel import Sentinel

    parts = urlsplit(url)
    password = parts.password
    hosts = []
    for item in parts.netloc.rsplit("@", 1)[-1].split(","):
        host, _, port = item.rpartition(":")
        hosts.append((host or "127.0.0.1", int(port or 26379)))
    path = [segment for segment in parts.path.split("/") if segment]
    if not path:
        raise ConfigError("redis+sentinel:// URLs need the service name: .../mymaster[/db]")
    service, db = path[0], int(path[1]) if len(path) > 1 else 0
    sentinel = Sentinel(  # type: ignore[no-untyped-call]  # redis-py lacks hints here
        hosts, socket_timeout=config.op_timeout,
        sentinel_kwargs={"socket_timeout": config.op_timeout},
    )
    master: Redis = sentinel.master_for(service, db=db, password=password,
                                        socket_connect_timeout=config.op_timeout,
                                        retry=Retry(NoBackoff(), 1))
    return master, list(sentinel.sentinels)

"""Build a redis.asyncio client for ``redis_url``: standalone, Cluster or Sentinel."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import parse_qs, unquote

from redis.asyncio import BlockingConnectionPool, ConnectionPool, Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import Connection, SSLConnection, parse_url
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from stabilizer.config import WebSocketConfig
from stabilizer.errors import ConfigError

#: Every command is sent once. redis-py would send a command again after a connection error,
#: also one raised while reading its reply, after the command ran: a PUBLISH or a script
#: that publishes would then deliver twice (tests/integration/test_lost_reply.py; the
#: Cluster client retried three times by default). A call that fails on the wire is
#: BackendUnavailable, as any other. A connection the server closed (a restart, a failover)
#: is replaced before anything is sent on it: by the pool when it is taken (standalone,
#: Sentinel), by the connection itself when it sends (Cluster, below).
NO_RETRY: Final = Retry(NoBackoff(), 0)


class _CheckedConnection(Connection):
    """A Cluster node's connection. redis-py's Cluster client takes a node's free
    connection as it is (no check at checkout), so this one checks before each send: one
    the server closed while it waited in the pool (its reader saw the end of the stream,
    or the link failed) connects again first, so the call is not lost on a link nothing
    was sent on."""

    async def send_packed_command(self, command: bytes | str | Iterable[bytes],
                                  check_health: bool = True) -> None:
        reader = self._reader
        if reader is not None and (reader.at_eof() or reader.exception() is not None):
            await self.disconnect(nowait=True)
        await super().send_packed_command(command, check_health)


class _CheckedSSLConnection(_CheckedConnection, SSLConnection):
    """_CheckedConnection over TLS (a rediss:// URL): the check, then SSLConnection's."""


_CHECKED: Final[dict[type[Connection], type[Connection]]] = {
    Connection: _CheckedConnection, SSLConnection: _CheckedSSLConnection,
}


def _checked_at_checkout() -> dict[str, Any]:
    """Pool options under which redis-py checks a pooled connection when it is taken (and
    replaces one the server closed). redis-py 8 skips that check while its maintenance
    notifications (server pushes announcing a planned failover) are on, and "auto", its
    default, counts as on; with no retry to hide it, every connection a Redis restart
    closed would fail its next call. A redis-py without those notifications always
    checks."""
    try:
        from redis.maint_notifications import MaintNotificationsConfig
    except ImportError:  # a redis-py without maintenance notifications
        return {}
    return {"maint_notifications_config": MaintNotificationsConfig(enabled=False)}


def client_for(config: WebSocketConfig) -> tuple[Redis | RedisCluster, list[Any]]:
    """A client for config.redis_url, and the other clients it made that must be closed
    with it (a Sentinel's connections).

    Raises:
        ConfigError: the URL does not parse (check_url).
    """
    url = config.redis_url
    assert url is not None
    check_url(url)
    if url.startswith("redis+sentinel://"):
        return _sentinel_client(config, url)
    if config.redis_cluster:
        return _cluster_client(config, url), []
    # A blocking pool: a burst of connects waits for a connection (bounded by op_timeout)
    # instead of failing with "Too many connections".
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=config.redis_pool_size,
        timeout=config.op_timeout,
        socket_connect_timeout=config.op_timeout,
        socket_timeout=None,
        retry=NO_RETRY,
        health_check_interval=0,
        **_checked_at_checkout(),
    )
    return Redis.from_pool(pool), []


def _cluster_client(config: WebSocketConfig, url: str) -> RedisCluster:
    # max_connections is per node; RedisCore.call keeps the calls in flight below this
    client = RedisCluster.from_url(url, socket_connect_timeout=config.op_timeout,
                                   max_connections=config.redis_pool_size + 8,
                                   retry=NO_RETRY)
    # redis-py takes no connection class for a Cluster: the nodes it knows (the one of the
    # URL) and those it will learn of are built from these arguments
    nodes = client.nodes_manager
    checked = _CHECKED.get(nodes.connection_kwargs.get("connection_class", Connection))
    if checked is not None:
        nodes.connection_kwargs["connection_class"] = checked
        for node in nodes.startup_nodes.values():
            node.connection_class = checked
    return client


def check_url(url: str) -> None:
    """Parse `url` as client_for would, without connecting.

    Raises:
        ConfigError: a redis+sentinel:// URL without a service name or with a bad port,
            or a URL redis-py would not accept (an unknown scheme, a bad port, ...).
    """
    if url.startswith("redis+sentinel://"):
        sentinel_address(url)
        return
    try:
        parse_url(url)
    except ValueError as exc:
        raise _unparsable("redis_url", url, exc) from exc
    try:  # the parser passes keys it does not know on to the connection (made, not opened)
        ConnectionPool.from_url(url).make_connection()  # type: ignore[no-untyped-call]
    except TypeError as exc:
        raise ConfigError(f"redis_url has an option redis-py does not know: {exc}") from exc


def _unparsable(what: str, url: str, exc: ValueError) -> ConfigError:
    """The error for a URL that does not parse. The parser's own words name what it found
    where a port should be, which is a password that holds a '/', '#' or '?' (the URL
    ends its authority there): with credentials in the URL, they are left out."""
    if "@" not in url:
        return ConfigError(f"{what} does not parse: {exc}")
    return ConfigError(f"{what} does not parse; percent-encode any '@', ':', '/', '#' or "
                       "'?' in its user name or password (as urllib.parse.quote(password, "
                       "safe='') does)")


@dataclass(frozen=True, slots=True)
class SentinelAddress:
    """What a redis+sentinel:// URL names: the sentinels, the service and db, the master's
    credentials and the sentinels' own."""

    hosts: tuple[tuple[str, int], ...]
    service: str
    db: int = 0
    username: str | None = None
    password: str | None = None
    sentinel_username: str | None = None
    sentinel_password: str | None = None


#: The query parameters a redis+sentinel:// URL may carry: the sentinels' own credentials.
_SENTINEL_QUERY: Final = frozenset({"sentinel_username", "sentinel_password"})
_SENTINEL_PARAMETER: Final = re.compile(r"[?&]sentinel_(?:username|password)=[^&]*")


def sentinel_address(url: str) -> SentinelAddress:
    """Parse ``redis+sentinel://[user:password@]host[:port][,host[:port]...]/service[/db]``
    with ``?sentinel_username=...&sentinel_password=...`` for sentinels that require AUTH.
    The credentials are percent-decoded, as in a redis:// URL; an IPv6 host is bracketed.

    Raises:
        ConfigError: no service name, a port or db that is not a number, an unclosed
            bracket, or a query parameter other than those two (or one given twice).
    """
    try:
        # split by hand: urlsplit's checks of bracketed hosts differ between Python
        # releases (3.11.2 refuses a list of them), and a list of hosts is no one netloc
        rest = url.partition("://")[2]
        cut = min((at for at in map(rest.find, "/?#") if at >= 0), default=len(rest))
        netloc, (path_text, _, query_text) = rest[:cut], rest[cut:].partition("#")[0].partition("?")
        # credentials cut short by a delimiter ('@' in a parameter's value is no sign)
        if "@" in _SENTINEL_PARAMETER.sub("", url) and "@" not in netloc:
            raise ValueError("the credentials hold a delimiter")
        userinfo, at, host_list = netloc.rpartition("@")
        username, colon, password = userinfo.partition(":")
        hosts = tuple(_host_port(item) for item in host_list.split(","))
        path = [segment for segment in path_text.split("/") if segment]
        if not path:
            raise ConfigError("redis+sentinel:// URLs need the service name: .../mymaster[/db]")
        db = int(path[1]) if len(path) > 1 else 0
    except ValueError as exc:
        if isinstance(exc, ConfigError):
            raise
        raise _unparsable("redis+sentinel:// URL", url, exc) from exc
    query = parse_qs(query_text, keep_blank_values=True)
    unknown = sorted(set(query) - _SENTINEL_QUERY)
    if unknown or any(len(values) > 1 for values in query.values()):
        raise ConfigError(f"redis+sentinel:// URL query takes sentinel_username and "
                          f"sentinel_password once each, not {sorted(query)}")
    return SentinelAddress(hosts, path[0], db, _decoded(username if at else None),
                           _decoded(password if colon else None),
                           query.get("sentinel_username", [None])[0] or None,
                           query.get("sentinel_password", [None])[0] or None)


def _host_port(item: str) -> tuple[str, int]:
    """One ``host[:port]`` of the list (``[v6 address][:port]`` for IPv6), port 26379 when
    none is given."""
    if item.startswith("["):
        host, bracket, port = item[1:].partition("]")
        if not bracket or (port and not port.startswith(":")):
            raise ValueError(f"bad IPv6 sentinel address {item!r}")
        port = port[1:]
    else:
        host, _, port = item.rpartition(":") if ":" in item else (item, "", "")
    return host or "127.0.0.1", int(port or 26379)


def _decoded(value: str | None) -> str | None:
    """A URL's username or password as redis:// gives it to redis-py (None when empty)."""
    return unquote(value) if value else None


def _sentinel_client(config: WebSocketConfig, url: str) -> tuple[Redis, list[Any]]:
    from redis.asyncio.sentinel import Sentinel

    address = sentinel_address(url)
    # redis-py asks the sentinels in turn for the master (at every new connection) and puts
    # first only one that answered: each gets a share of one call's op_timeout, so that a
    # sentinel that accepts and never answers, listed first, leaves time to ask the others
    per_sentinel = config.op_timeout / (len(address.hosts) + 1)
    sentinel_kwargs: dict[str, Any] = {
        "socket_timeout": per_sentinel, "socket_connect_timeout": per_sentinel,
        "retry": NO_RETRY, "username": address.sentinel_username,
        "password": address.sentinel_password,
    }
    sentinel = Sentinel(  # type: ignore[no-untyped-call]  # redis-py lacks hints here
        list(address.hosts), socket_timeout=config.op_timeout,
        sentinel_kwargs=sentinel_kwargs,
    )
    master: Redis = sentinel.master_for(address.service, db=address.db,
                                        username=address.username, password=address.password,
                                        socket_connect_timeout=config.op_timeout,
                                        retry=NO_RETRY, **_checked_at_checkout())
    return master, list(sentinel.sentinels)

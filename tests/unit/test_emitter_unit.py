"""The emitter's pure parts and its checks that run before any Redis is asked: its origin,
the CLIENT_CLOSE envelope, settings and argument validation."""

from __future__ import annotations

import threading

import pytest
import redis
from redis.asyncio import Redis

from stabilizer import ConfigError, Emitter, InvalidClientIdError, SyncEmitter, WebSocketConfig
from stabilizer.emitter import sync
from stabilizer.emitter.base import emitter_origin
from stabilizer.pure.wire import Envelope, Kind, close_body, close_of, decode, encode
from tests.support.redis_server import free_port

NOWHERE = f"redis://127.0.0.1:{free_port()}"  # nothing listens: any Redis call would fail


def test_an_emitters_origin_can_never_be_a_node_id() -> None:
    origin = emitter_origin()
    assert origin.startswith("emitter:")
    assert origin != emitter_origin()
    with pytest.raises(ConfigError, match="node_id"):
        WebSocketConfig(node_id=origin)


def test_a_client_close_envelope_round_trips() -> None:
    envelope = Envelope(Kind.CLIENT_CLOSE, "emitter:h-1-abc", "bob/phone",
                        close_body(4403, "banned ✋"))
    decoded = decode(encode(envelope))
    assert decoded == envelope
    assert isinstance(decoded.payload, str)
    assert close_of(decoded.payload) == (4403, "banned ✋")
    assert decoded.destination is None  # not a message: the listener hands it to closing


def test_settings_are_checked_when_the_emitter_is_made() -> None:
    with pytest.raises(ConfigError, match="redis_url"):
        Emitter()
    with pytest.raises(ConfigError, match="redis_url"):
        SyncEmitter(namespace="chat")
    with pytest.raises(ConfigError, match="setting"):
        Emitter(NOWHERE, history=True)
    with pytest.raises(ConfigError, match="history_size"):
        Emitter(NOWHERE, history_size=-1)
    with pytest.raises(ConfigError, match="redis_url"):
        Emitter("http://example.com")
    emitter = Emitter(NOWHERE, namespace="chat", history_size=5, presence_buckets=4)
    assert (emitter.config.namespace, emitter.history, emitter.config.presence_buckets) == (
        "chat", True, 4)
    base = WebSocketConfig(redis_url=NOWHERE, namespace="app", history_size=9)
    assert Emitter(config=base, namespace="other").config.namespace == "other"
    assert Emitter(config=base).config.history_size == 9


async def test_bad_arguments_are_refused_before_redis_is_asked() -> None:
    emitter = Emitter(NOWHERE, op_timeout=0.2)
    with pytest.raises(InvalidClientIdError):
        await emitter.send_to_client("", "x")
    with pytest.raises(InvalidClientIdError, match="limit is 400"):
        await Emitter(NOWHERE, max_client_id_length=400).send_to_client("x" * 401, "x")
    with pytest.raises(ValueError, match="group"):
        await emitter.send_to_group("", "x")
    with pytest.raises(ValueError, match="user id"):
        await emitter.send_to_user("", "x")
    with pytest.raises(ValueError, match="close code"):
        await emitter.disconnect_client("bob", code=1006)
    with pytest.raises(TypeError, match="message"):
        await emitter.broadcast(3.5)  # type: ignore[arg-type]
    await emitter.aclose()


def test_a_sync_emitter_refuses_any_client_and_an_emitter_a_blocking_one() -> None:
    loop_bound, blocking = Redis.from_url(NOWHERE), redis.Redis.from_url(NOWHERE)
    for client in (loop_bound, blocking):
        # its loop thread cannot use connections of the application's loop, nor a
        # blocking client: it needs what to make its own from
        with pytest.raises(ConfigError, match=r"redis_url=\.\.\. or config=\.\.\."):
            SyncEmitter(client=client, namespace="chat")
    with pytest.raises(ConfigError, match=r"redis\.asyncio client"):
        Emitter(client=blocking, namespace="chat")
    assert Emitter(client=loop_bound, namespace="chat").config.namespace == "chat"


def _loop_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name == "stabilizer-sync-emitter"}


@pytest.mark.parametrize("url", [
    pytest.param("redis://127.0.0.1:99999/0", id="port-out-of-range"),
    pytest.param("redis://127.0.0.1:port/0", id="port-not-a-number"),
    pytest.param("redis://127.0.0.1/0?socket_timeout=abc", id="bad-option"),
])
def test_a_url_redis_py_refuses_is_a_config_error_before_any_thread_starts(url: str) -> None:
    before = _loop_threads()
    with pytest.raises(ConfigError, match="redis_url"):
        Emitter(url, namespace="chat")
    with pytest.raises(ConfigError, match="redis_url"):
        SyncEmitter(url, namespace="chat")
    with pytest.raises(ConfigError, match="redis_url"):
        SyncEmitter(config=WebSocketConfig(redis_url=url))
    assert _loop_threads() == before


def test_a_sync_emitter_whose_emitter_cannot_be_made_leaves_no_thread_behind(
        monkeypatch: pytest.MonkeyPatch) -> None:
    def cannot(*args: object, **kwargs: object) -> Emitter:
        raise ConfigError("the redis extra is not installed")

    emitter = SyncEmitter(NOWHERE, namespace="chat")
    monkeypatch.setattr(sync, "Emitter", cannot)
    before = _loop_threads()
    for _ in range(3):
        with pytest.raises(ConfigError, match="redis extra"):
            emitter.broadcast("x")
        assert _loop_threads() == before  # the failed call stopped the thread it started
    emitter.close()

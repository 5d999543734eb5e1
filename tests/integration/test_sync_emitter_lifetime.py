"""A SyncEmitter dropped without close() (made per Celery task, say) gives back its loop
thread and its Redis connections once it is garbage."""

from __future__ import annotations

import gc
import threading

import pytest

from stabilizer import Emitter, SyncEmitter
from stabilizer.emitter import sync

pytestmark = pytest.mark.redis


def _loop_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name == "stabilizer-sync-emitter"}


def test_a_sync_emitter_dropped_without_close_stops_its_thread_and_closes_its_emitter(
        redis_url: str, namespace: str, monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[Emitter] = []

    class Recorded(Emitter):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, **kwargs)  # type: ignore[arg-type]
            made.append(self)

    monkeypatch.setattr(sync, "Emitter", Recorded)
    before = _loop_threads()
    emitter = SyncEmitter(redis_url, namespace=namespace)
    assert emitter.get_nodes() == []  # connected: a thread and a Redis connection
    (thread,) = _loop_threads() - before
    (inner,) = made

    del emitter
    gc.collect()
    thread.join(10.0)  # bounded: the finalizer only asks the thread to stop

    assert not thread.is_alive()
    assert inner._closed  # it closed the Redis client it made

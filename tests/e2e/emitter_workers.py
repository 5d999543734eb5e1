"""The workers the emitter's end-to-end tests run: a Celery app (Redis as the broker) whose
tasks use a SyncEmitter, and arq settings whose jobs use an Emitter.

Both read the replicas' settings from the environment (STABILIZER_REDIS_URL,
STABILIZER_NAMESPACE, ...: WebSocketConfig.from_env(), as the replicas do) and their broker
and queue from WORKER_BROKER_URL and WORKER_QUEUE. Nothing here runs a replica.
"""

from __future__ import annotations

import os
from typing import Any

from arq.connections import RedisSettings
from celery import Celery
from celery.signals import worker_init

from stabilizer import Emitter, SyncEmitter, WebSocketConfig

BROKER = os.environ.get("WORKER_BROKER_URL", "redis://127.0.0.1:6379/1")
QUEUE = os.environ.get("WORKER_QUEUE", "stabilizer-emitter-tests")

# ---------------------------------------------------------------- Celery (prefork)

celery_app = Celery("stabilizer-emitter-tests", broker=BROKER, backend=BROKER)
celery_app.conf.update(task_default_queue=QUEUE, broker_connection_retry_on_startup=True,
                       worker_hijack_root_logger=False)

#: Made at import, in the prefork parent; each forked child starts its own loop thread.
EMITTER = (SyncEmitter(config=WebSocketConfig.from_env())
           if "STABILIZER_REDIS_URL" in os.environ else None)


def _emitter() -> SyncEmitter:
    assert EMITTER is not None, "the worker needs STABILIZER_REDIS_URL"
    return EMITTER


@worker_init.connect
def _check_the_cluster(**_: Any) -> None:
    """The parent uses the emitter before it forks (a start-up check), so the children
    inherit a started one and must start their own."""
    print("emitter worker sees nodes:", _emitter().get_nodes(), flush=True)


@celery_app.task(name="emitter.send_to_user")
def send_to_user(user_id: str, text: str) -> int:
    return _emitter().send_to_user(user_id, text)


@celery_app.task(name="emitter.send_to_client")
def send_to_client(client_id: str, message: Any) -> bool:
    return _emitter().send_to_client(client_id, message)


@celery_app.task(name="emitter.kick_user")
def kick_user(user_id: str, code: int, reason: str) -> int:
    return _emitter().disconnect_user(user_id, code=code, reason=reason)


@celery_app.task(name="emitter.pid")
def pid() -> int:
    return os.getpid()


# ---------------------------------------------------------------- arq

async def startup(ctx: dict[str, Any]) -> None:
    ctx["emitter"] = Emitter(config=WebSocketConfig.from_env())


async def shutdown(ctx: dict[str, Any]) -> None:
    await ctx["emitter"].aclose()


async def notify(ctx: dict[str, Any], client_id: str, text: str) -> bool:
    emitter: Emitter = ctx["emitter"]
    return await emitter.send_to_client(client_id, text)


async def announce(ctx: dict[str, Any], text: str) -> int:
    emitter: Emitter = ctx["emitter"]
    return (await emitter.broadcast(text)).remote_nodes


async def kick_client(ctx: dict[str, Any], client_id: str, code: int, reason: str) -> bool:
    emitter: Emitter = ctx["emitter"]
    return await emitter.disconnect_client(client_id, code=code, reason=reason)


class ArqWorker:
    """``python -m arq tests.e2e.emitter_workers.ArqWorker``"""

    functions = (notify, announce, kick_client)
    on_startup = startup
    on_shutdown = shutdown
    redis_settings = RedisSettings.from_dsn(BROKER)
    queue_name = QUEUE
    max_tries = 1

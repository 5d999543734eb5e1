"""The emitter from real task-queue workers: a Celery worker (prefork, Redis as the broker)
running SyncEmitter tasks and an arq worker running Emitter jobs reach, and kick, clients
connected to real uvicorn replicas of tests/e2e/users_app.py."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
from collections.abc import Iterator
from typing import Any

import pytest
from arq import create_pool
from arq.connections import RedisSettings
from celery import Celery

from tests.e2e.test_identity import (
    Servers,
    assert_no_traceback,
    close_every_socket,
    close_of,
    frame,
    servers,
    welcomed,
)
from tests.support.redis_server import RedisServer
from tests.support.uvicorn_proc import UvicornProcess
from tests.support.worker_proc import WorkerProcess

pytestmark = [pytest.mark.e2e, pytest.mark.redis]

__all__ = ["close_every_socket", "servers"]

_RUN = itertools.count(1)
#: A worker's first answer includes its start-up (imports, a forked pool): seconds, bounded.
ANSWER_TIMEOUT = 30.0


def worker_env(redis_server: RedisServer, replica: UvicornProcess) -> dict[str, str]:
    """The replicas' settings (as the replicas read them), a broker and a queue of its own."""
    return {"STABILIZER_REDIS_URL": replica.env["STABILIZER_REDIS_URL"],
            "STABILIZER_NAMESPACE": replica.env["STABILIZER_NAMESPACE"],
            "WORKER_BROKER_URL": f"{redis_server.url}/1",
            "WORKER_QUEUE": f"emitter-{os.getpid()}-{next(_RUN)}"}


@pytest.fixture
def workers() -> Iterator[list[WorkerProcess]]:
    started: list[WorkerProcess] = []
    yield started
    for worker in started:
        worker.stop()


async def test_a_celery_task_reaches_and_kicks_a_user_on_other_replicas(
    servers: Servers, redis_server: RedisServer, workers: list[WorkerProcess]
) -> None:
    procs = servers(2)
    env = worker_env(redis_server, procs[0])
    worker = WorkerProcess(
        ["-m", "celery", "-A", "tests.e2e.emitter_workers:celery_app", "worker",
         "--pool=prefork", "--concurrency=1", "--loglevel=INFO", "--without-gossip",
         "--without-mingle", "--without-heartbeat", "-Q", env["WORKER_QUEUE"],
         "-n", f"{env['WORKER_QUEUE']}@%h"], env).start()
    workers.append(worker)
    ann_0, _ = await welcomed(procs[0], "ann", device="tab-0")
    ann_1, _ = await welcomed(procs[1], "ann", device="tab-1")
    bob, bob_session = await welcomed(procs[1], "bob", device="phone")
    client = Celery(broker=env["WORKER_BROKER_URL"], backend=env["WORKER_BROKER_URL"])

    def run(task: str, *args: Any) -> Any:
        result = client.send_task(task, args=args, queue=env["WORKER_QUEUE"])
        try:
            return result.get(timeout=ANSWER_TIMEOUT)
        finally:
            result.forget()

    try:
        assert await asyncio.to_thread(run, "emitter.send_to_user", "ann", "from celery") == 2
        for ws in (ann_0, ann_1):
            assert await frame(ws) == {"type": "message", "data": "from celery"}
        assert await asyncio.to_thread(run, "emitter.send_to_client",
                                       bob_session["client_id"], {"job": 7}) is True
        assert json.loads((await frame(bob))["data"]) == {"job": 7}
        assert await asyncio.to_thread(run, "emitter.send_to_client", "ghost/x", "?") is False

        assert await asyncio.to_thread(run, "emitter.kick_user", "ann", 4403, "banned") == 2
        for ws in (ann_0, ann_1):
            code, reason, _ = await close_of(ws)
            assert (code, reason) == (4403, "banned")
        await bob.send(json.dumps({"type": "message", "data": "still here"}))
        assert json.loads((await frame(bob))["data"]) == {"echo": "still here"}
        # the tasks ran in a forked child, after the parent had used the emitter itself
        assert await asyncio.to_thread(run, "emitter.pid") != worker.pid
    finally:
        client.close()
    assert "emitter worker sees nodes: ['replica-0', 'replica-1']" in worker.log() or (
        "emitter worker sees nodes: ['replica-1', 'replica-0']" in worker.log()), worker.log()
    assert "Traceback" not in worker.log(), worker.log()
    assert_no_traceback(*procs)


# arq passes retry_on_timeout to redis-py, which deprecated it in 6.0 (arq pins redis<6;
# scripts/test installs it without that pin, so it runs on the redis-py the project tests)
@pytest.mark.filterwarnings(
    "ignore:Call to '__init__' function with deprecated usage:DeprecationWarning")
async def test_an_arq_job_reaches_and_kicks_a_client_on_another_replica(
    servers: Servers, redis_server: RedisServer, workers: list[WorkerProcess]
) -> None:
    procs = servers(2)
    env = worker_env(redis_server, procs[0])
    worker = WorkerProcess(["-m", "arq", "tests.e2e.emitter_workers.ArqWorker"], env).start()
    workers.append(worker)
    ann, ann_session = await welcomed(procs[0], "ann", device="tab-0")
    bob, bob_session = await welcomed(procs[1], "bob", device="phone")
    pool = await create_pool(RedisSettings.from_dsn(env["WORKER_BROKER_URL"]))

    async def run(function: str, *args: Any) -> Any:
        job = await pool.enqueue_job(function, *args, _queue_name=env["WORKER_QUEUE"])
        assert job is not None
        return await job.result(timeout=ANSWER_TIMEOUT, poll_delay=0.05)

    try:
        assert await run("notify", ann_session["client_id"], "from arq") is True
        assert await frame(ann) == {"type": "message", "data": "from arq"}
        assert await run("announce", "to everyone") == 2  # both replicas received it
        for ws in (ann, bob):
            assert await frame(ws) == {"type": "message", "data": "to everyone"}
        assert await run("kick_client", bob_session["client_id"], 4409, "job done") is True
        code, reason, _ = await close_of(bob)
        assert (code, reason) == (4409, "job done")
        assert await run("kick_client", bob_session["client_id"], 4409, "again") is False
        await ann.send(json.dumps({"type": "message", "data": "still here"}))
        assert json.loads((await frame(ann))["data"]) == {"echo": "still here"}
    finally:
        await pool.aclose()
    assert "Traceback" not in worker.log(), worker.log()
    assert_no_traceback(*procs)

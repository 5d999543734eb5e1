"""Emitters in a process that forks (Celery's prefork pool): the parent keeps working
whatever the child does with the copy it inherited, and a child that uses an inherited
Emitter is told to make its own.

Each scenario runs in a fresh interpreter (a subprocess), so the child it forks is a plain
Python process, not a copy of pytest, and can end the way a worker does (sys.exit)."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from stabilizer import WebSocketConfig
from tests.conftest import ManagerFactory
from tests.support.fakes import FakeSocket

pytestmark = pytest.mark.redis

QUIET = {"heartbeat_interval": 3600.0, "heartbeat_timeout": 3600.0}
ROOT = Path(__file__).resolve().parents[2]

# argv: redis_url namespace ending. The parent sends, forks, waits for the child, and sends
# again; it prints what each send returned (or the exception) as JSON.
SYNC_SCRIPT = """
import gc, json, os, sys
from stabilizer import SyncEmitter
url, namespace, ending = sys.argv[1:4]
emitter = SyncEmitter(url, namespace=namespace, op_timeout=1.0)
def send(text):
    try:
        return emitter.send_to_client("bob", text)
    except Exception as exc:
        return repr(exc)
first = send("before the fork")
pid = os.fork()
if pid == 0:
    try:
        if ending != "idle":
            emitter.get_nodes()  # the child's own loop and connections
        if ending == "gc":
            gc.collect()
            os._exit(0)
    except BaseException:
        os._exit(3)
    sys.exit(0)  # an ordinary interpreter exit: everything left is finalised
_, status = os.waitpid(pid, 0)
print(json.dumps({"child": os.waitstatus_to_exitcode(status), "first": first,
                  "after": send("after the fork")}))
emitter.close()
"""

ASYNC_SCRIPT = """
import asyncio, json, os, sys
from stabilizer import Emitter
url, namespace = sys.argv[1:3]
emitter = Emitter(url, namespace=namespace, op_timeout=1.0)
loop = asyncio.new_event_loop()
first = loop.run_until_complete(emitter.send_to_client("bob", "before the fork"))
pid = os.fork()
if pid == 0:
    try:
        asyncio.run(emitter.get_nodes())
        os._exit(1)
    except Exception as exc:
        ok = "forked" in str(exc) and "make a new" in str(exc)
    asyncio.run(emitter.aclose())  # the child's copy: closes nothing of the parent's
    os._exit(0 if ok else 2)
_, status = os.waitpid(pid, 0)
after = loop.run_until_complete(emitter.send_to_client("bob", "after the fork"))
print(json.dumps({"child": os.waitstatus_to_exitcode(status), "first": first,
                  "after": after}))
loop.run_until_complete(emitter.aclose())
loop.close()
"""


async def run_script(script: str, *args: str) -> dict[str, Any]:
    """Run `script` in a fresh interpreter that imports this checkout; return its JSON."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]))
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, *args, cwd=ROOT, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        async with asyncio.timeout(60):
            out, err = await process.communicate()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0, err.decode()
    result: dict[str, Any] = json.loads(out)
    return result


@pytest.mark.parametrize("ending", ["exit", "gc", "idle"])
async def test_a_forked_child_leaves_the_parents_sync_emitter_working(
        make_manager: ManagerFactory, redis_url: str, namespace: str, ending: str) -> None:
    node = make_manager(WebSocketConfig(redis_url=redis_url, namespace=namespace, **QUIET))
    await node.start()
    bob = FakeSocket("bob")
    await node.connect("bob", bob)
    result = await run_script(SYNC_SCRIPT, redis_url, namespace, ending)
    assert result == {"child": 0, "first": True, "after": True}
    assert await bob.next() == "before the fork"
    assert await bob.next() == "after the fork"  # delivered once, and reported so
    assert bob.frames.empty()


async def test_a_forked_child_cannot_use_an_inherited_emitter(
        make_manager: ManagerFactory, redis_url: str, namespace: str) -> None:
    node = make_manager(WebSocketConfig(redis_url=redis_url, namespace=namespace, **QUIET))
    await node.start()
    bob = FakeSocket("bob")
    await node.connect("bob", bob)
    result = await run_script(ASYNC_SCRIPT, redis_url, namespace)
    assert result == {"child": 0, "first": True, "after": True}
    assert await bob.next() == "before the fork"
    assert await bob.next() == "after the fork"

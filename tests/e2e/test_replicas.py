"""Three uvicorn replicas on one Redis, behind nginx: the deployment topology, for real."""

from __future__ import annotations

import asyncio
import contextlib
import json
import urllib.parse

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from stabilizer import CloseCode
from tests.e2e.conftest import Replicas
from tests.support.clients import closed_with, open_client, recv_json
from tests.support.nginx import Nginx
from tests.support.redis_server import RedisClusterServers, RedisServer
from tests.support.uvicorn_proc import UvicornProcess

pytestmark = [pytest.mark.e2e, pytest.mark.redis]

async def cluster_view(proc: UvicornProcess) -> dict[str, object]:
    status, body = await asyncio.to_thread(proc.get, "/admin/cluster")
    assert status == 200, body
    assert isinstance(body, dict)
    return body


async def test_broadcast_and_direct_messages_cross_replicas(replicas: Replicas) -> None:
    a, b, c = replicas(3)
    on_b, hello_b = await open_client(f"{b.ws}/ws/bob")
    on_c, _ = await open_client(f"{c.ws}/ws/carol")
    on_a, _ = await open_client(f"{a.ws}/ws/alice")
    try:
        assert hello_b["node_id"] == "replica-1"
        result = await asyncio.to_thread(a.post, "/admin/broadcast",
                                         {"message": {"n": 1}, "exclude": "carol"})
        assert result["remote_nodes"] == 2
        assert result["remote_error"] is None
        assert await recv_json(on_b) == {"n": 1}
        assert await recv_json(on_a) == {"n": 1}
        # carol was excluded cluster-wide: her next frame is the direct message below
        sent = await asyncio.to_thread(a.post, "/admin/send/carol", {"message": "direct"})
        assert sent["sent"] is True
        assert await on_c.recv() == "direct"
        # a chat message typed on C reaches A and B (and not C's own sender)
        await on_c.send("from carol")
        assert await recv_json(on_a) == {"from": "carol", "text": "from carol"}
        assert await recv_json(on_b) == {"from": "carol", "text": "from carol"}
        view = await cluster_view(b)
        assert view["count"] == 3
        assert view["clients"] == {"alice": "replica-0", "bob": "replica-1",
                                   "carol": "replica-2"}
        assert view["nodes"] == ["replica-0", "replica-1", "replica-2"]
    finally:
        for ws in (on_a, on_b, on_c):
            await ws.close()


async def test_token_from_one_replica_resumes_on_another_once(replicas: Replicas) -> None:
    a, b, c = replicas(3)
    first, hello = await open_client(f"{a.ws}/ws/alice")
    await first.close()
    resumed, again = await open_client(f"{b.ws}/ws/alice?token={hello['token']}")
    assert again["resumed"] is True
    assert again["node_id"] == "replica-1"
    replay = await connect(f"{c.ws}/ws/alice?token={hello['token']}")
    assert await closed_with(replay) == CloseCode.INVALID_TOKEN
    await resumed.close()


async def test_duplicate_id_on_another_replica_kicks_the_old_socket(replicas: Replicas) -> None:
    a, b = replicas(2)
    old, _ = await open_client(f"{a.ws}/ws/alice")
    new, _ = await open_client(f"{b.ws}/ws/alice")
    try:
        assert await closed_with(old) == CloseCode.REPLACED
        view = await cluster_view(a)
        assert view["clients"] == {"alice": "replica-1"}
        assert view["local"] == []
    finally:
        await new.close()


async def test_hostile_client_ids_route_across_replicas(replicas: Replicas) -> None:
    a, b = replicas(2)
    ids = ["a:b:c", "*", "{stabilizer}:all", "ünï ✓", "x" * 200, "dots.in.id"]
    clients = []
    try:
        for index, cid in enumerate(ids):
            proc = (a, b)[index % 2]
            ws, hello = await open_client(f"{proc.ws}/ws/{urllib.parse.quote(cid, safe='')}")
            assert hello["client_id"] == cid
            clients.append(ws)
        for index, cid in enumerate(ids):
            sender = (b, a)[index % 2]  # always from the other replica
            path = f"/admin/send/{urllib.parse.quote(cid, safe='')}"
            assert (await asyncio.to_thread(sender.post, path, {"message": cid}))["sent"]
            assert await clients[index].recv() == cid
        assert (await cluster_view(a))["count"] == len(ids)
    finally:
        for ws in clients:
            await ws.close()


async def test_through_nginx_clients_spread_and_all_receive(replicas: Replicas) -> None:
    procs = replicas(3)
    proxy = Nginx([p.port for p in procs]).start()
    clients = []
    try:
        nodes = set()
        for i in range(9):
            ws, hello = await open_client(f"{proxy.ws}/ws/user{i}")
            nodes.add(hello["node_id"])
            clients.append(ws)
        assert len(nodes) >= 2  # round robin spread them over replicas
        await clients[0].send("hello everyone")
        for ws in clients[1:]:
            assert await recv_json(ws) == {"from": "user0", "text": "hello everyone"}
    finally:
        for ws in clients:
            await ws.close()
        proxy.stop()


async def test_the_cluster_limit_holds_when_connects_race_across_replicas(
    replicas: Replicas,
) -> None:
    """Sixteen clients connect at once, half to each replica: exactly max_cluster_connections
    are admitted cluster-wide, the others are closed with 1013 and retry advice, and
    presence is empty once the admitted ones leave."""
    a, b = replicas(2, max_cluster_connections=5)

    async def attempt(index: int) -> ClientConnection | tuple[int, str]:
        ws = await connect(f"{(a, b)[index % 2].ws}/ws/c{index}", open_timeout=10)
        try:
            welcome = await recv_json(ws, timeout=10)
        except ConnectionClosed as exc:  # refused: the close frame's code and reason
            return (1006, "") if exc.rcvd is None else (exc.rcvd.code, exc.rcvd.reason)
        assert welcome["type"] == "session", welcome
        return ws

    outcomes = await asyncio.gather(*(attempt(index) for index in range(16)))
    admitted = [ws for ws in outcomes if isinstance(ws, ClientConnection)]
    refused = [closed for closed in outcomes if not isinstance(closed, ClientConnection)]
    try:
        assert len(admitted) == 5
        assert {code for code, _ in refused} == {CloseCode.TRY_AGAIN_LATER}
        assert all("retry_ms" in json.loads(reason or "{}") for _, reason in refused)
        view = await cluster_view(b)
        assert view["count"] == 5
        assert isinstance(view["clients"], dict)
        assert len(view["clients"]) == 5
    finally:
        for ws in admitted:
            await ws.close()
    async with asyncio.timeout(20):
        while (view := await cluster_view(a))["count"] != 0 or view["clients"]:
            await asyncio.sleep(0.1)  # bounded poll: each release is another process's
    for proc in (a, b):
        assert "Traceback" not in proc.log(), proc.log()[-3000:]


async def test_a_sigkilled_replica_disappears_from_presence(replicas: Replicas) -> None:
    a, b = replicas(2, node_ttl=1)
    doomed = [(await open_client(f"{b.ws}/ws/b{i}"))[0] for i in range(3)]
    survivor, _ = await open_client(f"{a.ws}/ws/survivor")
    assert (await cluster_view(a))["count"] == 4
    b.kill()
    async with asyncio.timeout(20):
        while (view := await cluster_view(a))["count"] != 1:
            await asyncio.sleep(0.2)  # bounded poll: reaping follows the node TTL clock
    assert view["clients"] == {"survivor": "replica-0"}
    assert view["nodes"] == ["replica-0"]
    for ws in doomed:
        with contextlib.suppress(Exception):
            await ws.close()
    await survivor.close()


async def test_redis_restart_under_live_traffic(replicas: Replicas) -> None:
    with RedisServer() as redis:
        a, b = replicas(2, redis_url=redis.url, node_ttl=1, op_timeout=0.5)
        sender, _ = await open_client(f"{a.ws}/ws/sender")
        listener, _ = await open_client(f"{b.ws}/ws/listener")
        local_peer, _ = await open_client(f"{a.ws}/ws/local")
        stop = asyncio.Event()
        sent = [0]

        async def chatter() -> None:
            while not stop.is_set():
                await sender.send(f"tick {sent[0]}")
                sent[0] += 1
                await asyncio.sleep(0.02)

        traffic = asyncio.create_task(chatter())
        try:
            assert (await recv_json(listener))["from"] == "sender"
            redis.stop(kill=True)
            # replica A's own client keeps receiving while Redis is down
            outage_mark = sent[0]
            while int((await recv_json(local_peer))["text"].split()[1]) <= outage_mark:
                pass
            redis.start()  # back, and empty
            restart_mark = sent[0]
            async with asyncio.timeout(20):
                while True:  # cross-replica delivery of post-restart traffic resumes
                    frame = await recv_json(listener, timeout=20)
                    if int(frame["text"].split()[1]) > restart_mark:
                        break
            async with asyncio.timeout(20):
                while (await cluster_view(b))["count"] != 3:  # presence re-registered
                    await asyncio.sleep(0.2)
        finally:
            stop.set()
            await traffic
            for ws in (sender, listener, local_peer):
                await ws.close()


async def test_replicas_on_a_redis_cluster(
    replicas: Replicas, redis_cluster: RedisClusterServers
) -> None:
    """The same topology on a three-master Redis Cluster with sharded pub/sub."""
    a, b, c = replicas(3, redis_url=redis_cluster.url, redis_cluster="true",
                       presence_buckets=4)
    on_b, _ = await open_client(f"{b.ws}/ws/bob")
    on_c, hello_c = await open_client(f"{c.ws}/ws/carol")
    try:
        result = await asyncio.to_thread(a.post, "/admin/broadcast", {"message": {"n": 1}})
        assert result["remote_nodes"] == 2
        assert await recv_json(on_b) == {"n": 1}
        assert await recv_json(on_c) == {"n": 1}
        assert (await asyncio.to_thread(a.post, "/admin/send/bob", {"message": "hi"}))["sent"]
        assert await on_b.recv() == "hi"
        moved, _ = await open_client(f"{a.ws}/ws/carol")  # carol moves: C kicks its socket
        assert await closed_with(on_c) == CloseCode.REPLACED
        view = await cluster_view(b)
        assert view["clients"] == {"bob": "replica-1", "carol": "replica-0"}
        await moved.close()
        resumed, again = await open_client(f"{b.ws}/ws/carol?token={hello_c['token']}")
        assert again["resumed"] is True
        await resumed.close()
    finally:
        await on_b.close()


async def test_a_resume_with_long_positions_passes_nginx_and_uvicorn(
    replicas: Replicas,
) -> None:
    """A client that follows many streams resumes with a handshake line of tens of KB: the
    deployment settings (nginx's 128k buffers, the replicas' WEBSOCKETS_MAX_LINE_LENGTH) let
    it through; a line over nginx's limit gets an HTTP refusal, never a hanging socket."""
    procs = replicas(2, history_size=100)
    with Nginx([p.port for p in procs]) as proxy:
        first, hello = await open_client(f"{proxy.ws}/ws/follower")
        await first.close()
        positions = {f"g:room-with-a-long-name-{i:04d}": [i, "ep0ch"] for i in range(900)}
        query = urllib.parse.urlencode({"token": hello["token"], "positions": json.dumps(
            positions, separators=(",", ":"))})
        assert 30_000 < len(query) < 70_000
        resumed, again = await open_client(f"{proxy.ws}/ws/follower?{query}")
        assert again["resumed"] is True
        await resumed.close()
        with pytest.raises(InvalidStatus) as refused:  # over 128k: refused, not left open
            async with asyncio.timeout(10):
                await connect(f"{proxy.ws}/ws/follower?padding={'x' * 140_000}")
        assert refused.value.response.status_code in (400, 414)

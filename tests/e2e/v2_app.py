"""A server with users for the protocol v2 client tests: JWT authentication, an echo
endpoint named by the server (``<user>/<device>``), a plain endpoint that knows nothing of
v2, remote procedures, and an admin API to issue tokens and reach users.

The JWT secret comes from ``V2_APP_JWT_SECRET``; STABILIZER_* variables configure the node.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
from typing import Any

from fastapi import Body, FastAPI, WebSocket
from fastapi.responses import HTMLResponse

from stabilizer import (
    AckTimeoutError,
    AckUnsupportedError,
    ChannelOptions,
    PublishRequest,
    RPCCall,
    RPCError,
    SubscribeRequest,
    WebSocketConfig,
    WebSocketConnectionManager,
)
from stabilizer.auth import JWTAuthenticator
from stabilizer.fastapi import lifespan, router, session

authenticator = JWTAuthenticator(secret=os.environ["V2_APP_JWT_SECRET"])
config = WebSocketConfig.from_env()
# stats:* channels have no presence (a subscribe with presence gets bad_request), besides
# the namespaces STABILIZER_CHANNEL_NAMESPACES sets
config = dataclasses.replace(config, channel_namespaces={
    "stats:": ChannelOptions(presence=False), **config.channel_namespaces})
manager = WebSocketConnectionManager(config, authenticator=authenticator)
app = FastAPI(lifespan=lifespan(manager))
app.include_router(router(manager))

PAGE = "<!doctype html><meta charset=utf-8><title>stabilizer v2</title><p id=user></p>"


@app.websocket("/ws")
async def echo(websocket: WebSocket) -> None:
    """Echoes every text as ``<client_id>: <text>``; binary frames come back as they are."""
    async with session(manager, websocket) as s:
        async for message in s:
            if isinstance(message, bytes):
                await s.send(message)
            else:
                await s.send(f"{s.client_id}: {message}")


@app.websocket("/plain")
async def plain(websocket: WebSocket) -> None:
    """An endpoint that accepts the socket itself, as before protocol v2: no subprotocol."""
    await websocket.accept()
    await websocket.send_text("hello from a plain endpoint")
    await websocket.receive()


# --- remote procedures (protocol v2, section 6.5) ---
released = asyncio.Event()  # set by the "release" procedure: "hold" calls return then
held: dict[str, int] = {"running": 0, "cancelled": 0}


@manager.rpc("add")
async def add(call: RPCCall) -> float:
    return float(call.params["a"] + call.params["b"])


@manager.rpc("whoami")
def whoami(call: RPCCall) -> dict[str, Any]:  # a plain function works too
    return {"client_id": call.client_id, "user_id": call.user_id, "params": call.params}


@manager.rpc("refuse")
async def refuse(call: RPCCall) -> None:
    raise RPCError("forbidden", "not for you", {"needed": "admin"})


@manager.rpc("crash")
async def crash(call: RPCCall) -> None:
    raise ValueError("a bug in the procedure")


@manager.rpc("not_json")
async def not_json(call: RPCCall) -> object:
    return {1, 2}


@manager.rpc("hold")
async def hold(call: RPCCall) -> str:
    """Runs until "release" is called (or the call is cancelled)."""
    held["running"] += 1
    try:
        await released.wait()
        return "released"
    except asyncio.CancelledError:
        held["cancelled"] += 1
        raise
    finally:
        held["running"] -= 1


@manager.rpc("release")
async def release(call: RPCCall) -> int:
    released.set()
    return held["running"]


# --- channels clients subscribe to and publish on themselves (section 6.6) ---
asked: list[str] = []  # every channel on_subscribe was asked about, in order


@manager.on_subscribe
async def may_subscribe(request: SubscribeRequest) -> bool | dict[str, Any]:
    """public:*, readonly:* and stats:* for everyone, private:<user> for that user,
    presence:* for everyone with the presence metadata {"name": user}; "boom" is a bug in
    the hook; anything else is refused with the hook's own code."""
    asked.append(request.channel)
    channel = request.channel
    if channel == "boom":
        raise ValueError("a bug in the hook")
    if channel.startswith("presence:"):
        return {"name": request.user_id}
    if channel.startswith("private:"):
        return channel == f"private:{request.user_id}"
    if channel.startswith(("public:", "readonly:", "stats:")):
        return True
    raise RPCError("no_such_channel", f"{channel} does not exist", {"channel": channel})


@manager.on_publish
async def may_publish(request: PublishRequest) -> object:
    """Text on public:* is sent as {"from": user, "text": ...}; readonly:* is refused."""
    if request.channel.startswith("readonly:"):
        raise RPCError("read_only", "nobody publishes here")
    if isinstance(request.data, str):
        return {"from": request.user_id, "text": request.data}
    return request.data


@app.get("/admin/asked")
async def asked_channels() -> list[str]:
    return asked


@app.post("/admin/send_group/{group}")
async def send_group(group: str, body: dict[str, Any] = Body(...)) -> dict[str, int]:
    return {"local": (await manager.send_to_group(group, body["message"])).succeeded}


pumps: dict[str, Any] = {"task": None, "sent": 0}  # the one /admin/pump running


@app.post("/admin/pump/{group}")
async def pump(group: str) -> dict[str, bool]:
    """Send "tick-<n>" to `group` about every millisecond until /admin/pump_stop."""
    async def run() -> None:
        while True:
            await manager.send_to_group(group, f"tick-{pumps['sent']}")
            pumps["sent"] += 1
            await asyncio.sleep(0.001)

    assert pumps["task"] is None, "one pump at a time"
    pumps["sent"], pumps["task"] = 0, asyncio.create_task(run(), name="v2-app-pump")
    return {"pumping": True}


@app.post("/admin/pump_stop")
async def pump_stop() -> dict[str, int]:
    """Stop the pump; how many messages it sent."""
    task, pumps["task"] = pumps["task"], None
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    return {"sent": pumps["sent"]}


@app.post("/admin/send_group_bytes/{group}")
async def send_group_bytes(group: str, body: dict[str, Any] = Body(...)) -> dict[str, int]:
    """Send the bytes listed in ``body["bytes"]`` to `group` as one binary message."""
    data = bytes(body["bytes"])
    return {"local": (await manager.send_to_group(group, data)).succeeded}


@app.post("/admin/update_presence/{group}/{client_id:path}")
async def update_presence(group: str, client_id: str,
                          body: dict[str, Any] = Body(...)) -> dict[str, Any]:
    await manager.update_presence(client_id, group, body)
    return await manager.get_presence(group)


@app.get("/admin/presence/{group}")
async def group_presence(group: str) -> dict[str, Any]:
    return await manager.get_presence(group)


@app.get("/admin/groups/{group}")
async def group_members(group: str) -> list[str]:
    return await manager.get_group_members(group)


@app.post("/admin/send_acked/{client_id:path}")
async def send_acked(client_id: str, timeout: float = 5.0,
                     body: dict[str, Any] = Body(...)) -> dict[str, Any]:
    """send_to_client with ack=True: {"acked": bool}, or {"error": the exception's name};
    {"binary": true} sends the message's UTF-8 bytes."""
    message = body["message"].encode() if body.get("binary") else body["message"]
    try:
        return {"acked": await manager.send_to_client(client_id, message, ack=True,
                                                      timeout=timeout)}
    except (AckTimeoutError, AckUnsupportedError) as exc:
        return {"error": type(exc).__name__}


@app.post("/admin/send_user_acked/{user_id}")
async def send_user_acked(user_id: str, timeout: float = 5.0,
                          body: dict[str, Any] = Body(...)) -> dict[str, int]:
    """send_to_user with ack=True: how many of the user's connections acknowledged."""
    return {"acked": await manager.send_to_user(user_id, body["message"], ack=True,
                                                timeout=timeout)}


@app.get("/admin/held")
async def held_calls() -> dict[str, int]:
    return dict(held)


@app.get("/", response_class=HTMLResponse)
async def page() -> str:
    return PAGE


@app.post("/admin/token/{user_id}")
async def issue(user_id: str, ttl: float = 3600.0) -> dict[str, str]:
    return {"token": authenticator.issue(user_id, ttl=ttl)}


@app.post("/admin/send_user/{user_id}")
async def send_user(user_id: str, body: dict[str, Any] = Body(...)) -> dict[str, int]:
    return {"reached": await manager.send_to_user(user_id, body["message"])}


@app.post("/admin/disconnect_user/{user_id}")
async def disconnect_user(user_id: str, code: int = 1000) -> dict[str, int]:
    return {"closed": await manager.disconnect_user(user_id, code=code,
                                                    reason="closed by the admin")}


@app.get("/admin/users/{user_id}")
async def user_connections(user_id: str) -> list[str]:
    return [p.client_id for p in await manager.get_user_connections(user_id)]

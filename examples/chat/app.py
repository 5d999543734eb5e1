"""Chat on stabilizer: users log in, get a JWT, connect with protocol v2; every tab of a
user is its own connection, "@name text" reaches every tab of that user, and "/who" calls
a remote procedure that lists who is online on every replica. Each page follows the
presence of the one room, "lobby": a live member list with each member's status ("typing"
while a tab holds unsent text, else "online"), which a tab sets with the "status" procedure.

Run: python -m examples.chat   (then open http://127.0.0.1:8000, in two tabs if you like)
With STABILIZER_REDIS_URL set, every replica shares presence, users and broadcasts; set
CHAT_JWT_SECRET (32+ characters) to the same value on every replica.
"""

import os
import re
import secrets
from pathlib import Path

from fastapi import Body, FastAPI, HTTPException, WebSocket
from fastapi.responses import HTMLResponse

from stabilizer import (
    NotAMemberError,
    RPCCall,
    RPCError,
    SubscribeRequest,
    WebSocketConfig,
    WebSocketConnectionManager,
)
from stabilizer.auth import JWTAuthenticator
from stabilizer.fastapi import lifespan, router, session

# A demo secret: one per process unless configured (tokens then die with the process).
auth = JWTAuthenticator(secret=os.environ.get("CHAT_JWT_SECRET") or secrets.token_urlsafe(32),
                        info_claim="info")
manager = WebSocketConnectionManager(WebSocketConfig.from_env(), authenticator=auth)
app = FastAPI(lifespan=lifespan(manager))
app.include_router(router(manager))
NAME = re.compile(r"[A-Za-z0-9_-]{1,32}")
ROOM = "lobby"  # the room every page joins, with presence
STATUSES = ("online", "typing")


@app.post("/login")
async def login(name: str = Body(..., embed=True)) -> dict[str, str]:
    """A demo login: any name, no password. A real app checks credentials here (or its
    identity provider issues the JWT) and keeps the secret to itself."""
    if not NAME.fullmatch(name):
        raise HTTPException(422, "a name is 1-32 letters, digits, _ or -")
    return {"token": auth.issue(name, ttl=3600, info={"name": name})}


@app.websocket("/ws")
async def chat(websocket: WebSocket) -> None:
    async with session(manager, websocket) as conn:  # authenticated, or closed with 4505
        async for message in conn:  # str for a text frame, bytes for a binary one
            if not isinstance(message, str):  # the chat page sends text; binary is ignored
                continue
            if message.startswith("@"):  # "@ann hello": to every tab of ann, and of us
                to, _, text = message[1:].partition(" ")
                note = {"user": conn.user_id, "to": to, "message": text}
                await manager.send_to_user(to, note)
                if to != conn.user_id:
                    await manager.send_to_user(conn.user_id, note)
            else:
                await manager.broadcast({"user": conn.user_id, "message": message})


@manager.rpc("who")
async def who(call: RPCCall) -> list[str]:
    """The users online on every replica (the first 100), for the page's "/who"."""
    users: set[str] = set()
    async for presence in manager.get_cluster_connections():
        if presence.user_id is not None:
            users.add(presence.user_id)
            if len(users) == 100:
                break
    return sorted(users)


@manager.on_subscribe
async def may_join(request: SubscribeRequest) -> dict[str, str] | bool:
    """Anyone may join the room; a member starts "online" (its presence metadata)."""
    return {"status": "online"} if request.channel == ROOM else False


@manager.rpc("status")
async def status(call: RPCCall) -> str:
    """Set the caller's status in the room (params: "online" or "typing"); every page that
    follows the room's presence, on any replica, sees the change."""
    if call.params not in STATUSES:
        raise RPCError("bad_status", f"a status is one of {', '.join(STATUSES)}")
    try:
        await manager.update_presence(call.client_id, ROOM, {"status": call.params})
    except NotAMemberError as exc:
        raise RPCError("not_in_room", f"join {ROOM!r} first") from exc
    return str(call.params)


@app.get("/")
async def page() -> HTMLResponse:
    return HTMLResponse((Path(__file__).parent / "index.html").read_text(encoding="utf-8"))

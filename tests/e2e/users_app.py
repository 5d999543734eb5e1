"""The app the identity end-to-end tests run under uvicorn: JWT authentication (a shared
secret, or a JWKS URL from USERS_APP_JWKS_URL), v2 and plain clients on /ws, plain ones
under a client id the app names on /kiosk/{client_id}, an admin API for users and groups,
and ops endpoints guarded by a header."""

from __future__ import annotations

import os
from typing import Any

from fastapi import Body, Depends, FastAPI, Header, HTTPException, WebSocket

from stabilizer import WebSocketConfig, WebSocketConnectionManager
from stabilizer.auth import JWTAuthenticator
from stabilizer.fastapi import lifespan, router, session

SECRET = "users-app-secret-of-at-least-32-chars"
AUDIENCE = "stabilizer-tests"
ISSUER = "tests"

jwks_url = os.environ.get("USERS_APP_JWKS_URL")
authenticator = (JWTAuthenticator(jwks_url=jwks_url, audience=AUDIENCE, issuer=ISSUER,
                                  info_claim="info", jwks_refetch_interval=0.05)
                 if jwks_url else
                 JWTAuthenticator(secret=SECRET, audience=AUDIENCE, issuer=ISSUER,
                                  info_claim="info"))
manager = WebSocketConnectionManager(WebSocketConfig.from_env(), authenticator=authenticator)
app = FastAPI(lifespan=lifespan(manager))


def operator(x_operator: str | None = Header(default=None)) -> None:
    """The ops endpoints' guard: an operator header (a stand-in for real auth)."""
    if x_operator != "yes":
        raise HTTPException(status_code=403, detail="operators only")


app.include_router(router(manager, dependencies=[Depends(operator)]))


@app.websocket("/ws")
async def chat(websocket: WebSocket) -> None:
    """``whoami`` answers who the connection is; ``all:<text>`` is broadcast; anything
    else comes back as {"echo": text}."""
    async with session(manager, websocket) as conn:
        async for message in conn:
            if message == "whoami":
                await conn.send({"user_id": conn.user_id, "client_id": conn.client_id})
            elif isinstance(message, str) and message.startswith("all:"):
                await manager.broadcast(message[4:])
            else:
                await conn.send({"echo": message})


@app.websocket("/kiosk/{client_id}")
async def kiosk(websocket: WebSocket, client_id: str) -> None:
    """A client id the application names (a shared device): its user is whoever signs in."""
    async with session(manager, websocket, client_id) as conn:
        async for _message in conn:
            pass


@app.post("/admin/join/{group}/{client_id}")
async def join(group: str, client_id: str) -> dict[str, bool]:
    await manager.join_group(client_id, group)
    return {"joined": True}


@app.post("/admin/send_to_group/{group}")
async def send_to_group(group: str, body: dict[str, Any] = Body(...)) -> dict[str, int]:
    return {"offset": (await manager.send_to_group(group, body["message"])).offset or 0}


@app.get("/admin/members/{group}")
async def members(group: str) -> list[str]:
    return await manager.get_group_members(group)


@app.post("/admin/send_to_user/{user_id}")
async def send_to_user(user_id: str, body: dict[str, Any] = Body(...)) -> dict[str, int]:
    return {"reached": await manager.send_to_user(user_id, body["message"])}


@app.post("/admin/disconnect_user/{user_id}")
async def disconnect_user(user_id: str, body: dict[str, Any] = Body(...)) -> dict[str, int]:
    closed = await manager.disconnect_user(user_id, code=int(body.get("code", 1000)),
                                           reason=str(body.get("reason", "bye")))
    return {"closed": closed}


@app.get("/admin/users/{user_id}")
async def user_connections(user_id: str) -> list[dict[str, Any]]:
    return [{"client_id": p.client_id, "node_id": p.node_id, "info": p.info}
            for p in await manager.get_user_connections(user_id)]


@app.get("/admin/user_count")
async def user_count() -> dict[str, int]:
    return {"users": await manager.get_cluster_user_count()}


@app.get("/admin/pongs")
async def pongs() -> dict[str, int]:
    return {"pongs": manager.stats.pongs}

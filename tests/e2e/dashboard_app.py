"""tests/e2e/app.py with the dashboard under /ops, guarded by an `x-ops-key` header, and a
way for a test to put a client in a group."""

from __future__ import annotations

import os

from fastapi import Depends, Header, HTTPException

from stabilizer.fastapi import router
from tests.e2e.app import app, manager

OPS_KEY = os.environ.get("DASHBOARD_KEY", "ops-key")


def require_ops_key(x_ops_key: str | None = Header(default=None)) -> None:
    if x_ops_key != OPS_KEY:
        raise HTTPException(401, "the dashboard needs an x-ops-key header")


app.include_router(router(manager, prefix="/ops", dashboard=True,
                          dependencies=[Depends(require_ops_key)]))


@app.post("/admin/join/{client_id}/{group}")
async def admin_join(client_id: str, group: str) -> dict[str, bool]:
    await manager.join_group(client_id, group)
    return {"joined": True}

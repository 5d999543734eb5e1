"""Shared test helpers: a real Redis server, fake sockets, uvicorn processes, ws clients."""

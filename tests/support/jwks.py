"""A JWKS endpoint on loopback, signing keys for it, and a JWKS cache clock moved by hand
(tests of key rotation and outages)."""

from __future__ import annotations

import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

_CURVES: dict[str, ec.EllipticCurve] = {
    "ES256": ec.SECP256R1(), "ES384": ec.SECP384R1(), "ES512": ec.SECP521R1()}


class Clock:
    """The JWKS cache's clock (JWTAuthenticator(clock=...)), moved by the test."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class JWKSServer:
    """A JWKS endpoint on 127.0.0.1 that counts the requests it answers."""

    def __init__(self) -> None:
        self.keys: list[dict[str, Any]] = []
        self.status = 200
        self._requests = 0
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_port}/.well-known/jwks.json"
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    @property
    def requests(self) -> int:
        with self._lock:
            return self._requests

    def publish(self, *keys: Key) -> None:
        with self._lock:
            self.keys = [key.jwk for key in keys]

    def _answer(self) -> tuple[int, bytes]:
        with self._lock:
            self._requests += 1
            return self.status, json.dumps({"keys": self.keys}).encode()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                status, body = server._answer()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


class Key:
    """A signing key pair with a kid, its public JWK, and tokens it signs.

    `alg` picks the key's type (RS*/PS*: RSA 2048, ES*: the curve of the algorithm, EdDSA:
    Ed25519) and the algorithm its tokens use; `named=False` publishes the JWK without its
    optional "alg" member, as many identity providers do.
    """

    def __init__(self, alg: str = "RS256", *, named: bool = True) -> None:
        self.alg, self.kid = alg, uuid.uuid4().hex
        if alg.startswith(("RS", "PS")):
            self.private: Any = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            jwk = RSAAlgorithm.to_jwk(self.private.public_key(), as_dict=True)
        elif alg == "EdDSA":
            self.private = ed25519.Ed25519PrivateKey.generate()
            jwk = OKPAlgorithm.to_jwk(self.private.public_key(), as_dict=True)
        else:
            self.private = ec.generate_private_key(_CURVES[alg])
            jwk = ECAlgorithm.to_jwk(self.private.public_key(), as_dict=True)
        self.jwk = {**jwk, "kid": self.kid, "use": "sig"} | ({"alg": alg} if named else {})

    def token(self, sub: str = "alice", *, kid: str | None = None, alg: str | None = None,
              **extra: Any) -> str:
        """A token for `sub` signed with this key, by its own algorithm or `alg`."""
        claims = {"sub": sub, "exp": int(time.time()) + 3600, **extra}
        return jwt.encode(claims, self.private, algorithm=alg or self.alg,
                          headers={"kid": self.kid if kid is None else kid})

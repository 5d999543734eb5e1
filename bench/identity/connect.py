"""The ``connect`` scenario: what a connect costs, from a raw endpoint to v2 with a JWT.

Every repetition of every contender starts its own server (``python -m bench.servers``,
kind ``raw`` or ``stabilizer-id``) and two load generators (``python -m bench.probe``).
After a warm-up (20 clients connect, then leave):

1. **Latency**: ``latency_connects`` clients connect one at a time from one generator; each
   is timed from before its TCP connect until its first frame arrived (the stabilizer's
   ``session`` frame; raw: the frame ``/hello/{id}`` sends after accepting). With v2 the
   client sends its ``connect`` frame when the 101 arrives, so that is one more round trip.
   Those clients then leave.
2. **Burst**: ``connect_clients`` clients from both generators, ``connect_concurrency``
   handshakes in flight each: connects per second (wall time of the whole burst) and the
   server's CPU (user + system of its pid) from before the first connect until the server
   counts them all, per connect.
3. **Verification**: with an authenticator, the server times ``verify_n`` verifications
   of one token in-process: ``JWTAuthenticator.authenticate`` and PyJWT's ``jwt.decode``.

Tokens (subject ``u<i>``, ``exp`` in 4 hours) are signed by the controller before anything
is measured: HS256 with a 44-byte secret, RS256 with a fresh RSA-2048 key (the server gets
the PEM public key).
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from bench.cluster import Cpu, lat_values
from bench.core import Run, fmt, log, ratio, table
from bench.harness import BenchError, Fleet, ForeignLoad, Server, free_port
from bench.identity.common import Plan, med, open_clients, spread
from bench.support import RedisProc, post_json, wait_idle

KINDS: Final = ("raw", "plain", "v2", "hs256", "rs256")
BACKENDS: Final = ("embedded", "redis")
HS_SECRET: Final = "bench-identity-hs256-secret-0123456789abcdef"
TOKEN_TTL: Final = 4 * 3600.0
LABELS: Final = {"raw": "raw", "plain": "plain", "v2": "v2", "hs256": "v2 + HS256",
                 "rs256": "v2 + RS256"}


@dataclass(frozen=True)
class Contender:
    """One server setup of the connect scenario."""

    kind: str  # one of KINDS
    backend: str  # embedded or redis (raw: embedded, it has no backend)

    @property
    def label(self) -> str:
        return LABELS[self.kind] + (", Redis" if self.backend == "redis" else "")

    @property
    def mode(self) -> str:
        """The probe's connect mode: every contender is ready at its first frame."""
        return "welcome" if self.kind in ("raw", "plain") else "v2"

    @property
    def auth(self) -> str:
        return self.kind if self.kind in ("hs256", "rs256") else "none"


@dataclass
class Keys:
    """Where the servers find their keys, and the tokens signed for the clients."""

    files: dict[str, str]  # auth mode -> key file (the secret, or the PEM public key)
    tokens: dict[str, list[str]]  # auth mode -> one token per client number (subject u<i>)


def contenders(kinds: Sequence[str], backends: Sequence[str]) -> list[Contender]:
    found = [Contender("raw", "embedded")] if "raw" in kinds else []
    for backend in backends:
        found += [Contender(kind, backend) for kind in kinds if kind != "raw"]
    return found


def make_keys(count: int, key_dir: Path, modes: Sequence[str]) -> Keys:
    """Write the HS256 secret and an RSA-2048 public key; sign `count` tokens for each."""
    import jwt
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key_dir.mkdir(parents=True, exist_ok=True)
    files: dict[str, str] = {}
    tokens: dict[str, list[str]] = {}
    expires = int(time.time() + TOKEN_TTL)
    if "hs256" in modes:
        path = key_dir / "hs256.secret"
        path.write_text(HS_SECRET)
        files["hs256"] = str(path)
        tokens["hs256"] = [jwt.encode({"sub": f"u{i}", "exp": expires}, HS_SECRET, "HS256")
                           for i in range(count)]
    if "rs256" in modes:
        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        path = key_dir / "rs256.pub.pem"
        path.write_bytes(private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
        files["rs256"] = str(path)
        tokens["rs256"] = [jwt.encode({"sub": f"u{i}", "exp": expires}, private, "RS256")
                           for i in range(count)]
    return Keys(files, tokens)


def entries(c: Contender, prefix: str, numbers: Sequence[int], keys: Keys) -> list[Any]:
    """What the generators open for clients `numbers`: ``[path, first frame or None]``."""
    if c.kind == "raw":
        return [[f"/hello/{prefix}{i}", None] for i in numbers]
    if c.kind == "plain":
        return [[f"/ws/{prefix}{i}", None] for i in numbers]
    found = []
    for i in numbers:
        frame: dict[str, str] = {"type": "connect", "device": f"{prefix}{i}"}
        if c.auth != "none":
            frame["token"] = keys.tokens[c.auth][i]
        found.append(["/v2", json.dumps(frame, separators=(",", ":"))])
    return found


def server_args(c: Contender, plan: Plan, keys: Keys, redis: RedisProc | None) -> list[str]:
    if c.kind == "raw":
        return []
    args = ["--auth", c.auth]
    if c.auth != "none":
        args += ["--auth-key-file", keys.files[c.auth]]
    if redis is not None:
        args += ["--stabilizer-config", json.dumps({"redis_url": redis.url})]
    if plan.stabilizer_path:
        args += ["--stabilizer-path", plan.stabilizer_path]
    return args


def leave(server: Server, fleet: Fleet) -> None:
    """Close every client and wait until the server holds none."""
    fleet.close()
    if server.wait_count(0, timeout=30.0):
        raise BenchError("clients still registered 30 s after closing")


def connect_run(c: Contender, plan: Plan, keys: Keys, rep: int, log_dir: Path) -> Run:
    wait_idle(log, plan.max_wait)
    run = Run("connect", c.label, plan.connect_clients, rep)
    gens = list(range(plan.connect_generators))
    name = c.label.replace(" ", "").replace(",", "-").replace("+", "-")
    with contextlib.ExitStack() as stack:
        redis = stack.enter_context(RedisProc(log_dir)) if c.backend == "redis" else None
        server = stack.enter_context(Server(
            "raw" if c.kind == "raw" else "stabilizer-id", free_port(), log_dir,
            extra_args=server_args(c, plan, keys, redis), name=name))
        fleet = stack.enter_context(Fleet(len(gens), log_dir, module="bench.probe"))
        server.wait_ready()
        warm = entries(c, "w", range(plan.warmup_clients), keys)
        open_clients(fleet, gens, server.port, c.mode, warm, plan.connect_concurrency)
        if server.wait_count(len(warm)) != len(warm):
            raise BenchError("warm-up clients not registered")
        leave(server, fleet)
        server.request("POST", "/bench/gc")
        time.sleep(0.3)
        pids = [server.pid, *fleet.pids, *([redis.pid] if redis else [])]

        # 1. one at a time: latency to the first frame
        n = plan.latency_connects
        foreign = ForeignLoad(pids)
        cpu0 = server.cpu_seconds()
        _, one_by_one = open_clients(fleet, [0], server.port, c.mode,
                                     entries(c, "l", range(n), keys), 1)
        run.values["serial_cpu_us"] = (server.cpu_seconds() - cpu0) / n * 1e6
        run.values.update(lat_values("serial", one_by_one))
        run.values["foreign_pct_serial"] = foreign.percent()
        leave(server, fleet)

        # 2. a burst: rate and server CPU per connect
        n = plan.connect_clients
        paths = entries(c, "c", range(n), keys)
        foreign = ForeignLoad(pids)
        reads: dict[str, Callable[[], float]] = {"server": server.cpu_seconds}
        if redis is not None:
            reads["redis"] = redis.cpu_seconds
        cpu = Cpu(**reads)
        user0, sys0 = server.cpu_split()
        wall, burst = open_clients(fleet, gens, server.port, c.mode, paths,
                                   plan.connect_concurrency)
        registered = server.wait_count(n)
        user1, sys1 = server.cpu_split()
        spent = cpu.spent()
        if registered != n:
            raise BenchError(f"server registered {registered} of {n} clients")
        run.values.update(lat_values("burst", burst))
        run.values.update({
            "connects_per_s": n / wall,
            "connect_us": spent["server"] / n * 1e6,
            "user_us": (user1 - user0) / n * 1e6,
            "sys_us": (sys1 - sys0) / n * 1e6,
            "foreign_pct_burst": foreign.percent(),
        })
        if redis is not None:
            run.values["redis_us"] = spent["redis"] / n * 1e6

        # 3. token verification in the server process
        if c.auth != "none" and plan.verify_n:
            reply = post_json(server.port, "/bench/verify",
                              {"token": keys.tokens[c.auth][0], "n": plan.verify_n})
            run.values["verify_us"] = float(reply["authenticator_us"])
            run.values["pyjwt_us"] = float(reply["pyjwt_us"])
    run.values["foreign_pct"] = max(run.values["foreign_pct_serial"],
                                    run.values["foreign_pct_burst"])
    return run


def connect_report(runs: list[Run], plan: Plan, cons: Sequence[Contender]) -> list[str]:
    def m(label: str, key: str) -> float | None:
        return med(runs, "connect", label, key)

    raw = "raw"
    first, burst = [], []
    for c in cons:
        label = c.label
        first.append([
            label, fmt(m(label, "serial_p50_ms")), fmt(m(label, "serial_p99_ms")),
            spread(runs, "connect", label, "serial_p50_ms", 2),
            spread(runs, "connect", label, "serial_p99_ms", 2),
            ratio(m(label, "serial_p50_ms"), m(raw, "serial_p50_ms")),
            ratio(m(label, "serial_p99_ms"), m(raw, "serial_p99_ms"))])
        burst.append([
            label, fmt(m(label, "connects_per_s"), 0),
            spread(runs, "connect", label, "connects_per_s"),
            ratio(m(label, "connects_per_s"), m(raw, "connects_per_s")),
            fmt(m(label, "burst_p50_ms"), 1), fmt(m(label, "burst_p99_ms"), 1),
            fmt(m(label, "connect_us"), 0), spread(runs, "connect", label, "connect_us"),
            ratio(m(label, "connect_us"), m(raw, "connect_us")),
            f"{fmt(m(label, 'user_us'), 0)} / {fmt(m(label, 'sys_us'), 0)}",
            fmt(m(label, "redis_us"), 0) if c.backend == "redis" else ""])
    parts = [
        f"### Connect: time to the first frame, {plan.latency_connects:,} connects one at a "
        "time\n\n" + table(
            ["contender", "p50 ms", "p99 ms", "p50 range", "p99 range", "p50 vs raw",
             "p99 vs raw"], first),
        f"### Connect: a burst of {plan.connect_clients:,} ({plan.connect_generators} "
        f"generators × {plan.connect_concurrency} handshakes in flight)\n\n" + table(
            ["contender", "connects / s", "range", "vs raw", "to first frame p50 ms",
             "p99 ms", "server CPU µs / connect", "range", "vs raw", "user / sys µs",
             "Redis CPU µs / connect"], burst)]
    rows = []
    for c in cons:
        ours, floor = m(c.label, "verify_us"), m(c.label, "pyjwt_us")
        if c.auth == "none" or c.backend != "embedded" or ours is None:
            continue
        rows.append([c.auth.upper(), fmt(floor, 1), spread(runs, "connect", c.label,
                                                           "pyjwt_us", 1),
                     fmt(ours, 1), spread(runs, "connect", c.label, "verify_us", 1),
                     ratio(ours, floor)])
    if rows:
        parts.append(
            f"### Token verification in the server process ({plan.verify_n:,} verifications "
            "of one token, CPU µs each)\n\n" + table(
                ["algorithm", "PyJWT jwt.decode µs", "range", "JWTAuthenticator µs", "range",
                 "vs PyJWT"], rows))
    return parts

"""compose.yaml and the nginx config stay in step with the topology the e2e tests run."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import yaml

from stabilizer import WebSocketConfig

ROOT = Path(__file__).resolve().parents[2]


def test_every_replica_in_compose_has_a_valid_config() -> None:
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    replicas = {name: svc for name, svc in compose["services"].items()
                if name.startswith("replica-")}
    assert len(replicas) == 3
    node_ids = set()
    for service in replicas.values():
        env = {key: str(value) for key, value in service["environment"].items()}
        env = {k: v.replace("${STABILIZER_TOKEN_SECRET:-", "").rstrip("}") for k, v in env.items()}
        config = WebSocketConfig.from_env(env)  # unknown or malformed settings raise
        assert config.redis_url == "redis://redis:6379/0"
        assert config.shutdown_close_code == 1012
        node_ids.add(config.node_id)
    assert node_ids == {"replica-1", "replica-2", "replica-3"}


def test_nginx_configs_forward_the_websocket_upgrade() -> None:
    from tests.support.nginx import TEMPLATE

    for text in ((ROOT / "examples/cluster/nginx.conf").read_text(), TEMPLATE):
        assert "proxy_http_version 1.1;" in text
        assert "proxy_set_header Upgrade $http_upgrade;" in text
        assert "proxy_set_header Connection $connection_upgrade;" in text
        timeouts = [int(t) for t in re.findall(r"proxy_(?:read|send)_timeout (\d+)s;", text)]
        assert len(timeouts) == 2
        assert min(timeouts) > 2 * 60  # far above the heartbeat interval


def test_a_resume_handshake_fits_through_nginx_and_uvicorn_alike() -> None:
    """nginx refuses request lines over its buffer; uvicorn never answers lines over
    WEBSOCKETS_MAX_LINE_LENGTH: both must take the longest positions a client may send,
    URL-encoded (JSON positions grow about 1.5x; pathological ones that escape every
    character get nginx's 414), and nginx must refuse before uvicorn would hang."""
    from stabilizer.pure.positions import MAX_POSITIONS_TEXT
    from tests.support.nginx import TEMPLATE

    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    uvicorn_limit = int(compose["x-replica"]["environment"]["WEBSOCKETS_MAX_LINE_LENGTH"])
    for text in ((ROOT / "examples/cluster/nginx.conf").read_text(), TEMPLATE):
        found = re.search(r"large_client_header_buffers \d+ (\d+)k;", text)
        assert found is not None
        nginx_limit = int(found.group(1)) * 1024
        assert MAX_POSITIONS_TEXT * 1.5 + 1024 < nginx_limit <= uvicorn_limit


def test_run_hands_the_server_the_options_the_config_asks_for(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import uvicorn

    from stabilizer import WebSocketConfig, WebSocketConnectionManager
    from stabilizer.fastapi import run

    seen: dict[str, object] = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **options: seen.update(options))
    manager = WebSocketConnectionManager(WebSocketConfig(compression="none",
                                                         max_message_size=4096))
    run(object(), manager, port=9000, ws_max_size=10_000)
    assert seen == {"ws_per_message_deflate": False, "ws_max_size": 10_000, "port": 9000}


def test_every_replica_signs_logins_with_the_same_secret() -> None:
    """The chat example makes a random JWT secret per process unless CHAT_JWT_SECRET is
    set; behind nginx's round robin a login and its socket land on different replicas, so
    without one shared secret every socket was refused with 4505."""
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    secrets = {str(svc["environment"].get("CHAT_JWT_SECRET"))
               for name, svc in compose["services"].items() if name.startswith("replica-")}
    assert len(secrets) == 1
    assert secrets != {"None"}


def test_the_replica_image_installs_what_the_chat_example_imports() -> None:
    """The example authenticates with JWTAuthenticator, which needs PyJWT (the jwt extra,
    which the examples extra includes)."""
    dockerfile = (ROOT / "examples/cluster/Dockerfile").read_text()
    [install] = [line for line in dockerfile.splitlines() if "pip install" in line]
    extras = re.search(r"'\.\[([a-z,]+)\]'", install)
    assert extras is not None
    assert {"redis"} <= set(extras.group(1).split(","))
    assert {"jwt", "examples"} & set(extras.group(1).split(","))


def test_nginx_never_marks_a_replica_failed() -> None:
    """With nginx's default max_fails=1, a connect refused while a replica restarts marks it
    failed, and only a finished request clears the mark: a WebSocket does not finish while
    open, so after a rolling restart every replica stayed marked and clients got 502 for
    minutes (tests/e2e/test_rolling_restart_proxy.py shows it through a real nginx)."""
    from tests.support.nginx import Nginx

    proxy = Nginx([1, 2, 3])  # writes its config; never started
    generated = proxy.conf.read_text()
    shutil.rmtree(proxy.dir, ignore_errors=True)
    for text in ((ROOT / "examples/cluster/nginx.conf").read_text(), generated):
        [upstream] = re.findall(r"upstream replicas \{(.*?)\}", text, re.DOTALL)
        servers = [line.strip() for line in upstream.splitlines()
                   if line.strip().startswith("server ")]
        assert len(servers) == 3
        assert all(re.search(r"\smax_fails=0[\s;]", line) for line in servers), servers

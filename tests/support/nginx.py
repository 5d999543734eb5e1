"""An nginx reverse proxy in front of several replicas, configured as the deployment guide
says (WebSocket upgrade headers, long read/send timeouts)."""

from __future__ import annotations

import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from tests.support.redis_server import free_port, listens_on

TEMPLATE = """
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    map $http_upgrade $connection_upgrade {{ default upgrade; '' close; }}
    upstream replicas {{
{servers}
    }}
    server {{
        listen 127.0.0.1:{port};
        large_client_header_buffers 4 128k;
        client_header_timeout 10s;
        location / {{
            proxy_pass http://replicas;
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_set_header Host $host;
            proxy_read_timeout 180s;
            proxy_send_timeout 180s;
            proxy_next_upstream error timeout http_502;
        }}
    }}
}}
"""


def nginx_binary() -> str:
    """Return the nginx path or raise (installed by .ci/run with apt-get)."""
    for candidate in ("nginx", "/usr/sbin/nginx"):
        found = shutil.which(candidate)
        if found:
            return found
    raise RuntimeError("nginx not found: apt-get install nginx")


class Nginx:
    """nginx in the foreground, proxying to the given upstream ports."""

    def __init__(self, upstream_ports: list[int]) -> None:
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="stabilizer-nginx-"))
        # max_fails=0 as in examples/cluster/nginx.conf (its comment says why)
        servers = "\n".join(f"        server 127.0.0.1:{p} max_fails=0;"
                             for p in upstream_ports)
        self.conf = self.dir / "nginx.conf"
        self.conf.write_text(TEMPLATE.format(dir=self.dir, port=self.port, servers=servers))
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def ws(self) -> str:
        """ws://127.0.0.1:<port>"""
        return f"ws://127.0.0.1:{self.port}"

    def start(self, timeout: float = 10.0) -> Nginx:
        """Start nginx and wait until it accepts connections; a start that fails stops what
        it started before raising."""
        import socket

        self.process = subprocess.Popen(
            [nginx_binary(), "-c", str(self.conf), "-p", str(self.dir), "-g", "daemon off;"],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        try:
            while True:
                try:
                    socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                    if not listens_on(self.process.pid, self.port):  # someone else's port
                        raise OSError("the port answers, but not from our nginx")
                    return self
                except OSError:
                    if self.process.poll() is not None or time.monotonic() > deadline:
                        log = (self.dir / "error.log").read_text(errors="replace") if (
                            self.dir / "error.log").exists() else ""
                        raise RuntimeError(f"nginx did not start: {log}") from None
                    time.sleep(0.05)
        except BaseException:
            self.stop()
            raise

    def __enter__(self) -> Nginx:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop nginx (and reap it)."""
        process = self.process
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGQUIT)
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.process = None
        shutil.rmtree(self.dir, ignore_errors=True)

"""Helpers for the deployment tests: HTTP probes, a syncd subprocess, a JWKS server.

The JWKS server is a real HTTPS server on loopback (the dev CA signs its certificate), in
a thread, whose key set the test replaces (rotation) and which it can take down (outage)
or slow down; it counts the requests it answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

from syncd.config import Config, load_config
from syncd.devcerts import DevPKI, ensure_dev_pki
from syncd.server.app import Daemon
from tests.e2e.conftest import RunningDaemon

SYNCD = [sys.executable, "-m", "syncd"]


async def http_get(port: int, path: str) -> tuple[int, str]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    data = await reader.read()
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body.decode()


async def wait_for_status(port: int, path: str, status: int, seconds: float = 20) -> str:
    """Poll `path` until it answers `status` (what an orchestrator's probe does); the body."""
    async with asyncio.timeout(seconds):
        while True:
            code, body = await http_get(port, path)
            if code == status:
                return body
            await asyncio.sleep(0.05)


async def wait_for_body(port: int, path: str, wanted: Callable[[str], bool]) -> str:
    """Poll `path` until its body satisfies `wanted` (within 20 s); the body."""
    async with asyncio.timeout(20):
        while True:
            _, body = await http_get(port, path)
            if wanted(body):
                return body
            await asyncio.sleep(0.05)


def run_syncd(
    args: list[str], env: Mapping[str, str], cwd: Path, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """`syncd <args>` to completion, with only `env` (plus PATH) as its environment."""
    return subprocess.run(
        [*SYNCD, *args],
        env={"PATH": os.environ.get("PATH", ""), "XDG_RUNTIME_DIR": str(cwd), **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def daemon_env(base: Path, dsn: str, **extra: str) -> dict[str, str]:
    """Environment for a dev-mode syncd on free ports over `dsn`."""
    return {
        "SYNCD_SERVER__DATA_DIR": str(base),
        "SYNCD_SERVER__DEV_MODE": "true",
        "SYNCD_SERVER__LISTEN": "127.0.0.1:0",
        "SYNCD_OPS__LISTEN": "127.0.0.1:0",
        "SYNCD_DATABASE__DSN": dsn,
        "SYNCD_LOGGING__FORMAT": "json",
        **extra,
    }


def serving_line(stderr_lines: list[str]) -> dict[str, Any] | None:
    for line in stderr_lines:
        if '"syncd serving"' in line:
            parsed: dict[str, Any] = json.loads(line)
            return parsed
    return None


class SigningKey:
    """An EC P-256 key with a kid, as an identity provider holds it."""

    def __init__(self, kid: str) -> None:
        self.kid = kid
        self.private = ec.generate_private_key(ec.SECP256R1())

    def pem(self) -> bytes:
        return self.private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def jwk(self) -> dict[str, Any]:
        jwk: dict[str, Any] = json.loads(ECAlgorithm.to_jwk(self.private.public_key()))
        return {**jwk, "kid": self.kid, "use": "sig", "alg": "ES256"}


class JwksServer:
    """A local HTTPS key server: `publish` keys, `stop` it, `delay` its answers."""

    def __init__(self, pki: DevPKI) -> None:
        self.document: dict[str, Any] = {"keys": []}
        self.requests = 0
        self.delay = 0.0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.requests += 1
                if server.delay:
                    time.sleep(server.delay)
                if self.path == "/.well-known/openid-configuration":
                    body = json.dumps({"jwks_uri": server.url}).encode()
                else:
                    body = json.dumps(server.document).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_args: object) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(pki.server_cert, pki.server_key)
        self._httpd.socket = context.wrap_socket(self._httpd.socket, server_side=True)
        self.port = self._httpd.server_address[1]
        self.url = f"https://127.0.0.1:{self.port}/keys"
        self.issuer = f"https://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()

    def publish(self, *keys: SigningKey) -> None:
        self.document = {"keys": [key.jwk() for key in keys]}

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5)


def deploy_config(
    base: Path, dsn: str, *, ops_port: int, health_interval: float = 0.2, **sync: Any
) -> Config:
    """A dev-mode daemon's configuration over `dsn` ("" = embedded under `base`), with the
    ops listener on `ops_port` and a fast health probe."""
    return load_config(
        None,
        env={},
        overrides={
            "server": {"listen": "127.0.0.1:0", "data_dir": str(base), "dev_mode": True},
            "admin": {"socket": str(base / "admin.sock")},
            "ops": {"listen": f"127.0.0.1:{ops_port}", "health_interval_seconds": health_interval},
            "database": {"dsn": dsn},
            "sync": {"heartbeat_interval_seconds": 5, "idle_timeout_seconds": 30, **sync},
        },
    )


@contextlib.asynccontextmanager
async def running_daemon(config: Config) -> AsyncIterator[RunningDaemon]:
    pki = ensure_dev_pki(config.server.tls_cert.parent)
    daemon = Daemon(config)
    try:
        await daemon.startup()
        yield RunningDaemon(daemon, config, pki, config.server.data_dir)
    finally:
        await daemon.shutdown()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])

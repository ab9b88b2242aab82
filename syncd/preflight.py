"""What the daemon checks before it serves, and the one-line error it gives when a check fails.

Strategy: every start-up failure an operator can cause (a file that does not parse, a port
already taken, a database that does not answer, a data directory another daemon owns) is
raised as `StartupError(setting, cause)`: the setting to look at and what is wrong with it,
in one line. The CLI prints that line and exits non-zero; the traceback is for `--debug`.
The same file checks serve `syncd check-config`, so it fails on exactly what `serve` would.

The data-directory lock is an `flock` on `<data_dir>/syncd.lock`, taken before the
database is touched: a second daemon on the same directory would otherwise attach to the
first one's embedded PostgreSQL and replace its admin socket. `flock` is released by the
kernel when the process dies, so a crash never leaves a stale lock behind.
"""

from __future__ import annotations

import errno
import fcntl
import os
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from syncd.auth import KeyConfigError, load_jwks, load_public_key_pem
from syncd.config import Config
from syncd.tls_tickets import TicketKeyError, install_ticket_key, key_name, read_ticket_key

__all__ = [
    "DataDirLock",
    "StartupError",
    "check_files",
    "inert_settings",
    "install_ticket_key_file",
    "listen_error",
    "server_tls_context",
]

LOCK_NAME = "syncd.lock"


class StartupError(Exception):
    """The daemon cannot start; `setting` names what to fix and `cause` says why."""

    def __init__(self, setting: str, cause: str) -> None:
        super().__init__(f"{setting}: {cause}")
        self.setting = setting
        self.cause = cause


class DataDirLock:
    """An exclusive lock on a data directory, held for the daemon's whole life."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise StartupError naming the process that holds it."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise StartupError(
                "server.data_dir", f"cannot create {self.path}: {exc.strerror}"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                raise StartupError(
                    "server.data_dir",
                    f"{self.path.parent} is in use by another syncd (pid {holder}); stop it "
                    "or give this daemon a data_dir of its own",
                ) from None
            raise StartupError(
                "server.data_dir", f"cannot lock {self.path}: {exc.strerror}"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        # The file stays: unlinking it would let a third daemon lock a new inode while a
        # second one still waits on the old.
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)


def server_tls_context(
    cert: Path, key: Path, *, prefix: str, ticket_key: Path | None = None
) -> ssl.SSLContext:
    """A server-side TLS context from `cert`/`key`, its session tickets encrypted with the
    key in `ticket_key` when given (``syncd.tls_tickets``); errors name
    `<prefix>.tls_cert|tls_key|tls_ticket_key`."""
    for name, path in (("tls_cert", cert), ("tls_key", key)):
        try:
            path.read_bytes()
        except OSError as exc:
            raise StartupError(f"{prefix}.{name}", f"cannot read {path}: {exc.strerror}") from None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(cert, key)
    except (ssl.SSLError, ValueError) as exc:
        setting, cause = _diagnose(cert, key, exc)
        raise StartupError(f"{prefix}.{setting}", cause) from None
    # One ticket per handshake, not OpenSSL's two: a device resumes with its latest session
    # only, and each ticket costs the server an encryption and a record (ARCHITECTURE.md,
    # issue 10, "TLS session resumption").
    ctx.num_tickets = 1
    if ticket_key is not None:
        install_ticket_key_file(ctx, ticket_key, f"{prefix}.tls_ticket_key")
    return ctx


def install_ticket_key_file(ctx: ssl.SSLContext, path: Path, setting: str) -> str:
    """Give `ctx` the ticket key in `path`; its name (public, for the log), or
    StartupError naming `setting`."""
    try:
        key = read_ticket_key(path)
        install_ticket_key(ctx, key)
    except TicketKeyError as exc:
        raise StartupError(setting, str(exc)) from None
    return key_name(key)


def _diagnose(cert: Path, key: Path, exc: Exception) -> tuple[str, str]:
    """Which half of a certificate/key pair OpenSSL refused, and why (its own message,
    'PEM lib', names neither)."""
    try:
        x509.load_pem_x509_certificates(cert.read_bytes())
    except ValueError:
        return "tls_cert", f"{cert} is not a PEM certificate"
    try:
        serialization.load_pem_private_key(key.read_bytes(), password=None)
    except (ValueError, TypeError):
        return "tls_key", f"{key} is not an unencrypted PEM private key"
    reason = getattr(exc, "reason", None) or str(exc)
    return "tls_key", f"{key} does not match the certificate {cert} ({reason})"


def listen_error(setting: str, address: str, exc: OSError) -> StartupError:
    """The one line for a listener that could not bind."""
    if exc.errno == errno.EADDRINUSE:
        return StartupError(setting, f"{address} is already in use by another process")
    if exc.errno == errno.EACCES:
        return StartupError(setting, f"{address}: permission denied (ports below 1024 need it)")
    return StartupError(setting, f"cannot listen on {address}: {exc.strerror or exc}")


def check_files(config: Config) -> None:
    """Every file the configuration names exists and parses; raise StartupError otherwise.

    In dev mode the server certificate and key are generated when missing, so only files
    that exist are checked there.
    """
    server = config.server
    if not server.dev_mode or server.tls_cert.exists() or server.tls_key.exists():
        server_tls_context(
            server.tls_cert, server.tls_key, prefix="server", ticket_key=server.tls_ticket_key
        )
    elif server.tls_ticket_key is not None:
        install_ticket_key_file(
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH),
            server.tls_ticket_key,
            "server.tls_ticket_key",
        )
    admin = config.admin
    if admin.tcp_listen is not None and admin.tls_cert and admin.tls_key and admin.client_ca:
        ctx = server_tls_context(admin.tls_cert, admin.tls_key, prefix="admin")
        _load_ca(ctx, admin.client_ca, "admin.client_ca")
    auth = config.auth
    if auth.jwks_file is not None:
        data = _read(auth.jwks_file, "auth.jwks_file")
        try:
            keys = load_jwks(data, source=str(auth.jwks_file))
        except KeyConfigError as exc:
            raise StartupError("auth.jwks_file", str(exc)) from None
        if not keys:
            raise StartupError("auth.jwks_file", f"{auth.jwks_file} holds no signature key")
    for path in auth.public_keys:
        try:
            load_public_key_pem(_read(path, "auth.public_keys"), source=str(path))
        except KeyConfigError as exc:
            raise StartupError("auth.public_keys", str(exc)) from None
    if auth.jwks_ca_file is not None:
        _load_ca(ssl.create_default_context(), auth.jwks_ca_file, "auth.jwks_ca_file")


def _read(path: Path, setting: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise StartupError(setting, f"cannot read {path}: {exc.strerror}") from None


def _load_ca(ctx: ssl.SSLContext, path: Path, setting: str) -> None:
    _read(path, setting)
    try:
        ctx.load_verify_locations(path)
    except ssl.SSLError as exc:
        raise StartupError(
            setting, f"{path} is not a PEM CA certificate ({exc.reason or exc})"
        ) from None


_NO_ADMIN_TCP = "has no effect without admin.tcp_listen"
_NO_KEY_URL = "has no effect without auth.jwks_url or auth.oidc_discovery"
# Settings that do nothing unless another one is in force: (setting, enabled by, warning).
_NEEDS: tuple[tuple[str, tuple[str, ...], str], ...] = (
    ("admin.tls_cert", ("admin.tcp_listen",), _NO_ADMIN_TCP),
    ("admin.tls_key", ("admin.tcp_listen",), _NO_ADMIN_TCP),
    ("admin.client_ca", ("admin.tcp_listen",), _NO_ADMIN_TCP),
    ("auth.jwks_ca_file", ("auth.jwks_url", "auth.oidc_discovery"), _NO_KEY_URL),
    ("auth.jwks_refresh_seconds", ("auth.jwks_url", "auth.oidc_discovery"), _NO_KEY_URL),
    ("auth.jwks_min_refresh_seconds", ("auth.jwks_url", "auth.oidc_discovery"), _NO_KEY_URL),
)


def inert_settings(config: Config) -> list[str]:
    """Warnings, one per setting that is set but changes nothing in this configuration."""
    active = {
        "admin.tcp_listen": config.admin.tcp_listen is not None,
        "auth.jwks_url": bool(config.auth.jwks_url),
        "auth.oidc_discovery": config.auth.oidc_discovery,
    }
    return [
        f"{setting}: {message}"
        for setting, needs, message in _NEEDS
        if setting in config.explicit and not any(active[need] for need in needs)
    ]

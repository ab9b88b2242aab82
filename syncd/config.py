"""One typed, validated configuration object for the daemon.

Strategy: layers are merged as raw values, then validated once. The layers, later ones
winning, are the built-in defaults, the TOML file, `SYNCD_<SECTION>__<KEY>` environment
variables, and `overrides` from the command line. Each section is read through a
`_Section` that knows where every value came from, converts environment strings to the
key's type, and refuses keys nobody read: a typo in the file or in a variable name is an
error, never a silently ignored setting. Every error names the key (and the variable, for
environment values) and says what was expected and what was found.

The result is a tree of frozen dataclasses; lower layers receive plain values out of it,
never the whole object. Relative paths resolve against the config file's directory (or the
working directory without a file), so a config behaves the same wherever it is run from.

HS256/384/512 (shared-secret JWTs) are deliberately not supported: the secret that verifies
a token also mints one, so every syncd instance would hold a key that can impersonate any
user of any org, and an allow-list mixing HS* with public-key algorithms is what makes the
classic algorithm-confusion attack possible. Identity providers (Azure AD, Auth0, Keycloak)
all publish asymmetric keys, so refusing HS* costs nothing real.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, is_dataclass
from pathlib import Path
from typing import Any, Final

from syncd.logs import REDACTED, is_secret_name, scrub_text

__all__ = [
    "SUPPORTED_ALGORITHMS",
    "AdminConfig",
    "AuthConfig",
    "Config",
    "ConfigError",
    "DatabaseConfig",
    "HostPort",
    "LoggingConfig",
    "OpsConfig",
    "ServerConfig",
    "SyncConfig",
    "load_config",
    "redacted",
]

ENV_PREFIX: Final = "SYNCD_"

# Public-key JWS algorithms PyJWT implements. "none" and HS* are never accepted (see above).
SUPPORTED_ALGORITHMS: Final = frozenset(
    {"ES256", "ES384", "ES512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "EdDSA"}
)
DEFAULT_ALGORITHMS: Final = ("ES256", "RS256", "EdDSA")

# sun_path in struct sockaddr_un is 108 bytes on Linux including the trailing NUL; a longer
# admin socket path fails at bind time with an obscure error, so catch it here.
_MAX_UNIX_SOCKET_PATH: Final = 107

_LOG_LEVELS: Final = ("debug", "info", "warning", "error", "critical")
_LOG_FORMATS: Final = ("json", "text")


class ConfigError(ValueError):
    """The configuration is invalid; the message names the key and the problem."""


@dataclass(frozen=True)
class HostPort:
    """A listen address. `host` is bare (no brackets) so it can go straight to bind()."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class ServerConfig:
    """``[server]``: the device endpoint's address, TLS files, data directory and instance name."""

    listen: HostPort
    tls_cert: Path
    tls_key: Path
    data_dir: Path
    instance_name: str
    dev_mode: bool
    tls_ticket_key: Path | None = None
    """The TLS session-ticket key file (``syncd.tls_tickets``), shared by every instance
    so a device resumes its TLS session after a restart or on another instance; None:
    OpenSSL's random key of this process."""


@dataclass(frozen=True)
class AdminConfig:
    """``[admin]``: the admin socket, and optionally a TCP listener with mutual TLS."""

    socket: Path
    tcp_listen: HostPort | None
    tls_cert: Path | None
    tls_key: Path | None
    client_ca: Path | None


@dataclass(frozen=True)
class OpsConfig:
    """``[ops]``: the metrics and health endpoint, and how often the databases are probed."""

    listen: HostPort | None  # None: the metrics/health endpoint is disabled
    health_interval_seconds: float
    """How often the control database and every org's staging database are probed (and
    the embedded PostgreSQL's process checked): readiness is at most this stale."""
    gc_freeze_waves: bool = True
    """``syncd serve`` freezes the garbage collector's objects after waves of new sessions
    (``syncd.gc_freeze``); false: only after start-up."""


@dataclass(frozen=True)
class DatabaseConfig:
    """``[database]``: the control database DSN (empty: embedded PostgreSQL) and pool size."""

    dsn: str  # empty: run the embedded PostgreSQL under `embedded_dir`
    pool_max: int
    embedded_dir: Path

    @property
    def embedded(self) -> bool:
        return not self.dsn


@dataclass(frozen=True)
class AuthConfig:
    """``[auth]``: who issues device tokens, for whom, with which algorithms and keys."""

    issuer: str
    audience: str
    algorithms: tuple[str, ...]
    jwks_file: Path | None
    jwks_url: str  # empty: none (or found by OIDC discovery when oidc_discovery is set)
    oidc_discovery: bool
    jwks_ca_file: Path | None  # the CA that signs the key server's certificate, if private
    jwks_refresh_seconds: float
    jwks_min_refresh_seconds: float
    public_keys: tuple[Path, ...]
    leeway_seconds: float

    @property
    def remote_keys(self) -> bool:
        """True when keys are fetched over HTTPS (a JWKS URL or OIDC discovery)."""
        return bool(self.jwks_url) or self.oidc_discovery


@dataclass(frozen=True)
class SyncConfig:
    """``[sync]``: batch and frame sizes, timers, checkpoint intervals, change retention."""

    batch_size: int
    max_frame_size: int
    heartbeat_interval_seconds: float
    handshake_timeout_seconds: float
    max_tls_handshakes: int
    """TLS handshakes of device connections run at once; more accepted ones wait a turn."""
    idle_timeout_seconds: float
    token_expiry_warning_seconds: float
    shutdown_grace_seconds: float
    drain_retry_after_seconds: float
    send_queue_frames: int
    change_retention_hours: int
    checkpoint_rows: int
    checkpoint_bytes: int
    error_retention_rows: int
    error_retention_days: int
    max_first_downloads: int
    """First downloads (devices with no sync token) running at once on this instance."""
    max_first_downloads_per_org: int
    """...and of one org, so one org's storm leaves room for the others."""
    busy_retry_after_seconds: float
    """The base delay given to a device refused for those budgets (spread over 1x-2x)."""
    initial_read_order: str
    """How unfiltered entities are read for a download from scratch: "key" (keyset pages in
    key order) or "storage" (heap block ranges, key order within a page; ARCHITECTURE.md,
    issue 16)."""


@dataclass(frozen=True)
class LoggingConfig:
    """``[logging]``: the level and the format (JSON lines, or text for a terminal)."""

    level: str
    format: str


@dataclass(frozen=True)
class Config:
    """The daemon's whole configuration, validated: one section per table of the TOML file."""

    server: ServerConfig
    admin: AdminConfig
    ops: OpsConfig
    database: DatabaseConfig
    auth: AuthConfig
    sync: SyncConfig
    logging: LoggingConfig
    source: Path | None  # the TOML file this came from, if any
    explicit: frozenset[str] = frozenset()
    """The `section.key` names set by the file, the environment or overrides (for the
    warnings `check-config` gives about settings that have no effect)."""


_SECTIONS: Final = ("server", "admin", "ops", "database", "auth", "sync", "logging")
# Settings that existed and were removed: naming them beats "unknown key" for an operator
# upgrading with an old file.
_REMOVED: Final = {
    "database.pool_min": "removed (it was never used: pools open connections on demand, "
    "up to pool_max); delete it",
    "auth.dev_signing_key": "removed (it was never used: dev mode keeps its token key at "
    "dev-token.key beside server.tls_cert); delete it",
}
_Missing = object()


class _Section:
    """Raw values of one section plus where each came from; typed readers consume them."""

    def __init__(self, name: str, base: Path) -> None:
        self.name = name
        self.base = base
        self.values: dict[str, object] = {}
        self.origin: dict[str, str] = {}  # key -> env var name, for values from the environment
        self.read: set[str] = set()

    def _where(self, key: str) -> str:
        var = self.origin.get(key)
        return f"{self.name}.{key}" + (f" (from {var})" if var else "")

    def error(self, key: str, problem: str) -> ConfigError:
        return ConfigError(f"{self._where(key)}: {problem}")

    def _get(self, key: str) -> object:
        self.read.add(key)
        return self.values.get(key, _Missing)

    def _from_env(self, key: str) -> bool:
        return key in self.origin

    def has(self, key: str) -> bool:
        return key in self.values

    def integer(self, key: str, default: int, lo: int, hi: int) -> int:
        raw = self._get(key)
        if raw is _Missing:
            return default
        value: object = raw
        if isinstance(raw, str) and self._from_env(key):
            try:
                value = int(raw.strip())
            except ValueError:
                value = raw
        if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
            raise self.error(key, f"must be an integer between {lo} and {hi}, got {raw!r}")
        return value

    def number(self, key: str, default: float, lo: float, hi: float) -> float:
        raw = self._get(key)
        if raw is _Missing:
            return default
        value: object = raw
        if isinstance(raw, str) and self._from_env(key):
            try:
                value = float(raw.strip())
            except ValueError:
                value = raw
        if not isinstance(value, int | float) or isinstance(value, bool) or not lo <= value <= hi:
            raise self.error(key, f"must be a number between {lo:g} and {hi:g}, got {raw!r}")
        return float(value)

    def boolean(self, key: str, default: bool) -> bool:
        raw = self._get(key)
        if raw is _Missing:
            return default
        if isinstance(raw, str) and self._from_env(key):
            lowered = raw.strip().lower()
            if lowered in ("true", "1", "yes", "on"):
                return True
            if lowered in ("false", "0", "no", "off"):
                return False
        if not isinstance(raw, bool):
            raise self.error(key, f"must be true or false, got {raw!r}")
        return raw

    def string(self, key: str, default: str) -> str:
        raw = self._get(key)
        if raw is _Missing:
            return default
        if not isinstance(raw, str):
            raise self.error(key, f"must be a string, got {raw!r}")
        return raw

    def choice(self, key: str, default: str, allowed: tuple[str, ...]) -> str:
        value = self.string(key, default).lower()
        if value not in allowed:
            raise self.error(key, f"must be one of {', '.join(allowed)}, got {value!r}")
        return value

    def string_list(self, key: str, default: tuple[str, ...]) -> tuple[str, ...]:
        raw = self._get(key)
        if raw is _Missing:
            return default
        if isinstance(raw, str) and self._from_env(key):
            # Environment lists are comma-separated: `SYNCD_AUTH__ALGORITHMS=ES256,RS256`.
            return tuple(item.strip() for item in raw.split(",") if item.strip())
        if not isinstance(raw, list) or not all(isinstance(item, str) for item in raw):
            raise self.error(key, f"must be a list of strings, got {raw!r}")
        return tuple(raw)

    def path(self, key: str, default: Path) -> Path:
        found = self.optional_path(key)
        return default if found is None else found

    def optional_path(self, key: str) -> Path | None:
        raw = self._get(key)
        if raw is _Missing:
            return None
        if not isinstance(raw, str) or not raw:
            raise self.error(key, f"must be a non-empty path string, got {raw!r}")
        return self.resolve(raw)

    def path_list(self, key: str) -> tuple[Path, ...]:
        items = self.string_list(key, ())
        if any(not item for item in items):
            raise self.error(key, "paths must not be empty")
        return tuple(self.resolve(item) for item in items)

    def resolve(self, raw: str) -> Path:
        path = Path(raw).expanduser()
        return path if path.is_absolute() else (self.base / path).resolve()

    def host_port(self, key: str, default: str, *, allow_empty: bool = False) -> HostPort | None:
        raw = self.string(key, default).strip()
        if not raw and allow_empty:
            return None
        try:
            return parse_host_port(raw)
        except ValueError as exc:
            raise self.error(key, f"{exc}, got {raw!r}") from None

    def finish(self) -> None:
        unknown = sorted(set(self.values) - self.read)
        if unknown:
            removed = _REMOVED.get(f"{self.name}.{unknown[0]}")
            raise self.error(unknown[0], removed or "unknown key (check the spelling)")


def parse_host_port(text: str) -> HostPort:
    """Parse `host:port` or `[ipv6]:port`; port 0 means "any free port" (tests)."""
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise ValueError("must be host:port or [ipv6]:port")
        port_text = rest[1:]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError("bracketed host must be an IPv6 address") from None
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep or not host:
            raise ValueError("must be host:port or [ipv6]:port")
        if ":" in host:
            raise ValueError("an IPv6 host must be written in brackets, like [::1]:7443")
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError("port must be an integer between 0 and 65535")
    return HostPort(host, int(port_text))


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None


def _merge_layers(
    sections: dict[str, _Section],
    document: Mapping[str, Any],
    env: Mapping[str, str],
    overrides: Mapping[str, Mapping[str, object]],
) -> None:
    for name, table in document.items():
        if name not in sections:
            raise ConfigError(f"{name}: unknown section (expected one of {', '.join(_SECTIONS)})")
        if not isinstance(table, dict):
            raise ConfigError(f"{name}: must be a table ([{name}]), got {table!r}")
        sections[name].values.update(table)
    for var, value in env.items():
        if not var.startswith(ENV_PREFIX) or "__" not in var:
            continue
        section_name, _, key = var[len(ENV_PREFIX) :].partition("__")
        section = sections.get(section_name.lower())
        if section is None or not key:
            raise ConfigError(f"{var}: unknown section {section_name.lower()!r} in variable name")
        section.values[key.lower()] = value
        section.origin[key.lower()] = var
    for name, table in overrides.items():
        if name not in sections:
            raise ConfigError(f"{name}: unknown section in overrides")
        for key, setting in table.items():
            sections[name].values[key] = setting
            sections[name].origin.pop(key, None)


def load_config(
    path: Path | None,
    env: Mapping[str, str] = os.environ,
    *,
    overrides: Mapping[str, Mapping[str, object]] | None = None,
) -> Config:
    """Build the configuration from `path` (optional), `env` and command-line `overrides`.

    `overrides` maps section -> key -> value with TOML types; it wins over everything, so
    `syncd dev` can force `server.dev_mode = true` whatever the file says.
    """
    document = _read_toml(path) if path is not None else {}
    base = path.resolve().parent if path is not None else Path.cwd()
    sections = {name: _Section(name, base) for name in _SECTIONS}
    _merge_layers(sections, document, env, overrides or {})

    server = _server(sections["server"])
    config = Config(
        server=server,
        admin=_admin(sections["admin"], server.data_dir),
        ops=OpsConfig(
            listen=sections["ops"].host_port("listen", "127.0.0.1:9464", allow_empty=True),
            health_interval_seconds=sections["ops"].number(
                "health_interval_seconds", 1.0, 0.05, 60.0
            ),
            gc_freeze_waves=sections["ops"].boolean("gc_freeze_waves", True),
        ),
        database=_database(sections["database"], server.data_dir),
        auth=_auth(sections["auth"], server),
        sync=_sync(sections["sync"]),
        logging=LoggingConfig(
            level=sections["logging"].choice("level", "info", _LOG_LEVELS),
            format=sections["logging"].choice("format", "json", _LOG_FORMATS),
        ),
        source=path.resolve() if path is not None else None,
        explicit=frozenset(f"{s.name}.{key}" for s in sections.values() for key in s.values),
    )
    for section in sections.values():
        section.finish()
    return config


def _server(s: _Section) -> ServerConfig:
    data_dir = s.path("data_dir", s.resolve("var"))
    listen = s.host_port("listen", "127.0.0.1:7443")
    assert listen is not None
    instance_name = s.string("instance_name", socket.gethostname()).strip()
    if not instance_name:
        raise s.error("instance_name", "must not be empty")
    return ServerConfig(
        listen=listen,
        tls_cert=s.path("tls_cert", data_dir / "certs" / "server.pem"),
        tls_key=s.path("tls_key", data_dir / "certs" / "server.key"),
        data_dir=data_dir,
        instance_name=instance_name,
        dev_mode=s.boolean("dev_mode", False),
        tls_ticket_key=s.optional_path("tls_ticket_key"),
    )


def _admin(s: _Section, data_dir: Path) -> AdminConfig:
    sock = s.path("socket", data_dir / "admin.sock")
    if len(os.fsencode(sock)) > _MAX_UNIX_SOCKET_PATH:
        raise s.error(
            "socket",
            f"path is {len(os.fsencode(sock))} bytes; Unix sockets allow at most "
            f"{_MAX_UNIX_SOCKET_PATH} (use a shorter data_dir or set admin.socket)",
        )
    tcp_listen = s.host_port("tcp_listen", "", allow_empty=True)
    tls = {key: s.optional_path(key) for key in ("tls_cert", "tls_key", "client_ca")}
    if tcp_listen is not None:
        for key, value in tls.items():
            if value is None:
                raise s.error(key, "required when admin.tcp_listen is set (mutual TLS)")
    return AdminConfig(
        socket=sock,
        tcp_listen=tcp_listen,
        tls_cert=tls["tls_cert"],
        tls_key=tls["tls_key"],
        client_ca=tls["client_ca"],
    )


def _database(s: _Section, data_dir: Path) -> DatabaseConfig:
    pool_max = s.integer("pool_max", 10, 1, 1000)
    dsn = s.string("dsn", "").strip()
    if dsn and not (dsn.startswith(("postgresql://", "postgres://")) or "=" in dsn):
        raise s.error("dsn", "must be a postgresql:// URL or libpq key=value string")
    return DatabaseConfig(dsn=dsn, pool_max=pool_max, embedded_dir=data_dir / "pg")


def _auth(s: _Section, server: ServerConfig) -> AuthConfig:
    algorithms = s.string_list("algorithms", DEFAULT_ALGORITHMS)
    if not algorithms:
        raise s.error("algorithms", "must list at least one algorithm")
    for alg in algorithms:
        if alg.lower() == "none" or alg.upper().startswith("HS"):
            raise s.error(
                "algorithms",
                f"{alg!r} is refused: unsigned and shared-secret tokens are not supported "
                "(use ES256, RS256 or EdDSA keys from your identity provider)",
            )
        if alg not in SUPPORTED_ALGORITHMS:
            raise s.error(
                "algorithms",
                f"unknown algorithm {alg!r}; supported: {', '.join(sorted(SUPPORTED_ALGORITHMS))}",
            )
    # In dev mode syncd mints its own tokens (`syncctl token`), so it can fill in an
    # issuer and audience; in production a missing value would accept any issuer.
    dev_issuer, dev_audience = ("syncd-dev", "syncd") if server.dev_mode else ("", "")
    issuer = s.string("issuer", dev_issuer).strip()
    audience = s.string("audience", dev_audience).strip()
    jwks_file = s.optional_path("jwks_file")
    jwks_url = s.string("jwks_url", "").strip()
    if jwks_url and not jwks_url.lower().startswith("https://"):
        # Keys fetched over plain HTTP could be swapped by anyone on the path.
        raise s.error("jwks_url", f"must be an https:// URL, got {jwks_url!r}")
    discovery = s.boolean("oidc_discovery", False)
    if discovery and jwks_url:
        raise s.error("oidc_discovery", "set either jwks_url or oidc_discovery, not both")
    if discovery and not issuer.lower().startswith("https://"):
        raise s.error(
            "oidc_discovery",
            f"needs an https:// auth.issuer to find <issuer>/.well-known/openid-configuration, "
            f"got {issuer!r}",
        )
    refresh = s.number("jwks_refresh_seconds", 3600.0, 1.0, 7 * 86400.0)
    min_refresh = s.number("jwks_min_refresh_seconds", 30.0, 0.0, 86400.0)
    public_keys = s.path_list("public_keys")
    leeway = s.number("leeway_seconds", 30.0, 0.0, 600.0)
    if not server.dev_mode:
        if not issuer:
            raise s.error("issuer", "required unless server.dev_mode = true")
        if not audience:
            raise s.error("audience", "required unless server.dev_mode = true")
        if jwks_file is None and not public_keys and not jwks_url and not discovery:
            raise s.error(
                "jwks_file",
                "jwks_file, jwks_url, oidc_discovery or public_keys is required unless "
                "server.dev_mode = true",
            )
    return AuthConfig(
        issuer=issuer,
        audience=audience,
        algorithms=algorithms,
        jwks_file=jwks_file,
        jwks_url=jwks_url,
        oidc_discovery=discovery,
        jwks_ca_file=s.optional_path("jwks_ca_file"),
        jwks_refresh_seconds=refresh,
        jwks_min_refresh_seconds=min_refresh,
        public_keys=public_keys,
        leeway_seconds=leeway,
    )


def _sync(s: _Section) -> SyncConfig:
    heartbeat = s.number("heartbeat_interval_seconds", 30.0, 0.1, 3600.0)
    idle = s.number("idle_timeout_seconds", 90.0, 0.1, 86400.0)
    if idle <= heartbeat:
        # A device that only sends heartbeats must never look idle.
        raise s.error(
            "idle_timeout_seconds",
            f"must be greater than heartbeat_interval_seconds ({heartbeat:g}), got {idle:g}",
        )
    return SyncConfig(
        batch_size=s.integer("batch_size", 1000, 1, 100_000),
        max_frame_size=s.integer("max_frame_size", 4 * 1024 * 1024, 1024, 256 * 1024 * 1024),
        heartbeat_interval_seconds=heartbeat,
        handshake_timeout_seconds=s.number("handshake_timeout_seconds", 10.0, 0.1, 600.0),
        max_tls_handshakes=s.integer("max_tls_handshakes", 256, 1, 1_000_000),
        idle_timeout_seconds=idle,
        token_expiry_warning_seconds=s.number("token_expiry_warning_seconds", 120.0, 0.0, 86400.0),
        shutdown_grace_seconds=s.number("shutdown_grace_seconds", 10.0, 0.0, 3600.0),
        drain_retry_after_seconds=s.number("drain_retry_after_seconds", 5.0, 0.0, 3600.0),
        send_queue_frames=s.integer("send_queue_frames", 256, 1, 1_000_000),
        change_retention_hours=s.integer("change_retention_hours", 168, 1, 24 * 3650),
        checkpoint_rows=s.integer("checkpoint_rows", 20_000, 1, 10_000_000),
        checkpoint_bytes=s.integer(
            "checkpoint_bytes", 4 * 1024 * 1024, 64 * 1024, 1024 * 1024 * 1024
        ),
        # The sync error table (issue 11), per org: at most this many, none older.
        error_retention_rows=s.integer("error_retention_rows", 10_000, 1, 10_000_000),
        error_retention_days=s.integer("error_retention_days", 30, 1, 3650),
        # Admission of first downloads (issue 10, syncd/server/admission.py).
        max_first_downloads=s.integer("max_first_downloads", 1024, 1, 1_000_000),
        max_first_downloads_per_org=s.integer("max_first_downloads_per_org", 512, 1, 1_000_000),
        busy_retry_after_seconds=s.number("busy_retry_after_seconds", 2.0, 0.01, 3600.0),
        initial_read_order=s.choice("initial_read_order", "key", ("key", "storage")),
    )


def _plain(value: object, name: str, convert: Callable[[str, object], object]) -> object:
    if is_dataclass(value) and not isinstance(value, type):
        if isinstance(value, HostPort):
            return str(value)
        return {f.name: _plain(getattr(value, f.name), f.name, convert) for f in fields(value)}
    if isinstance(value, tuple):
        return [_plain(item, name, convert) for item in value]
    return convert(name, value)


def _redact_leaf(name: str, value: object) -> object:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, str):
        return REDACTED if value and is_secret_name(name) else scrub_text(value)
    return value


def redacted(config: Config) -> dict[str, Any]:
    """The effective configuration as JSON-ready data, secrets masked, for `check-config`.

    Paths to key material are shown (knowing which file is used is the point), but DSN
    passwords and any secret-named value are replaced by "***".
    """
    result = _plain(config, "", _redact_leaf)
    assert isinstance(result, dict)
    del result["explicit"]  # bookkeeping, not a setting
    return result

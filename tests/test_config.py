"""Configuration: defaults, TOML, environment overrides, errors that name their key."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from syncd.config import ConfigError, HostPort, load_config, redacted

DEV = {"SYNCD_SERVER__DEV_MODE": "true"}

PRODUCTION_AUTH = """
[auth]
issuer = "https://login.example.com/"
audience = "syncd"
public_keys = ["keys/idp.pem"]
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "syncd.toml"
    path.write_text(text)
    return path


def test_defaults_in_dev_mode(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    config = load_config(None, DEV)
    assert config.server.listen == HostPort("127.0.0.1", 7443)
    assert config.server.data_dir == tmp_path / "var"
    assert config.server.tls_cert == tmp_path / "var" / "certs" / "server.pem"
    assert config.server.tls_key == tmp_path / "var" / "certs" / "server.key"
    assert config.server.instance_name == socket.gethostname()
    assert config.admin.socket == tmp_path / "var" / "admin.sock"
    assert config.admin.tcp_listen is None
    assert config.ops.listen == HostPort("127.0.0.1", 9464)
    assert config.database.embedded
    assert config.sync.initial_read_order == "key"
    assert config.database.embedded_dir == tmp_path / "var" / "pg"
    assert config.database.pool_max == 10
    assert config.ops.health_interval_seconds == 1.0
    assert config.ops.gc_freeze_waves is True
    assert config.auth.algorithms == ("ES256", "RS256", "EdDSA")
    assert config.auth.leeway_seconds == 30
    assert (config.auth.jwks_url, config.auth.oidc_discovery) == ("", False)
    assert config.sync.batch_size == 1000
    assert config.sync.max_frame_size == 4194304
    assert config.sync.heartbeat_interval_seconds == 30
    assert config.sync.idle_timeout_seconds == 90
    assert config.sync.change_retention_hours == 168
    assert (config.logging.level, config.logging.format) == ("info", "json")
    assert config.source is None


def test_toml_file_values_and_paths_relative_to_the_file(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        PRODUCTION_AUTH
        + """
[server]
listen = "[::1]:8443"
data_dir = "state"
instance_name = "syncd-a"

[admin]
tcp_listen = "0.0.0.0:7444"
tls_cert = "/etc/syncd/admin.pem"
tls_key = "/etc/syncd/admin.key"
client_ca = "ca.pem"

[ops]
listen = ""

[database]
dsn = "postgresql://syncd:hunter2@db.internal/control"
pool_max = 40

[sync]
batch_size = 5000
heartbeat_interval_seconds = 2.5

[logging]
level = "DEBUG"
format = "text"
""",
    )
    config = load_config(path, {})
    assert config.server.listen == HostPort("::1", 8443)
    assert str(config.server.listen) == "[::1]:8443"
    assert config.server.data_dir == tmp_path / "state"
    assert config.server.tls_cert == tmp_path / "state" / "certs" / "server.pem"
    assert config.admin.tcp_listen == HostPort("0.0.0.0", 7444)
    assert config.admin.client_ca == tmp_path / "ca.pem"
    assert config.admin.tls_cert == Path("/etc/syncd/admin.pem")
    assert config.ops.listen is None
    assert not config.database.embedded
    assert config.database.pool_max == 40
    assert config.auth.public_keys == (tmp_path / "keys" / "idp.pem",)
    assert config.sync.batch_size == 5000
    assert config.sync.heartbeat_interval_seconds == 2.5
    assert config.logging.level == "debug"
    assert config.logging.format == "text"
    assert config.source == path


def test_environment_overrides_convert_to_the_key_type(tmp_path: Path) -> None:
    path = write(tmp_path, PRODUCTION_AUTH + "[sync]\nbatch_size = 10\n")
    config = load_config(
        path,
        {
            "SYNCD_SYNC__BATCH_SIZE": "2000",
            "SYNCD_DATABASE__DSN": "postgresql://u@h/db",
            "SYNCD_SERVER__DEV_MODE": "yes",
            "SYNCD_SYNC__SHUTDOWN_GRACE_SECONDS": "0.5",
            "SYNCD_AUTH__ALGORITHMS": "ES256, EdDSA",
            "SYNCD_OPS__LISTEN": "",
            "SYNCD_OPS__GC_FREEZE_WAVES": "false",
            "SYNCD_CONFIG": "ignored: not a SECTION__KEY variable",
            "HOME": "/root",
        },
    )
    assert config.sync.batch_size == 2000
    assert config.database.dsn == "postgresql://u@h/db"
    assert config.server.dev_mode is True
    assert config.sync.shutdown_grace_seconds == 0.5
    assert config.auth.algorithms == ("ES256", "EdDSA")
    assert config.ops.listen is None
    assert config.ops.gc_freeze_waves is False


def test_command_line_overrides_win_over_environment(tmp_path: Path) -> None:
    config = load_config(
        None,
        {"SYNCD_SYNC__BATCH_SIZE": "2000", **DEV},
        overrides={"sync": {"batch_size": 7}, "server": {"data_dir": str(tmp_path)}},
    )
    assert config.sync.batch_size == 7
    assert config.server.data_dir == tmp_path


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"SYNCD_SYNC__BATCH_SIZE": "abc"},
            "sync.batch_size (from SYNCD_SYNC__BATCH_SIZE): must be an integer between 1 and "
            "100000, got 'abc'",
        ),
        ({"SYNCD_SYNC__BATCH_SIZE": "0"}, "sync.batch_size (from SYNCD_SYNC__BATCH_SIZE)"),
        ({"SYNCD_SERVER__DEV_MODE": "maybe"}, "server.dev_mode (from SYNCD_SERVER__DEV_MODE)"),
        ({"SYNCD_SERVER__LISTEN": "7443"}, "server.listen (from SYNCD_SERVER__LISTEN)"),
        ({"SYNCD_SERVER__LISTEN": "::1:7443"}, "in brackets"),
        ({"SYNCD_SERVER__LISTEN": "host:99999"}, "port must be an integer between 0 and 65535"),
        ({"SYNCD_SYNC__BATCHSIZE": "5"}, "sync.batchsize (from SYNCD_SYNC__BATCHSIZE): unknown"),
        ({"SYNCD_SYNCH__BATCH_SIZE": "5"}, "SYNCD_SYNCH__BATCH_SIZE: unknown section 'synch'"),
        ({"SYNCD_AUTH__ALGORITHMS": "ES256,none"}, "auth.algorithms (from SYNCD_AUTH__ALG"),
        ({"SYNCD_AUTH__ALGORITHMS": "HS256"}, "'HS256' is refused"),
        ({"SYNCD_AUTH__ALGORITHMS": "XS256"}, "unknown algorithm 'XS256'"),
        (
            {"SYNCD_DATABASE__POOL_MIN": "1"},
            "database.pool_min (from SYNCD_DATABASE__POOL_MIN): removed (it was never used",
        ),
        ({"SYNCD_AUTH__DEV_SIGNING_KEY": "k"}, "auth.dev_signing_key (from SYNCD_AUTH__DEV_SIG"),
        (
            {"SYNCD_AUTH__JWKS_URL": "http://idp/keys"},
            "auth.jwks_url (from SYNCD_AUTH__JWKS_URL): must be an https:// URL",
        ),
        (
            {"SYNCD_AUTH__JWKS_URL": "https://idp/k", "SYNCD_AUTH__OIDC_DISCOVERY": "true"},
            "auth.oidc_discovery (from SYNCD_AUTH__OIDC_DISCOVERY): set either",
        ),
        ({"SYNCD_AUTH__OIDC_DISCOVERY": "true"}, "needs an https:// auth.issuer"),
        ({"SYNCD_OPS__HEALTH_INTERVAL_SECONDS": "0"}, "ops.health_interval_seconds (from"),
        ({"SYNCD_DATABASE__DSN": "mysql:db"}, "database.dsn (from SYNCD_DATABASE__DSN)"),
        ({"SYNCD_LOGGING__LEVEL": "loud"}, "logging.level (from SYNCD_LOGGING__LEVEL)"),
        ({"SYNCD_ADMIN__TCP_LISTEN": "0.0.0.0:7444"}, "admin.tls_cert: required when"),
        (
            {"SYNCD_SYNC__IDLE_TIMEOUT_SECONDS": "30"},
            "sync.idle_timeout_seconds (from SYNCD_SYNC__IDLE_TIMEOUT_SECONDS): must be greater",
        ),
        ({"SYNCD_SERVER__DATA_DIR": "/" + "d" * 120}, "admin.socket: path is"),
    ],
)
def test_environment_errors_name_key_and_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, {**DEV, **env})
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("[sync]\nbatch_size = 'abc'\n", "sync.batch_size: must be an integer between"),
        ("[sync]\nbatch_size = true\n", "sync.batch_size: must be an integer"),
        ("[sync]\nbatch_sise = 5\n", "sync.batch_sise: unknown key"),
        (
            "[sync]\ninitial_read_order = 'heap'\n",
            "sync.initial_read_order: must be one of key, storage, got 'heap'",
        ),
        ("[synk]\nbatch_size = 5\n", "synk: unknown section"),
        ("listen = 'x'\n", "listen: unknown section"),
        ("[server]\ninstance_name = 5\n", "server.instance_name: must be a string, got 5"),
        ("[auth]\nalgorithms = 'ES256'\n", "auth.algorithms: must be a list of strings"),
        ("[auth]\npublic_keys = ['']\n", "auth.public_keys: paths must not be empty"),
        ("[sync\n", "invalid TOML"),
    ],
)
def test_file_errors_name_their_key(tmp_path: Path, toml: str, message: str) -> None:
    path = write(tmp_path, toml)
    with pytest.raises(ConfigError) as info:
        load_config(path, DEV)
    assert message in str(info.value)


def test_production_requires_issuer_audience_and_keys(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^auth\.issuer: required unless server\.dev_mode"):
        load_config(None, {})
    path = write(tmp_path, '[auth]\nissuer = "i"\naudience = "a"\n')
    with pytest.raises(ConfigError, match=r"^auth\.jwks_file: jwks_file, jwks_url, oidc_disc"):
        load_config(path, {})


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "absent.toml", {})


def test_redacted_hides_dsn_passwords_and_keeps_key_paths(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        PRODUCTION_AUTH + '[database]\ndsn = "postgresql://syncd:hunter2@db.internal:5432/ctl"\n',
    )
    shown = redacted(load_config(path, {}))
    text = json.dumps(shown)  # must be JSON-ready as is
    assert "hunter2" not in text
    assert shown["database"]["dsn"] == "postgresql://syncd:***@db.internal:5432/ctl"
    assert shown["auth"]["public_keys"] == [str(tmp_path / "keys" / "idp.pem")]
    assert shown["server"]["listen"] == "127.0.0.1:7443"
    assert shown["sync"]["batch_size"] == 1000

    keyword = load_config(path, {"SYNCD_DATABASE__DSN": "host=db user=syncd password=s3cret"})
    assert redacted(keyword)["database"]["dsn"] == "host=db user=syncd password=***"

"""Start-up failures are one line naming the setting, with a non-zero exit; check-config
checks the files a configuration names and warns about settings that do nothing.

Each case runs the real `syncd` in a subprocess, as an operator would."""

from __future__ import annotations

import socket
from pathlib import Path

from syncd.cli import EXIT_CONFIG, EXIT_STARTUP
from syncd.devcerts import ensure_dev_pki
from syncd.preflight import DataDirLock
from tests.deploy.support import daemon_env, run_syncd


def one_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


def test_unreachable_dsn_names_database_dsn(tmp_path: Path) -> None:
    env = daemon_env(tmp_path / "var", "postgresql://syncd:hunter2@127.0.0.1:1/ctl")
    result = run_syncd(["serve"], env, tmp_path)
    assert result.returncode == EXIT_STARTUP
    line = one_line(result.stderr)
    assert line.startswith("syncd: cannot start: database.dsn: cannot use the control database")
    assert "connection refused" in line
    assert "hunter2" not in line


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    env = daemon_env(tmp_path / "var", "postgresql://syncd@127.0.0.1:1/ctl")
    result = run_syncd(["serve", "--debug"], env, tmp_path)
    assert result.returncode == EXIT_STARTUP
    assert "Traceback" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("syncd: cannot start: database.dsn")


def test_busy_port_names_server_listen(tmp_path: Path, control_dsn: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = daemon_env(tmp_path / "var", control_dsn, SYNCD_SERVER__LISTEN=f"127.0.0.1:{port}")
        result = run_syncd(["serve"], env, tmp_path)
    assert result.returncode == EXIT_STARTUP
    assert one_line(result.stderr) == (
        f"syncd: cannot start: server.listen: 127.0.0.1:{port} is already in use by another process"
    )


def test_busy_ops_port_names_ops_listen(tmp_path: Path, control_dsn: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = daemon_env(tmp_path / "var", control_dsn, SYNCD_OPS__LISTEN=f"127.0.0.1:{port}")
        result = run_syncd(["serve"], env, tmp_path)
    assert result.returncode == EXIT_STARTUP
    assert "ops.listen: 127.0.0.1:" in one_line(result.stderr)


def test_second_daemon_on_the_same_data_dir_stops_before_the_database(tmp_path: Path) -> None:
    data_dir = tmp_path / "var"
    first = DataDirLock(data_dir)  # what a running daemon holds
    first.acquire()
    try:
        # No DSN: the second daemon would start the embedded PostgreSQL if it got that far.
        env = daemon_env(data_dir, "")
        result = run_syncd(["serve"], env, tmp_path)
    finally:
        first.release()
    assert result.returncode == EXIT_STARTUP
    line = one_line(result.stderr)
    assert line.startswith(f"syncd: cannot start: server.data_dir: {data_dir} is in use by")
    assert not (data_dir / "pg").exists()


def test_unreadable_certificate_and_bad_key_name_their_setting(tmp_path: Path) -> None:
    pki = ensure_dev_pki(tmp_path / "certs")
    env = daemon_env(tmp_path / "var", "postgresql://x@127.0.0.1:1/x")
    missing = run_syncd(
        ["serve"],
        {
            **env,
            "SYNCD_SERVER__TLS_CERT": str(tmp_path / "absent.pem"),
            "SYNCD_SERVER__TLS_KEY": str(pki.server_key),
        },
        tmp_path,
    )
    assert missing.returncode == EXIT_STARTUP
    assert one_line(missing.stderr) == (
        f"syncd: cannot start: server.tls_cert: cannot read {tmp_path / 'absent.pem'}: "
        "No such file or directory"
    )
    wrong_key = run_syncd(
        ["serve"],
        {
            **env,
            "SYNCD_SERVER__TLS_CERT": str(pki.server_cert),
            "SYNCD_SERVER__TLS_KEY": str(pki.ca_cert),
        },
        tmp_path,
    )
    assert wrong_key.returncode == EXIT_STARTUP
    assert "server.tls_key" in one_line(wrong_key.stderr)


def test_bad_jwks_file_and_unreachable_jwks_url(tmp_path: Path) -> None:
    jwks = tmp_path / "jwks.json"
    jwks.write_text('{"keys": "not a list"}')
    env = daemon_env(tmp_path / "var", "postgresql://x@127.0.0.1:1/x")
    bad = run_syncd(["serve"], {**env, "SYNCD_AUTH__JWKS_FILE": str(jwks)}, tmp_path)
    assert bad.returncode == EXIT_STARTUP
    assert one_line(bad.stderr).startswith(
        f"syncd: cannot start: auth.jwks_file: {jwks}: not a JWKS document"
    )
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        url = f"https://127.0.0.1:{closed.getsockname()[1]}/keys"  # nothing listens
    down = run_syncd(["serve"], {**env, "SYNCD_AUTH__JWKS_URL": url}, tmp_path)
    assert down.returncode == EXIT_STARTUP
    line = one_line(down.stderr)
    assert line.startswith(f"syncd: cannot start: auth.jwks_url: cannot fetch {url}")
    assert "refused" in line.lower()


def test_check_config_checks_named_files_and_warns_about_inert_settings(tmp_path: Path) -> None:
    config = tmp_path / "syncd.toml"
    config.write_text(
        '[auth]\nissuer = "https://idp"\naudience = "syncd"\njwks_file = "jwks.json"\n'
        'jwks_refresh_seconds = 60\n[admin]\ntls_cert = "admin.pem"\n'
    )
    result = run_syncd(["check-config", "--config", str(config)], {}, tmp_path)
    assert result.returncode == EXIT_CONFIG
    lines = result.stderr.strip().splitlines()
    assert lines == [
        "syncd: warning: admin.tls_cert: has no effect without admin.tcp_listen",
        "syncd: warning: auth.jwks_refresh_seconds: has no effect without auth.jwks_url or "
        "auth.oidc_discovery",
        f"syncd: configuration error: server.tls_cert: cannot read "
        f"{tmp_path / 'var' / 'certs' / 'server.pem'}: No such file or directory",
    ]
    pki = ensure_dev_pki(tmp_path / "var" / "certs")
    assert pki.server_cert.exists()
    missing_jwks = run_syncd(["check-config", "--config", str(config)], {}, tmp_path)
    assert missing_jwks.returncode == EXIT_CONFIG
    assert missing_jwks.stderr.strip().splitlines()[-1] == (
        f"syncd: configuration error: auth.jwks_file: cannot read {tmp_path / 'jwks.json'}: "
        "No such file or directory"
    )
    (tmp_path / "jwks.json").write_text('{"keys": []}')
    empty = run_syncd(["check-config", "--config", str(config)], {}, tmp_path)
    assert "auth.jwks_file: " in empty.stderr
    assert "holds no signature key" in empty.stderr


def test_removed_settings_are_named(tmp_path: Path) -> None:
    result = run_syncd(
        ["check-config"],
        {"SYNCD_DATABASE__POOL_MIN": "2", "SYNCD_SERVER__DEV_MODE": "true"},
        tmp_path,
    )
    assert result.returncode == EXIT_CONFIG
    assert "database.pool_min (from SYNCD_DATABASE__POOL_MIN): removed" in result.stderr

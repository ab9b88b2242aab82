"""syncctl end to end against a real listener: its main() runs in a worker thread (it has its
own event loop), output captured from the streams it is given."""

from __future__ import annotations

import io
import json
import ssl
from pathlib import Path

import jwt
import pytest

from syncd import ctl
from syncd.auth import public_key_pem
from syncd.devcerts import ensure_dev_pki
from syncd.server.admin_listener import start_admin_listener
from tests.admin.conftest import AUDIENCE, AdminStack
from tests.conftest import CRM_MODEL, unique_name
from tests.support.ctl import syncctl


async def test_full_workflow(admin: AdminStack, short_dir: Path) -> None:
    sock = str(admin.socket)
    org = unique_name("org")
    model_file = short_dir / "model.json"
    model_file.write_text(json.dumps(CRM_MODEL))

    assert await syncctl("--socket", sock, "org", "add", org) == (0, f"added org {org}\n", "")
    code, out, _ = await syncctl("--socket", sock, "model", "put", "--org", org, str(model_file))
    assert code == 0
    assert f"org {org}: model version 1 is live" in out
    code, out, _ = await syncctl("--socket", sock, "model", "get", "--org", org)
    assert code == 0
    assert set(json.loads(out)["entities"]) == {"account", "note"}
    code, out, _ = await syncctl(
        "--socket", sock, "profile", "assign", "--org", org, "u1", "field_sales"
    )
    assert (code, out) == (0, f"u1 -> field_sales in org {org}\n")
    code, out, _ = await syncctl("--socket", sock, "profile", "list", "--org", org)
    assert code == 0
    assert "u1" in out
    assert "field_sales" in out
    code, out, _ = await syncctl("--socket", sock, "org", "list")
    assert code == 0
    assert out.splitlines()[1].split() == [org, "active", "1", "0"]
    code, out, _ = await syncctl("--socket", sock, "--json", "status")
    assert code == 0
    assert json.loads(out)["orgs"][0]["model_version"] == 1

    code, token, _ = await syncctl(
        "--socket", sock, "token", "--org", org, "--user", "u1", "--team", "t1", "--ttl", "90"
    )
    assert code == 0
    claims = jwt.decode(
        token.strip(),
        public_key_pem(admin.token_key.read_bytes()),
        algorithms=["ES256"],
        audience=AUDIENCE,
    )
    assert (claims["sub"], claims["org"], claims["teams"]) == ("u1", org, ["t1"])

    assert (await syncctl("--socket", sock, "org", "remove", org, "--yes"))[0] == 0
    assert (await syncctl("--socket", sock, "org", "list"))[1] == "no orgs\n"


async def test_refused_command_names_the_problem(admin: AdminStack, short_dir: Path) -> None:
    org = unique_name("org")
    sock = str(admin.socket)
    await syncctl("--socket", sock, "org", "add", org)
    bad = dict(CRM_MODEL, entities={"account": {"key": "id", "columns": {"id": "money"}}})
    model_file = short_dir / "bad.json"
    model_file.write_text(json.dumps(bad))
    code, out, err = await syncctl("--socket", sock, "model", "put", "--org", org, str(model_file))
    assert (code, out) == (1, "")
    assert "invalid_model" in err
    assert "entities.account.columns.id" in err


async def test_unreachable_daemon_exit_code(short_dir: Path) -> None:
    missing = short_dir / "nobody.sock"
    code, out, err = await syncctl("--socket", str(missing), "status")
    assert (code, out) == (3, "")
    assert f"cannot reach syncd admin socket at {missing}: is the daemon running?" in err


async def test_socket_from_environment(admin: AdminStack, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ctl.SOCKET_ENV, str(admin.socket))
    code, out, _ = await syncctl("status")
    assert code == 0
    assert out.startswith("instance test-1 (dev mode): 0 orgs")


async def test_unreadable_model_file_is_a_usage_error(admin: AdminStack) -> None:
    code, _, err = await syncctl(
        "--socket", str(admin.socket), "model", "put", "--org", "x", "/nonexistent.json"
    )
    assert code == 2
    assert "cannot read /nonexistent.json" in err


def test_bad_arguments_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert ctl.run(["org", "frobnicate"], io.StringIO(), io.StringIO()) == 2
    assert "invalid choice" in capsys.readouterr().err


async def test_tcp_with_mutual_tls(admin: AdminStack, short_dir: Path) -> None:
    pki = ensure_dev_pki(short_dir / "certs")
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki.ca_cert))
    tls.load_cert_chain(str(pki.server_cert), str(pki.server_key))
    tls.verify_mode = ssl.CERT_REQUIRED
    listener = await start_admin_listener(
        admin.service, socket_path=short_dir / "tcp.sock", tcp=("127.0.0.1", 0), tls=tls
    )
    try:
        assert listener.tcp_address is not None
        where = f"127.0.0.1:{listener.tcp_address[1]}"
        creds = ("--cert", str(pki.admin_client_cert), "--key", str(pki.admin_client_key))
        code, out, _ = await syncctl("--tcp", where, *creds, "--ca", str(pki.ca_cert), "status")
        assert code == 0
        assert out.startswith("instance test-1")
        # A client certificate from another CA is refused by the handshake.
        other = ensure_dev_pki(short_dir / "other")
        code, _, err = await syncctl(
            "--tcp",
            where,
            "--cert",
            str(other.admin_client_cert),
            "--key",
            str(other.admin_client_key),
            "--ca",
            str(pki.ca_cert),
            "status",
        )
        assert code == 3
        assert "syncd" in err
    finally:
        await listener.close()


async def test_token_keys_list_rotate_retire(admin: AdminStack) -> None:
    sock = str(admin.socket)
    code, out, _ = await syncctl("--socket", sock, "token-key", "list")
    assert code == 0
    assert [line.split()[0] for line in out.splitlines()[1:]] == ["1"]
    assert out.splitlines()[1].split()[-1] == "yes"  # the first key seals
    assert await syncctl("--socket", sock, "token-key", "rotate") == (
        0,
        "token key 2 seals new sync tokens; older keys still open theirs\n",
        "",
    )
    code, _, err = await syncctl("--socket", sock, "token-key", "retire", "2")
    assert code == 1
    assert "key 2 seals new tokens: rotate before retiring it" in err
    code, out, _ = await syncctl("--socket", sock, "token-key", "retire", "1")
    assert (code, out) == (0, "token key 1 retired: devices holding its tokens download anew\n")
    code, _, err = await syncctl("--socket", sock, "token-key", "retire", "1")
    assert code == 1
    assert "no unretired token key 1" in err
    code, out, _ = await syncctl("--socket", sock, "--json", "token-key", "list")
    keys = json.loads(out)
    assert [(k["id"], k["retired_at"] is not None, k["seals"]) for k in keys] == [
        (1, True, False),
        (2, False, True),
    ]

"""Dev PKI: real TLS handshakes with the generated files, reuse, renewal, permissions."""

from __future__ import annotations

import asyncio
import ssl
import stat
from pathlib import Path

import pytest
from cryptography import x509

from syncd.auth import TokenVerifier, load_public_key_pem, mint_token
from syncd.devcerts import DevPKI, ensure_dev_pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> DevPKI:
    return ensure_dev_pki(tmp_path_factory.mktemp("certs"))


def server_context(pki: DevPKI, *, require_client: bool = False) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(pki.server_cert, pki.server_key)
    if require_client:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(pki.ca_cert)
    return ctx


def client_context(pki: DevPKI, *, with_client_cert: bool = False) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=pki.ca_cert)
    if with_client_cert:
        ctx.load_cert_chain(pki.admin_client_cert, pki.admin_client_key)
    return ctx


async def echo_once(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, name: str) -> bytes:
    """Handshake over loopback, send a line, return the server's echo."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            writer.write(await reader.readline())
            await writer.drain()
        except (ssl.SSLError, ConnectionError):
            pass  # the client refused us; the client side reports why
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    try:
        async with asyncio.timeout(10):
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", port, ssl=client_ctx, server_hostname=name
            )
            writer.write(b"ping\n")
            line = await reader.readline()
            writer.close()
            await writer.wait_closed()
            return line
    finally:
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize("name", ["localhost", "127.0.0.1"])
async def test_tls_handshake_and_hostname_check_pass(pki: DevPKI, name: str) -> None:
    assert await echo_once(server_context(pki), client_context(pki), name) == b"ping\n"


async def test_hostname_not_in_the_certificate_is_refused(pki: DevPKI) -> None:
    with pytest.raises(ssl.SSLCertVerificationError, match="Hostname mismatch"):
        await echo_once(server_context(pki), client_context(pki), "example.com")


async def test_admin_client_certificate_passes_mutual_tls(pki: DevPKI) -> None:
    server_ctx = server_context(pki, require_client=True)
    line = await echo_once(server_ctx, client_context(pki, with_client_cert=True), "localhost")
    assert line == b"ping\n"


async def test_mutual_tls_refuses_a_client_without_certificate(pki: DevPKI) -> None:
    # TLS 1.3 reports a missing client cert after the client's handshake completes, so the
    # refusal shows up as an error or as the server hanging up before it echoes anything.
    try:
        line = await echo_once(
            server_context(pki, require_client=True), client_context(pki), "localhost"
        )
    except (ssl.SSLError, ConnectionError):
        line = b""
    assert line == b""


def test_dev_token_key_signs_tokens_the_public_key_verifies(pki: DevPKI) -> None:
    verifier = TokenVerifier(
        issuer="syncd-dev",
        audience="syncd",
        algorithms=["ES256"],
        keys=[load_public_key_pem(pki.token_public.read_bytes())],
    )
    token = mint_token(
        pki.token_key.read_bytes(), issuer="syncd-dev", audience="syncd", org="o", user="u"
    )
    assert verifier.verify(token).subject == "u"


def test_private_keys_are_owner_only(pki: DevPKI) -> None:
    for key in (pki.ca_key, pki.server_key, pki.admin_client_key, pki.token_key):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600, key


def test_second_call_reuses_files(tmp_path: Path) -> None:
    first = ensure_dev_pki(tmp_path)
    contents = {path: path.read_bytes() for path in vars(first).values()}
    second = ensure_dev_pki(tmp_path)
    assert second == first
    assert {path: path.read_bytes() for path in vars(second).values()} == contents


def test_missing_pieces_are_regenerated_consistently(tmp_path: Path) -> None:
    first = ensure_dev_pki(tmp_path)
    server_before = first.server_cert.read_bytes()
    token_before = first.token_key.read_bytes()

    first.server_key.unlink()  # a leaf without its key is rebuilt alone
    ensure_dev_pki(tmp_path)
    assert first.server_cert.read_bytes() != server_before
    assert first.token_key.read_bytes() == token_before

    ca_before = first.ca_cert.read_bytes()
    client_before = first.admin_client_cert.read_bytes()
    first.ca_key.unlink()  # a new CA must re-issue both leaves, or they would not verify
    ensure_dev_pki(tmp_path)
    assert first.ca_cert.read_bytes() != ca_before
    assert first.admin_client_cert.read_bytes() != client_before


async def test_new_hostname_reissues_the_server_cert(tmp_path: Path) -> None:
    pki = ensure_dev_pki(tmp_path)
    before = pki.server_cert.read_bytes()
    ensure_dev_pki(tmp_path, hostnames=("localhost", "syncd.test"))
    assert pki.server_cert.read_bytes() != before
    assert await echo_once(server_context(pki), client_context(pki), "syncd.test") == b"ping\n"


def test_names_asked_for_by_different_callers_are_all_kept(tmp_path: Path) -> None:
    """A test asks for its SNI routing domain, then the daemon starting on the same
    directory asks for the defaults: the certificate must name both (the HAProxy test lost
    its `*.syncd.test` when the reissue kept only the second caller's names)."""
    ensure_dev_pki(tmp_path, hostnames=("localhost", "*.syncd.test"))
    pki = ensure_dev_pki(tmp_path)  # the defaults: localhost, *.syncd.localhost
    cert = x509.load_pem_x509_certificate(pki.server_cert.read_bytes())
    names = set(cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
    assert {x509.DNSName("*.syncd.test"), x509.DNSName("*.syncd.localhost")} <= names

"""A throwaway PKI for `make run` and tests: a CA, a server cert, an admin client cert, and
the dev token signing key.

Strategy: every artifact is a pair of files checked independently, so a second call reuses
what is there and rebuilds only what is missing, expired (or about to be), or no longer
matching: a leaf signed by a different CA, a server cert without a requested hostname.
Rebuilding the CA therefore rebuilds both leaves. Everything is ECDSA P-256: the cheapest
handshake measured on this machine (ARCHITECTURE.md, ceilings) and what production will use.

Private keys are written 0600 through a temporary file and an atomic rename, so a reader
never sees half a key and the key is never briefly world-readable.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from syncd.auth import generate_signing_key, public_key_pem

__all__ = ["DEV_DOMAIN", "DevPKI", "ensure_dev_pki"]

#: The dev server certificate also names `*.syncd.localhost`, so a device can send the SNI
#: `<org>.syncd.localhost` (what a load balancer routes on, PROTOCOL.md "Transport") and still
#: verify the certificate against that same name. Not `*.localhost`: OpenSSL refuses a
#: wildcard with a single label after it. `.localhost` names never leave the machine
#: (RFC 6761); the device connects to 127.0.0.1 and only sends the name in TLS.
DEV_DOMAIN: Final = "syncd.localhost"

CA_VALIDITY: Final = dt.timedelta(days=3650)
# Leaves stay under 825 days, the longest validity macOS/iOS TLS clients accept.
LEAF_VALIDITY: Final = dt.timedelta(days=825)
# Renew ahead of expiry so a long-running dev daemon is not caught by a cert lapsing.
RENEW_BEFORE: Final = dt.timedelta(days=7)
# Backdate notBefore so small clock differences between host and device do not matter.
BACKDATE: Final = dt.timedelta(minutes=5)


@dataclass(frozen=True)
class DevPKI:
    """Paths of the dev PKI files."""

    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    admin_client_cert: Path
    admin_client_key: Path
    token_key: Path
    token_public: Path


def _write_private(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _write_public(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _load_pair(
    cert_path: Path, key_path: Path
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None:
    """The cert and its key if both exist, parse, belong together and are not near expiry."""
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (OSError, ValueError):
        return None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        return None
    if cert.public_key() != key.public_key():
        return None
    if cert.not_valid_after_utc - RENEW_BEFORE < dt.datetime.now(dt.UTC):
        return None
    return cert, key


def _signed_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _builder(
    subject: str, issuer: x509.Name, public: ec.EllipticCurvePublicKey, days: dt.timedelta
) -> x509.CertificateBuilder:
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(issuer)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + days)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
    )


def _make_ca(
    cert_path: Path, key_path: Path
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "syncd dev CA")])
    cert = (
        _builder("syncd dev CA", name, key.public_key(), CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    _write_private(key_path, _key_pem(key))
    _write_public(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    return cert, key


def _make_leaf(
    cert_path: Path,
    key_path: Path,
    *,
    subject: str,
    usage: x509.ObjectIdentifier,
    names: Sequence[x509.GeneralName],
    ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey],
) -> None:
    ca_cert, ca_key = ca
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        _builder(subject, ca_cert.subject, key.public_key(), LEAF_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    _write_private(key_path, _key_pem(key))
    _write_public(cert_path, cert.public_bytes(serialization.Encoding.PEM))


def _sans(cert: x509.Certificate) -> set[x509.GeneralName]:
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return set()
    return set(ext.value)


def _ensure_token_key(key_path: Path, public_path: Path) -> None:
    try:
        public = public_key_pem(key_path.read_bytes())
    except (OSError, ValueError):
        _write_private(key_path, generate_signing_key())
        public = public_key_pem(key_path.read_bytes())
    try:
        current = public_path.read_bytes()
    except OSError:
        current = b""
    if current != public:
        _write_public(public_path, public)


def ensure_dev_pki(
    directory: Path,
    hostnames: Sequence[str] = ("localhost", f"*.{DEV_DOMAIN}"),
    ips: Sequence[str] = ("127.0.0.1", "::1"),
) -> DevPKI:
    """Create (or reuse) the dev PKI under `directory` and return its file paths.

    A server certificate made before it named `*.syncd.localhost` is reissued by the same CA
    (devices that trust the CA see no change)."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    pki = DevPKI(
        ca_cert=directory / "ca.pem",
        ca_key=directory / "ca.key",
        server_cert=directory / "server.pem",
        server_key=directory / "server.key",
        admin_client_cert=directory / "admin-client.pem",
        admin_client_key=directory / "admin-client.key",
        token_key=directory / "dev-token.key",
        token_public=directory / "dev-token.pub.pem",
    )
    ca = _load_pair(pki.ca_cert, pki.ca_key) or _make_ca(pki.ca_cert, pki.ca_key)

    wanted: list[x509.GeneralName] = [x509.DNSName(h) for h in hostnames]
    wanted += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
    server = _load_pair(pki.server_cert, pki.server_key)
    # A certificate that already covers more names (e.g. a wildcard for SNI routing) is kept;
    # one that lacks some is reissued with its names and the missing ones, so two callers
    # asking for different names (a test's routing domain, then the daemon's defaults) both
    # keep theirs.
    if server is None or not _signed_by(server[0], ca[0]) or not set(wanted) <= _sans(server[0]):
        kept = [] if server is None or not _signed_by(server[0], ca[0]) else _sans(server[0])
        names = wanted + [n for n in kept if n not in wanted]
        _make_leaf(
            pki.server_cert,
            pki.server_key,
            subject=hostnames[0] if hostnames else "syncd",
            usage=ExtendedKeyUsageOID.SERVER_AUTH,
            names=names,
            ca=ca,
        )

    client = _load_pair(pki.admin_client_cert, pki.admin_client_key)
    if client is None or not _signed_by(client[0], ca[0]):
        _make_leaf(
            pki.admin_client_cert,
            pki.admin_client_key,
            subject="syncd admin",
            usage=ExtendedKeyUsageOID.CLIENT_AUTH,
            names=(),
            ca=ca,
        )

    _ensure_token_key(pki.token_key, pki.token_public)
    return pki

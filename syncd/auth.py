"""Bearer JWT verification for device sessions, and dev helpers that mint tokens.

Strategy: the verifier never lets the token choose how it is checked. The header's `alg`
must be in the configured allow-list *and* match the type of the key it is checked
against (an EC P-256 key only ever verifies ES256, an RSA key only RS*/PS*, an Ed25519 key
only EdDSA), and PyJWT is told to accept exactly that one algorithm. "none" and the
shared-secret HS* family are never accepted, so a token "signed" with our public key used
as an HMAC secret (the classic algorithm-confusion attack) has nothing to match.

Keys come from a JWKS document, PEM files (public keys or certificates) and/or a `KeySource`
whose keys change while the daemon runs (a JWKS URL, `syncd.jwks`). A token
with a `kid` is checked against the keys with that id (plus PEM keys, which have no id);
a token without one is tried against every compatible key, stopping at the first good
signature. Claims are checked only after a signature verified. A token whose `kid` no key
has asks the key source to refresh first (`verify_async`; the source rate-limits that).

Errors are `AuthError(message, code)`; messages are fixed phrases chosen here, never
PyJWT's text or anything quoted from the token, so a token can never reach a log line or a
wire error through an exception.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final, Protocol

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

from protocol import CodedError, ErrorCode

__all__ = [
    "AuthError",
    "Claims",
    "KeyConfigError",
    "KeySource",
    "TokenVerifier",
    "VerificationKey",
    "generate_signing_key",
    "jwks_keys",
    "load_jwks",
    "load_public_key_pem",
    "mint_token",
    "public_key_pem",
]

PublicKey = (
    ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey | ed448.Ed448PublicKey
)

# Real bearer tokens are 1-3 KiB; refusing larger input early bounds the base64 and JSON
# work an unauthenticated peer can make us do.
MAX_TOKEN_LENGTH: Final = 16 * 1024
# Identity strings end up in log lines, metric-free session state and SQL bind parameters;
# a bound keeps a hostile issuer-signed token from carrying megabytes in `sub`.
MAX_IDENTITY_LENGTH: Final = 256

_NEVER_ALLOWED: Final = frozenset({"none", "HS256", "HS384", "HS512"})
_REQUIRED_CLAIMS: Final = ("exp", "iss", "aud", "sub", "org")
_NAMED_CLAIMS: Final = frozenset({"sub", "org", "exp", "roles", "teams"})
_EC_ALGORITHMS: Final = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}
_RSA_ALGORITHMS: Final = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})


class AuthError(CodedError):
    """A token was refused: TOKEN_EXPIRED when a fresh token would do, else
    AUTHENTICATION_FAILED (a token that is not valid yet included: a clock skew beyond the
    leeway is the issuer's problem, not a reason to retry)."""

    def __init__(self, message: str, code: ErrorCode = ErrorCode.AUTHENTICATION_FAILED) -> None:
        super().__init__(code, message)


class KeyConfigError(ValueError):
    """The configured verification keys are unusable (our misconfiguration, not the peer's)."""


@dataclass(frozen=True)
class Claims:
    """What a verified token says about the device's user."""

    subject: str
    org: str
    expires_at: int
    roles: tuple[str, ...]
    teams: tuple[str, ...]
    extra: Mapping[str, Any]


@dataclass(frozen=True)
class VerificationKey:
    """A public key, its optional `kid`, and the algorithms it may verify."""

    key: PublicKey
    kid: str | None
    algorithms: frozenset[str]


def _algorithms_for(key: PublicKey) -> frozenset[str]:
    if isinstance(key, ec.EllipticCurvePublicKey):
        alg = _EC_ALGORITHMS.get(key.curve.name)
        return frozenset({alg}) if alg else frozenset()
    if isinstance(key, rsa.RSAPublicKey):
        return _RSA_ALGORITHMS
    return frozenset({"EdDSA"})


def _as_public_key(key: object, source: str) -> PublicKey:
    if isinstance(
        key,
        ec.EllipticCurvePublicKey
        | rsa.RSAPublicKey
        | ed25519.Ed25519PublicKey
        | ed448.Ed448PublicKey,
    ):
        return key
    raise KeyConfigError(f"{source}: not a supported public key ({type(key).__name__})")


def load_public_key_pem(
    pem: bytes, *, kid: str | None = None, source: str = "PEM"
) -> VerificationKey:
    """A key from a PEM public key or certificate (identity providers publish both)."""
    try:
        if b"-----BEGIN CERTIFICATE-----" in pem:
            loaded: object = x509.load_pem_x509_certificate(pem).public_key()
        else:
            loaded = serialization.load_pem_public_key(pem)
    except ValueError as exc:
        raise KeyConfigError(f"{source}: cannot parse PEM public key ({exc})") from None
    key = _as_public_key(loaded, source)
    return VerificationKey(key=key, kid=kid, algorithms=_algorithms_for(key))


class KeySource(Protocol):
    """Keys that may change while the daemon runs (`syncd.jwks.RemoteKeySet`)."""

    keys: tuple[VerificationKey, ...]

    def knows(self, kid: str) -> bool: ...

    async def refresh_for_unknown_kid(self) -> None: ...


def load_jwks(document: str | bytes, *, source: str = "JWKS") -> list[VerificationKey]:
    """Signature keys from a JWKS document; encryption and symmetric keys are skipped."""
    try:
        data = json.loads(document)
    except ValueError:
        raise KeyConfigError(
            f"{source}: not a JWKS document (expected {{'keys': [...]}})"
        ) from None
    return jwks_keys(data, source=source)


def jwks_keys(data: object, *, source: str = "JWKS") -> list[VerificationKey]:
    """`load_jwks` for a document already parsed from JSON."""
    try:
        assert isinstance(data, dict)
        entries = data["keys"]
        if not isinstance(entries, list):
            raise TypeError
    except (AssertionError, KeyError, TypeError):
        raise KeyConfigError(
            f"{source}: not a JWKS document (expected {{'keys': [...]}})"
        ) from None
    keys = []
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict) or entry.get("use", "sig") != "sig":
            continue
        if entry.get("kty") == "oct":
            continue  # shared secrets are never accepted (see the module docstring)
        try:
            jwk = jwt.PyJWK.from_dict(entry)
        except jwt.PyJWTError as exc:
            raise KeyConfigError(
                f"{source}: key #{index} unusable ({type(exc).__name__})"
            ) from None
        key = _as_public_key(jwk.key, f"{source}: key #{index}")
        algorithms = _algorithms_for(key)
        declared = entry.get("alg")
        if isinstance(declared, str):
            # A JWK that names its algorithm may only be used with that one (RFC 7517 4.4).
            algorithms &= {declared}
        kid = entry.get("kid")
        keys.append(
            VerificationKey(
                key=key, kid=kid if isinstance(kid, str) else None, algorithms=algorithms
            )
        )
    return keys


class TokenVerifier:
    """Checks bearer tokens against configured keys, issuer, audience and clock leeway."""

    def __init__(
        self,
        *,
        issuer: str,
        audience: str,
        algorithms: Iterable[str],
        keys: Sequence[VerificationKey],
        leeway_seconds: float = 30.0,
        source: KeySource | None = None,
    ) -> None:
        allowed = frozenset(algorithms)
        refused = allowed & _NEVER_ALLOWED
        if refused or any(alg.upper().startswith("HS") for alg in allowed):
            raise KeyConfigError(f"algorithms {sorted(refused or allowed)} are never accepted")
        if not issuer or not audience:
            raise KeyConfigError("issuer and audience must be set")
        usable = _usable(keys, allowed)
        if not usable and not (source is not None and _usable(source.keys, allowed)):
            raise KeyConfigError(
                f"no configured key can verify any allowed algorithm {sorted(allowed)}"
            )
        self.issuer = issuer
        self.audience = audience
        self.algorithms = allowed
        self.static_keys = usable
        self.source = source
        self.leeway_seconds = leeway_seconds

    @property
    def keys(self) -> tuple[VerificationKey, ...]:
        """The keys tokens are checked against now (a source's keys change over time)."""
        if self.source is None:
            return self.static_keys
        return self.static_keys + _usable(self.source.keys, self.algorithms)

    @classmethod
    def from_files(
        cls,
        *,
        issuer: str,
        audience: str,
        algorithms: Iterable[str],
        jwks_file: Path | None = None,
        public_key_files: Sequence[Path] = (),
        leeway_seconds: float = 30.0,
        source: KeySource | None = None,
    ) -> TokenVerifier:
        """Load keys from the files named in `[auth]` (read once, at startup)."""
        keys: list[VerificationKey] = []
        try:
            if jwks_file is not None:
                keys += load_jwks(jwks_file.read_bytes(), source=str(jwks_file))
            for path in public_key_files:
                keys.append(load_public_key_pem(path.read_bytes(), source=str(path)))
        except OSError as exc:
            raise KeyConfigError(f"{exc.filename}: cannot read key file: {exc.strerror}") from None
        return cls(
            issuer=issuer,
            audience=audience,
            algorithms=algorithms,
            keys=keys,
            leeway_seconds=leeway_seconds,
            source=source,
        )

    async def verify_async(self, token: str) -> Claims:
        """`verify`, for callers on the event loop (sessions): a token naming a key id that
        the key source does not hold yet makes it refresh first (off the loop, rate-limited)
        so a key the provider just rotated in verifies on first sight."""
        header = _header(token)
        source = self.source
        if source is not None and header is not None:
            kid = header.get("kid")
            known = isinstance(kid, str) and (
                source.knows(kid) or any(key.kid == kid for key in self.static_keys)
            )
            if isinstance(kid, str) and not known:
                await source.refresh_for_unknown_kid()
        return self._verify(token, header)

    def verify(self, token: str) -> Claims:
        """Return the token's claims, or raise AuthError saying why it was refused."""
        return self._verify(token, _header(token))

    def _verify(self, token: str, header: dict[str, Any] | None) -> Claims:
        """`verify` with the token's header already read (each read decodes and checks all
        three segments, a third of a verification's Python work: a storm's sessions read
        it once)."""
        if header is None:
            raise AuthError("malformed token")
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self.algorithms:
            raise AuthError("token algorithm is not allowed")
        kid = header.get("kid")
        candidates = [
            k
            for k in self.keys
            if alg in k.algorithms and (kid is None or k.kid is None or k.kid == kid)
        ]
        if not candidates:
            raise AuthError("no configured key matches the token's key id")
        for key in candidates:
            try:
                payload = jwt.decode(
                    token,
                    key.key,
                    algorithms=[alg],
                    issuer=self.issuer,
                    audience=self.audience,
                    leeway=self.leeway_seconds,
                    options={"require": list(_REQUIRED_CLAIMS)},
                )
            except jwt.InvalidSignatureError:
                continue
            except jwt.PyJWTError as exc:
                raise _translate(exc) from None
            return _claims(payload)
        raise AuthError("signature verification failed")


def _header(token: object) -> dict[str, Any] | None:
    """The token's unverified header, or None for anything that is not a token."""
    if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_LENGTH:
        return None
    try:
        header: dict[str, Any] = jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        return None
    return header


def _usable(
    keys: Iterable[VerificationKey], allowed: frozenset[str]
) -> tuple[VerificationKey, ...]:
    return tuple(
        VerificationKey(k.key, k.kid, k.algorithms & allowed)
        for k in keys
        if k.algorithms & allowed
    )


def _translate(exc: jwt.PyJWTError) -> AuthError:
    if isinstance(exc, jwt.ExpiredSignatureError):
        return AuthError("token has expired", ErrorCode.TOKEN_EXPIRED)
    if isinstance(exc, jwt.ImmatureSignatureError):
        return AuthError("token is not yet valid")
    if isinstance(exc, jwt.MissingRequiredClaimError):
        return AuthError(f"token lacks required claim {exc.claim!r}")
    if isinstance(exc, jwt.InvalidIssuerError):
        return AuthError("token issuer is not accepted")
    if isinstance(exc, jwt.InvalidAudienceError):
        return AuthError("token audience is not accepted")
    if isinstance(exc, jwt.DecodeError):
        return AuthError("malformed token")
    return AuthError(f"token refused ({type(exc).__name__})")


def _identity(payload: Mapping[str, Any], claim: str) -> str:
    value = payload.get(claim)
    if not isinstance(value, str) or not value or len(value) > MAX_IDENTITY_LENGTH:
        raise AuthError(f"claim {claim!r} must be a non-empty string")
    return value


def _string_tuple(payload: Mapping[str, Any], claim: str) -> tuple[str, ...]:
    value = payload.get(claim, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise AuthError(f"claim {claim!r} must be a list of strings")
    return tuple(value)


def _claims(payload: Mapping[str, Any]) -> Claims:
    exp = payload["exp"]
    if not isinstance(exp, int | float) or isinstance(exp, bool):
        raise AuthError("claim 'exp' must be a number")
    extra = {k: v for k, v in payload.items() if k not in _NAMED_CLAIMS}
    return Claims(
        subject=_identity(payload, "sub"),
        org=_identity(payload, "org"),
        expires_at=int(exp),
        roles=_string_tuple(payload, "roles"),
        teams=_string_tuple(payload, "teams"),
        extra=MappingProxyType(extra),
    )


# --- dev helpers: `syncctl token` and tests mint ES256 tokens with a local key ----------


def generate_signing_key() -> bytes:
    """A new EC P-256 private key as unencrypted PKCS#8 PEM."""
    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _load_ec_private(private_pem: bytes) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(private_pem, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        raise KeyConfigError("dev signing key must be an EC P-256 private key")
    return key


def public_key_pem(private_pem: bytes) -> bytes:
    """The SubjectPublicKeyInfo PEM of a private key, to configure as a verification key."""
    return (
        _load_ec_private(private_pem)
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )


def mint_token(
    private_key_pem: bytes,
    *,
    issuer: str,
    audience: str,
    org: str,
    user: str,
    ttl_seconds: int = 3600,
    roles: Sequence[str] = (),
    teams: Sequence[str] = (),
    kid: str | None = None,
    now: int | None = None,
) -> str:
    """An ES256 token for `user` in `org`, valid from `now` for `ttl_seconds`."""
    issued = int(time.time()) if now is None else now
    payload = {
        "iss": issuer,
        "aud": audience,
        "sub": user,
        "org": org,
        "iat": issued,
        "nbf": issued,
        "exp": issued + ttl_seconds,
        "roles": list(roles),
        "teams": list(teams),
    }
    headers = {"kid": kid} if kid is not None else None
    return jwt.encode(
        payload, _load_ec_private(private_key_pem), algorithm="ES256", headers=headers
    )

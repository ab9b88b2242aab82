"""Bearer token verification: what is accepted, what is refused, and why."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Mapping
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from protocol import ErrorCode
from syncd.auth import (
    AuthError,
    KeyConfigError,
    TokenVerifier,
    generate_signing_key,
    load_public_key_pem,
    mint_token,
    public_key_pem,
)

ISSUER = "https://idp.example.com/"
AUDIENCE = "syncd"
ALGORITHMS = ("ES256", "RS256", "EdDSA")


@pytest.fixture(scope="module")
def signing_key() -> bytes:
    return generate_signing_key()


@pytest.fixture(scope="module")
def verifier(signing_key: bytes) -> TokenVerifier:
    return TokenVerifier(
        issuer=ISSUER,
        audience=AUDIENCE,
        algorithms=ALGORITHMS,
        keys=[load_public_key_pem(public_key_pem(signing_key))],
        leeway_seconds=30,
    )


def mint(key: bytes, **overrides: object) -> str:
    args: dict[str, object] = {
        "issuer": ISSUER,
        "audience": AUDIENCE,
        "org": "acme",
        "user": "user-1",
    }
    args.update(overrides)
    return mint_token(key, **args)  # type: ignore[arg-type]


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def handmade(header: Mapping[str, object], payload: Mapping[str, object], signature: bytes) -> str:
    head = b64(json.dumps(header).encode()) + "." + b64(json.dumps(payload).encode())
    return head + "." + b64(signature)


def refused(verifier: TokenVerifier, token: str) -> AuthError:
    with pytest.raises(AuthError) as info:
        verifier.verify(token)
    for part in token.split("."):
        assert len(part) < 8 or part not in str(info.value)  # no piece of the token leaks
    return info.value


def test_valid_token_yields_claims(verifier: TokenVerifier, signing_key: bytes) -> None:
    now = int(time.time())
    token = mint(signing_key, roles=["field"], teams=["north", "south"], now=now, ttl_seconds=600)
    claims = verifier.verify(token)
    assert claims.subject == "user-1"
    assert claims.org == "acme"
    assert claims.expires_at == now + 600
    assert claims.roles == ("field",)
    assert claims.teams == ("north", "south")
    assert claims.extra["iss"] == ISSUER
    assert "sub" not in claims.extra


def test_expired_token(verifier: TokenVerifier, signing_key: bytes) -> None:
    token = mint(signing_key, now=int(time.time()) - 3600, ttl_seconds=60)
    assert refused(verifier, token).code is ErrorCode.TOKEN_EXPIRED


def test_not_yet_valid_token(verifier: TokenVerifier, signing_key: bytes) -> None:
    token = mint(signing_key, now=int(time.time()) + 600)
    error = refused(verifier, token)
    assert (error.code, error.message) == (
        ErrorCode.AUTHENTICATION_FAILED,
        "token is not yet valid",
    )


def test_leeway_accepts_small_clock_skew_only(verifier: TokenVerifier, signing_key: bytes) -> None:
    now = int(time.time())
    verifier.verify(mint(signing_key, now=now - 70, ttl_seconds=60))  # expired 10 s ago
    verifier.verify(mint(signing_key, now=now + 10))  # issued 10 s in the future
    assert (
        refused(verifier, mint(signing_key, now=now - 120, ttl_seconds=60)).code
        is ErrorCode.TOKEN_EXPIRED
    )
    strict = TokenVerifier(
        issuer=ISSUER,
        audience=AUDIENCE,
        algorithms=ALGORITHMS,
        keys=verifier.keys,
        leeway_seconds=0,
    )
    assert (
        refused(strict, mint(signing_key, now=now - 70, ttl_seconds=60)).code
        is ErrorCode.TOKEN_EXPIRED
    )


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"issuer": "https://evil.example.com/"}, "issuer"),
        ({"audience": "another-service"}, "audience"),
    ],
)
def test_wrong_issuer_or_audience(
    verifier: TokenVerifier, signing_key: bytes, override: dict[str, str], message: str
) -> None:
    error = refused(verifier, mint(signing_key, **override))
    assert error.code is ErrorCode.AUTHENTICATION_FAILED
    assert message in error.message


def test_signature_from_another_key(verifier: TokenVerifier) -> None:
    error = refused(verifier, mint(generate_signing_key()))
    assert (error.code, error.message) == (
        ErrorCode.AUTHENTICATION_FAILED,
        "signature verification failed",
    )


def test_tampered_payload(verifier: TokenVerifier, signing_key: bytes) -> None:
    header, _, signature = mint(signing_key).split(".")
    payload = {"iss": ISSUER, "aud": AUDIENCE, "sub": "admin", "org": "acme", "exp": 2**40}
    forged = f"{header}.{b64(json.dumps(payload).encode())}.{signature}"
    assert refused(verifier, forged).message == "signature verification failed"


def test_alg_none_is_refused(verifier: TokenVerifier) -> None:
    payload = {"iss": ISSUER, "aud": AUDIENCE, "sub": "u", "org": "acme", "exp": 2**40}
    token = handmade({"alg": "none", "typ": "JWT"}, payload, b"")
    assert refused(verifier, token).message == "token algorithm is not allowed"


def test_hs256_forged_with_public_key_as_secret_is_refused(
    verifier: TokenVerifier, signing_key: bytes
) -> None:
    # The algorithm-confusion attack: the public key is public, so an attacker can HMAC
    # with it; a verifier that trusts the header's alg would then accept the token.
    secret = public_key_pem(signing_key)
    payload = {"iss": ISSUER, "aud": AUDIENCE, "sub": "admin", "org": "acme", "exp": 2**40}
    header = {"alg": "HS256", "typ": "JWT"}
    signing_input = (
        b64(json.dumps(header).encode()) + "." + b64(json.dumps(payload).encode())
    ).encode()
    signature = hmac.new(secret, signing_input, hashlib.sha256).digest()
    token = handmade(header, payload, signature)
    assert refused(verifier, token).message == "token algorithm is not allowed"


@pytest.mark.parametrize("claim", ["sub", "org", "exp", "iss", "aud"])
def test_missing_required_claims(verifier: TokenVerifier, signing_key: bytes, claim: str) -> None:
    now = int(time.time())
    payload: dict[str, object] = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "u",
        "org": "acme",
        "exp": now + 60,
    }
    del payload[claim]
    key = serialization.load_pem_private_key(signing_key, password=None)
    token = jwt.encode(payload, key, algorithm="ES256")  # type: ignore[arg-type]
    error = refused(verifier, token)
    assert error.code is ErrorCode.AUTHENTICATION_FAILED
    assert repr(claim) in error.message


def test_malformed_claims_and_garbage(verifier: TokenVerifier, signing_key: bytes) -> None:
    key = serialization.load_pem_private_key(signing_key, password=None)
    base = {"iss": ISSUER, "aud": AUDIENCE, "sub": "u", "org": "acme", "exp": 2**40}
    as_string = jwt.encode({**base, "roles": "admin"}, key, algorithm="ES256")  # type: ignore[arg-type]
    assert "roles" in refused(verifier, as_string).message
    assert "'org'" in refused(verifier, mint(signing_key, org="")).message
    for garbage in ("", "not-a-token", "a.b.c", "eyJ" + "A" * 20_000):
        assert refused(verifier, garbage).code is ErrorCode.AUTHENTICATION_FAILED


def test_jwks_with_several_keys_selects_by_kid(tmp_path: Path) -> None:
    first, second = generate_signing_key(), generate_signing_key()
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ed_key = ed25519.Ed25519PrivateKey.generate()

    def jwk(private: bytes, kid: str) -> dict[str, object]:
        public = serialization.load_pem_public_key(public_key_pem(private))
        data = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(public))  # type: ignore[arg-type]
        return {**data, "kid": kid, "use": "sig", "alg": "ES256"}

    rsa_jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(rsa_key.public_key()))
    ed_jwk = json.loads(jwt.algorithms.OKPAlgorithm.to_jwk(ed_key.public_key()))
    jwks = {
        "keys": [
            jwk(first, "k1"),
            jwk(second, "k2"),
            {**rsa_jwk, "kid": "r1"},
            {**ed_jwk, "kid": "e1"},
            {"kty": "oct", "k": "c2VjcmV0", "kid": "hs"},  # a shared secret: ignored
            {**jwk(first, "enc"), "use": "enc"},  # an encryption key: ignored
        ]
    }
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(jwks))
    verifier = TokenVerifier.from_files(
        issuer=ISSUER, audience=AUDIENCE, algorithms=ALGORITHMS, jwks_file=path
    )
    assert sorted(k.kid or "" for k in verifier.keys) == ["e1", "k1", "k2", "r1"]

    assert verifier.verify(mint(second, kid="k2", user="u2")).subject == "u2"
    assert verifier.verify(mint(first, kid="k1", user="u1")).subject == "u1"
    # The right key under the wrong kid is not tried against the others.
    assert refused(verifier, mint(first, kid="k2")).message == "signature verification failed"
    assert "key id" in refused(verifier, mint(first, kid="nope")).message
    # Without a kid every compatible key is tried.
    assert verifier.verify(mint(second)).subject == "user-1"

    base = {"iss": ISSUER, "aud": AUDIENCE, "sub": "r", "org": "acme", "exp": 2**40}
    rs = jwt.encode(base, rsa_key, algorithm="RS256", headers={"kid": "r1"})
    assert verifier.verify(rs).subject == "r"
    ed = jwt.encode(base, ed_key, algorithm="EdDSA", headers={"kid": "e1"})
    assert verifier.verify(ed).subject == "r"
    # An allowed algorithm against a key of another type is refused, not attempted.
    assert "key id" in refused(verifier, jwt.encode(base, ed_key, "EdDSA", {"kid": "r1"})).message


def test_configuration_mistakes_are_key_config_errors(signing_key: bytes, tmp_path: Path) -> None:
    key = load_public_key_pem(public_key_pem(signing_key))
    with pytest.raises(KeyConfigError, match="never accepted"):
        TokenVerifier(issuer=ISSUER, audience=AUDIENCE, algorithms=["HS256"], keys=[key])
    with pytest.raises(KeyConfigError, match="no configured key"):
        TokenVerifier(issuer=ISSUER, audience=AUDIENCE, algorithms=["RS256"], keys=[key])
    with pytest.raises(KeyConfigError, match="cannot read key file"):
        TokenVerifier.from_files(
            issuer=ISSUER,
            audience=AUDIENCE,
            algorithms=ALGORITHMS,
            public_key_files=[tmp_path / "absent.pem"],
        )

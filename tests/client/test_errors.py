"""The SDK's session errors: a class per thing the app does next, and the reconnect delay."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol import CodedError, ErrorCode
from syncd.client import (
    AuthenticationRefused,
    ProtocolMismatch,
    ServerBusy,
    ServerError,
    SyncStateRefused,
    TokenExpired,
)
from syncd.client.errors import server_error
from syncd.client.session import reconnect_delay


@pytest.mark.parametrize(
    ("code", "cls"),
    [
        (ErrorCode.PROTOCOL_VIOLATION, ProtocolMismatch),
        (ErrorCode.UNEXPECTED_MESSAGE, ProtocolMismatch),
        (ErrorCode.AUTHENTICATION_FAILED, AuthenticationRefused),
        (ErrorCode.TOKEN_EXPIRED, TokenExpired),
        (ErrorCode.NOT_ALLOWED_OFFLINE, AuthenticationRefused),
        (ErrorCode.CHECKPOINT_INVALID, SyncStateRefused),
        (ErrorCode.OVERLOADED, ServerBusy),
        (ErrorCode.GOING_AWAY, ServerBusy),
        (ErrorCode.INTERNAL_ERROR, ServerBusy),
    ],
)
def test_each_code_gets_the_class_that_says_what_to_do(
    code: ErrorCode, cls: type[ServerError]
) -> None:
    error = server_error(code, "why", 250)
    assert type(error) is cls
    assert isinstance(error, ServerError)
    assert isinstance(error, CodedError)
    assert (error.code, error.message, error.retry_after_ms) == (code, "why", 250)
    assert str(error) == f"{code.name} ({int(code)}): why"


def test_an_expired_token_is_an_authentication_refusal_and_only_busy_is_retryable() -> None:
    assert isinstance(server_error(ErrorCode.TOKEN_EXPIRED, "x"), AuthenticationRefused)
    assert server_error(ErrorCode.GOING_AWAY, "x").retryable
    assert not server_error(ErrorCode.AUTHENTICATION_FAILED, "x").retryable


@given(
    backoff=st.floats(0.0, 100.0),
    cap=st.floats(0.1, 60.0),
    at_least=st.floats(0.0, 120.0),
    jitter=st.floats(0.0, 0.999),
)
def test_the_reconnect_delay_never_undercuts_retry_after(
    backoff: float, cap: float, at_least: float, jitter: float
) -> None:
    delay = reconnect_delay(backoff, cap, at_least, jitter)
    assert delay >= at_least
    assert delay <= max(at_least, min(backoff, cap) * 1.5)

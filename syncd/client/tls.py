"""TLS session resumption on the device: offer the session of the last full handshake.

Why: a device that reconnects (after a drop, a GoingAway, the server's restart) with the
ticket of its last session does a resumed handshake: no certificate to send and check, no
signature, one round trip less of work for both ends (PROTOCOL.md, "Transport"). The
server keeps its ticket key across restarts and instances (``server.tls_ticket_key``).

How: asyncio and uvloop open a TLS connection by calling ``wrap_bio`` on the context they
are given, and neither has a way to pass it a ``session``. `ResumingContext` is an
`ssl.SSLContext` whose ``wrap_bio`` offers the session that the connecting code put in
`offering` for that connect. A context variable rather than an attribute of the context,
because one context serves many connections at once (a fleet of devices in one process,
or an app with several accounts), and each connect must offer its own session: the
transport calls ``wrap_bio`` from a callback scheduled by the connecting task, which runs
in a copy of that task's context. OpenSSL refuses a session made by another context, so an
offer names the context it came from and any other context ignores it.

A plain `ssl.SSLContext` still works with the SDK; it just never resumes.
"""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import Iterator
from contextvars import ContextVar
from pathlib import Path

__all__ = ["ResumingContext", "client_context", "offering"]

_OFFER: ContextVar[tuple[ssl.SSLContext, ssl.SSLSession] | None] = ContextVar(
    "syncd_tls_session_offer", default=None
)


class ResumingContext(ssl.SSLContext):
    """A client context that offers the session given by `offering` to the server."""

    def wrap_bio(
        self,
        incoming: ssl.MemoryBIO,
        outgoing: ssl.MemoryBIO,
        server_side: bool = False,
        server_hostname: str | bytes | None = None,
        session: ssl.SSLSession | None = None,
    ) -> ssl.SSLObject:
        offer = _OFFER.get()
        if session is None and offer is not None and offer[0] is self and not server_side:
            session = offer[1]
        return super().wrap_bio(incoming, outgoing, server_side, server_hostname, session)


def client_context(cafile: str | Path | None = None) -> ResumingContext:
    """What ``ssl.create_default_context(cafile=...)`` gives a client, as a `ResumingContext`:
    certificates verified against `cafile` (else the system's), host names checked."""
    context = ResumingContext(ssl.PROTOCOL_TLS_CLIENT)
    if cafile is not None:
        context.load_verify_locations(cafile)
    else:
        context.load_default_certs(ssl.Purpose.SERVER_AUTH)
    return context


@contextlib.contextmanager
def offering(context: ssl.SSLContext, session: ssl.SSLSession | None) -> Iterator[None]:
    """Connections opened by this task inside the block offer `session` (made by `context`)."""
    token = _OFFER.set(None if session is None else (context, session))
    try:
        yield
    finally:
        _OFFER.reset(token)

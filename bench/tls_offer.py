"""A client TLS context for the fleet bench's devices that offers a session without CPython's
copy of it.

Why (issue 10, the reconnect storm). CPython's ``ssl`` copies a session each time one is set
on a connection (``wrap_bio(session=...)``) or read from it (``SSLObject.session``): it
serializes the session and parses it back, the server's certificate with it, a workaround
for an OpenSSL 1.1.0 bug. That copy costs ~0.3-0.5 ms here, more than the client's share of
a resumed handshake (~0.4 ms), and in a 3,000-device storm it was the largest part of the
bench's device processes' CPU, which share the daemon's two cores. The bench measures the
daemon, so its devices should cost what a TLS client must, not what CPython adds.

How. A device keeps its session as an `Offer`: beside ``ssl``'s session object, a copy
made by ``SSL_SESSION_dup`` (a copy of the structure, the certificate shared by reference)
while the connection it came from is still open. `CheapOfferContext.wrap_bio` makes each
connection's ``SSLObject`` without a session, then gives OpenSSL a fresh copy of that one
with ``SSL_set_session``, through ctypes. Copies, because OpenSSL marks the session of a
connection that ends without a clean shutdown as not resumable, and ``ssl``'s session object
is that connection's own (its serialized copy drops the mark; ``SSL_SESSION_dup`` would keep
it). The pointers are read where CPython 3.8-3.13 keep them (``Modules/_ssl.c``:
``PySSLSocket`` holds ``SSL *`` after its weak reference to the socket, ``PySSLSession``
its ``SSL_SESSION *`` first, ``PySSLContext`` its ``SSL_CTX *`` first) and checked before
anything is written: OpenSSL reads the session's time and timeout that ``ssl`` reports for
it, the context's options, and that the ``SSL`` belongs to the context's ``SSL_CTX``
(``SSL_get_SSL_CTX``); after the set, the connection holds the copy. Any check that fails
turns the trick off for the process (one line on stderr) and offers through ``ssl`` as
before: slower, never wrong.

The device names the session to offer with `offering`, as the SDK's ``syncd.client.tls``
does (a context variable: one context serves every device of a process).
"""

from __future__ import annotations

import _ssl
import contextlib
import ctypes
import ssl
import sys
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Final

__all__ = ["CheapOfferContext", "Offer", "cheap_client_context", "offering"]

_OFFER: ContextVar[Offer | None] = ContextVar("bench_tls_offer", default=None)
_POINTER: Final = ctypes.sizeof(ctypes.c_void_p)
_VERIFIED_PYTHONS: Final = ((3, 8), (3, 13))


class _Lib:
    """The few OpenSSL functions used, from the library ``_ssl`` is linked to."""

    def __init__(self) -> None:
        handle = ctypes.CDLL(getattr(_ssl, "__file__", None))
        vp, u64, i, lg = ctypes.c_void_p, ctypes.c_uint64, ctypes.c_int, ctypes.c_long
        self.get_ssl_ctx = _bind(handle, "SSL_get_SSL_CTX", vp, [vp])
        self.get_session = _bind(handle, "SSL_get_session", vp, [vp])
        self.set_session = _bind(handle, "SSL_set_session", i, [vp, vp])
        self.session_dup = _bind(handle, "SSL_SESSION_dup", vp, [vp])
        self.session_free = _bind(handle, "SSL_SESSION_free", None, [vp])
        self.session_time = _bind(handle, "SSL_SESSION_get_time", lg, [vp])
        self.session_timeout = _bind(handle, "SSL_SESSION_get_timeout", lg, [vp])
        self.ctx_options = _bind(handle, "SSL_CTX_get_options", u64, [vp])
        version = _bind(handle, "OpenSSL_version_num", ctypes.c_ulong, [])
        if version() != ssl.OPENSSL_VERSION_NUMBER:
            raise OSError("the OpenSSL beside Python's ssl module is not the one it reports")


def _bind(
    handle: ctypes.CDLL, name: str, restype: object, argtypes: list[object]
) -> Callable[..., Any]:
    function: Any = getattr(handle, name)
    function.restype = restype
    function.argtypes = argtypes
    bound: Callable[..., Any] = function
    return bound


class _Trick:
    """Whether the copy-free offer is in use for this process, and its library."""

    lib: _Lib | None = None
    off: str | None = None

    @classmethod
    def library(cls) -> _Lib | None:
        if cls.lib is None and cls.off is None:
            version = sys.version_info[:2]
            if sys.implementation.name != "cpython" or not (
                _VERIFIED_PYTHONS[0] <= version <= _VERIFIED_PYTHONS[1]
            ):
                cls.turn_off(f"{sys.implementation.name} {version}: layout not verified")
            else:
                try:
                    cls.lib = _Lib()
                except (OSError, AttributeError) as exc:
                    cls.turn_off(str(exc))
        return cls.lib

    @classmethod
    def turn_off(cls, why: str) -> None:
        if cls.off is None:
            print(f"bench.tls_offer: sessions offered through ssl's copy ({why})", file=sys.stderr)
        cls.off, cls.lib = why, None


def _field(obj: object, index: int) -> int:
    """The pointer-sized field `index` after ``PyObject_HEAD`` of a C object."""
    return (
        ctypes.c_void_p.from_address(id(obj) + object.__basicsize__ + index * _POINTER).value or 0
    )


class Offer:
    """A session a device offers: `session` as ``ssl`` holds it, and a copy of it made by
    OpenSSL while its connection was open, which no connection ever holds (0 when the
    trick is off). That copy is what each connection's own copy is made from: the
    ``SSL_SESSION`` behind `session` is the connection's own, and OpenSSL marks it not
    resumable when that connection ends without a clean shutdown (``ssl``'s copy of it,
    serialized, drops the mark; ``SSL_SESSION_dup`` keeps it)."""

    __slots__ = ("_copy", "_lib", "session")

    def __init__(self, session: ssl.SSLSession) -> None:
        self.session = session
        self._copy = 0
        self._lib = _Trick.library()
        if self._lib is None:
            return
        held = _field(session, 0) if type(session) is ssl.SSLSession else 0
        if not held or (
            self._lib.session_time(held) != session.time
            or self._lib.session_timeout(held) != session.timeout
        ):
            _Trick.turn_off("the session's SSL_SESSION is not where CPython keeps it")
            return
        self._copy = self._lib.session_dup(held) or 0

    def __del__(self) -> None:
        if self._copy and self._lib is not None:
            self._lib.session_free(self._copy)
            self._copy = 0


class CheapOfferContext(ssl.SSLContext):
    """A client context whose connections offer the `Offer` named by `offering`, set
    through OpenSSL without CPython's copy (module docstring)."""

    def wrap_bio(
        self,
        incoming: ssl.MemoryBIO,
        outgoing: ssl.MemoryBIO,
        server_side: bool = False,
        server_hostname: str | bytes | None = None,
        session: ssl.SSLSession | None = None,
    ) -> ssl.SSLObject:
        offer = _OFFER.get() if session is None and not server_side else None
        lib = offer._lib if offer is not None and offer._copy and _Trick.off is None else None
        if offer is None or lib is None:
            chosen = session if offer is None else offer.session
            return super().wrap_bio(incoming, outgoing, server_side, server_hostname, chosen)
        sslobj = super().wrap_bio(incoming, outgoing, server_side, server_hostname)
        why = _set(lib, self, sslobj, offer._copy)
        if why is not None:
            _Trick.turn_off(why)
            sslobj.session = offer.session
        return sslobj


def _set(lib: _Lib, ctx: ssl.SSLContext, sslobj: ssl.SSLObject, source: int) -> str | None:
    """Give `sslobj`'s connection a copy of the session at `source`; what was wrong when it
    could not."""
    ssl_ctx = _field(ctx, 0)
    if not ssl_ctx or lib.ctx_options(ssl_ctx) != int(ctx.options):
        return "the context's SSL_CTX is not where CPython keeps it"
    inner = getattr(sslobj, "_sslobj", None)
    ssl_ptr = _field(inner, 1) if type(inner).__name__ == "_SSLSocket" else 0
    if not ssl_ptr or lib.get_ssl_ctx(ssl_ptr) != ssl_ctx:
        return "the connection's SSL is not where CPython keeps it"
    copy = lib.session_dup(source)
    if not copy:
        return "SSL_SESSION_dup failed"
    try:
        if lib.set_session(ssl_ptr, copy) != 1 or lib.get_session(ssl_ptr) != copy:
            return "OpenSSL did not take the session"
    finally:
        lib.session_free(copy)  # SSL_set_session holds its own reference
    return None


def cheap_client_context(cafile: str | Path) -> CheapOfferContext:
    """A client context verifying the server against `cafile`, host names checked (what
    ``syncd.client.client_context`` makes), offering sessions without the copy."""
    context = CheapOfferContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(cafile)
    return context


@contextlib.contextmanager
def offering(offer: Offer | None) -> Iterator[None]:
    """Connections opened by this task inside the block offer `offer`."""
    token = _OFFER.set(offer)
    try:
        yield
    finally:
        _OFFER.reset(token)

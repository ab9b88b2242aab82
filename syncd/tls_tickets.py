"""The server's TLS session-ticket key from a file, so tickets outlive a restart and every
instance behind a load balancer accepts the others' tickets.

Why this exists: a device that reconnects with a ticket skips the certificate exchange and
signature of a full TLS handshake (PROTOCOL.md, "Transport"). OpenSSL encrypts tickets with
a key it draws at random per `SSL_CTX`, so without help a ticket is good only for the process
(and the context) that issued it: useless in the storm after a restart, which is when a
fleet reconnects at once, and useless behind a load balancer that sends the device to
another instance. OpenSSL can be given the key (`SSL_CTX_set_tlsext_ticket_keys`, an
`SSL_CTX_ctrl` command), but Python's `ssl` module binds neither that nor the ticket-key
callback, so this module reaches the context's `SSL_CTX` itself through ctypes.

How, and the guard around it. CPython's `_ssl` keeps the `SSL_CTX *` as the first field
after ``PyObject_HEAD`` of its context object (``PySSLContext`` in ``Modules/_ssl.c``, the
same from 3.8 to 3.13), so it is read at ``id(ctx) + object.__basicsize__``. OpenSSL's
functions are looked up through the ``_ssl`` extension's own handle, which searches the
libraries it was linked against: the libssl that made the context, not whichever one some
other wheel brought along. Before anything is written, the pointer and the library are
checked: the interpreter is CPython of a verified version, the library reports the OpenSSL
version ``ssl`` reports, ``SSL_CTX_get_options`` on the pointer answers what ``ctx.options``
answers with `OP_NO_TICKET` both set and cleared (a wrong pointer would have to match two
distinct values), and OpenSSL's own ticket-key length is the 80 bytes a key file holds. The
key is read back after it is set. Any failure raises `TicketKeyError` saying which check
failed; the daemon turns it into a start-up error naming the setting, because a configured
key that is silently not used would only show as a slow storm.

With the key, the context's tickets are also made good for 7 days, TLS 1.3's maximum,
instead of OpenSSL's 2 hours (`TICKET_LIFETIME_SECONDS` says why).

Calls are made from the event loop's thread, which is also the only thread that runs
handshakes on the daemon's context, so a key is never replaced under a handshake.

The key file holds 80 random bytes as 160 hex digits (``openssl rand -hex 80``), optional
whitespace around them; OpenSSL splits them into a 16-byte key name (sent in clear in each
ticket, logged to tell keys apart), a 32-byte HMAC secret and a 32-byte AES-256 key. Anyone
who holds the file can decrypt recorded sessions' tickets, so it must not be readable or
writable by group or others.
"""

from __future__ import annotations

import _ssl
import ctypes
import secrets
import ssl
import stat
import sys
from pathlib import Path
from typing import Final

__all__ = [
    "TICKET_KEY_BYTES",
    "TICKET_LIFETIME_SECONDS",
    "TicketKeyError",
    "install_ticket_key",
    "key_name",
    "new_ticket_key_text",
    "read_ticket_key",
]

#: OpenSSL's ticket key: 16-byte name, 32-byte HMAC-SHA256 secret, 32-byte AES-256 key.
TICKET_KEY_BYTES: Final = 80
#: `SSL_CTX_ctrl` commands behind the `SSL_CTX_{get,set}_tlsext_ticket_keys` macros (ssl.h).
_GET_TICKET_KEYS: Final = 58
_SET_TICKET_KEYS: Final = 59
#: How long a ticket is good for: the most TLS 1.3 allows (RFC 8446, 4.6.1), not OpenSSL's
#: 2 hours, because what matters is the restart storm, and a device that stayed connected
#: for days before it holds a ticket as old as that connection. Rotating the key (SIGHUP)
#: is what bounds the exposure of a key, not this.
TICKET_LIFETIME_SECONDS: Final = 7 * 24 * 3600
#: CPython versions whose ``PySSLContext`` is known to start with ``SSL_CTX *ctx``: a newer
#: one is refused (a clear start-up error) until its ``Modules/_ssl.c`` has been read.
_VERIFIED_PYTHONS: Final = ((3, 8), (3, 13))


class TicketKeyError(Exception):
    """The ticket key file is unusable, or the key cannot be given to OpenSSL; says why."""


def new_ticket_key_text() -> str:
    """A fresh key in the file's format (what ``openssl rand -hex 80`` prints)."""
    return secrets.token_hex(TICKET_KEY_BYTES) + "\n"


def read_ticket_key(path: Path) -> bytes:
    """The 80-byte key in `path`; refuses a file others may read or write, or a wrong size."""
    try:
        mode = path.stat().st_mode
        text = path.read_bytes()
    except OSError as exc:
        raise TicketKeyError(f"cannot read {path}: {exc.strerror}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise TicketKeyError(
            f"{path} is accessible to group or others (mode {stat.S_IMODE(mode):04o}); "
            f"whoever reads it can decrypt session tickets: chmod 600 {path}"
        )
    try:
        key = bytes.fromhex(text.decode("ascii").strip())
    except (UnicodeDecodeError, ValueError):
        raise TicketKeyError(
            f"{path} must hold {TICKET_KEY_BYTES * 2} hex digits (openssl rand -hex "
            f"{TICKET_KEY_BYTES}), found something else"
        ) from None
    if len(key) != TICKET_KEY_BYTES:
        raise TicketKeyError(
            f"{path} holds {len(key)} bytes ({len(key) * 2} hex digits); a ticket key is "
            f"{TICKET_KEY_BYTES} (openssl rand -hex {TICKET_KEY_BYTES})"
        )
    return key


def key_name(key: bytes) -> str:
    """The key's name as hex: public (every ticket carries it), so safe to log."""
    return key[:16].hex()


def install_ticket_key(ctx: ssl.SSLContext, key: bytes) -> None:
    """Make `ctx` encrypt new tickets with `key` and accept tickets made with it, for
    `TICKET_LIFETIME_SECONDS`.

    Tickets under any earlier key of this context stop being accepted: their devices do
    one full handshake and get a ticket under the new key. Raises `TicketKeyError` when a
    check of the module docstring fails; `ctx` is then unchanged but for `OP_NO_TICKET`
    being cleared.
    """
    if len(key) != TICKET_KEY_BYTES:
        raise TicketKeyError(f"a ticket key is {TICKET_KEY_BYTES} bytes, got {len(key)}")
    lib = _libssl()
    pointer = _ssl_ctx_pointer(ctx, lib)
    expected = lib.SSL_CTX_ctrl(pointer, _GET_TICKET_KEYS, 0, None)
    if expected != TICKET_KEY_BYTES:
        raise TicketKeyError(
            f"this OpenSSL's ticket keys are {expected} bytes, not {TICKET_KEY_BYTES}"
        )
    buffer = ctypes.create_string_buffer(key, TICKET_KEY_BYTES)
    if lib.SSL_CTX_ctrl(pointer, _SET_TICKET_KEYS, TICKET_KEY_BYTES, buffer) != 1:
        lib.ERR_clear_error()  # or ssl would report this error on the next call that fails
        raise TicketKeyError("OpenSSL refused the ticket key")
    readback = ctypes.create_string_buffer(TICKET_KEY_BYTES)
    if lib.SSL_CTX_ctrl(pointer, _GET_TICKET_KEYS, TICKET_KEY_BYTES, readback) != 1 or (
        readback.raw != key
    ):
        lib.ERR_clear_error()
        raise TicketKeyError("OpenSSL did not keep the ticket key it was given")
    lib.SSL_CTX_set_timeout(pointer, TICKET_LIFETIME_SECONDS)
    if lib.SSL_CTX_get_timeout(pointer) != TICKET_LIFETIME_SECONDS:
        raise TicketKeyError("OpenSSL did not keep the ticket lifetime it was given")


class _LibSSL:
    """The OpenSSL functions used here, typed, from the library ``_ssl`` is linked to."""

    def __init__(self, handle: ctypes.CDLL) -> None:
        try:
            self.SSL_CTX_ctrl = handle.SSL_CTX_ctrl
            self.SSL_CTX_get_options = handle.SSL_CTX_get_options
            self.OpenSSL_version_num = handle.OpenSSL_version_num
            self.ERR_clear_error = handle.ERR_clear_error
            self.SSL_CTX_set_timeout = handle.SSL_CTX_set_timeout
            self.SSL_CTX_get_timeout = handle.SSL_CTX_get_timeout
        except AttributeError as exc:
            raise TicketKeyError(
                f"the OpenSSL that Python's ssl module uses does not export {exc.name} "
                "(statically linked?): ticket keys cannot be installed"
            ) from None
        self.SSL_CTX_ctrl.restype = ctypes.c_long
        self.SSL_CTX_ctrl.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_void_p]
        # uint64_t in OpenSSL 3, unsigned long in 1.1.1: both 64 bits where this runs (LP64).
        self.SSL_CTX_get_options.restype = ctypes.c_uint64
        self.SSL_CTX_get_options.argtypes = [ctypes.c_void_p]
        self.OpenSSL_version_num.restype = ctypes.c_ulong
        self.OpenSSL_version_num.argtypes = []
        self.ERR_clear_error.restype = None
        self.ERR_clear_error.argtypes = []
        self.SSL_CTX_set_timeout.restype = ctypes.c_long
        self.SSL_CTX_set_timeout.argtypes = [ctypes.c_void_p, ctypes.c_long]
        self.SSL_CTX_get_timeout.restype = ctypes.c_long
        self.SSL_CTX_get_timeout.argtypes = [ctypes.c_void_p]


_loaded: _LibSSL | None = None


def _libssl() -> _LibSSL:
    global _loaded
    if _loaded is None:
        # dlopen of the already-loaded extension returns its handle, and dlsym through a
        # handle searches that object and its own dependencies: _ssl's libssl and libcrypto.
        # A _ssl built into the interpreter has no file; then the program's scope is _ssl's.
        path = getattr(_ssl, "__file__", None)
        try:
            handle = ctypes.CDLL(path)
        except OSError as exc:
            raise TicketKeyError(f"cannot open Python's ssl extension: {exc}") from None
        lib = _LibSSL(handle)
        found = lib.OpenSSL_version_num()
        if found != ssl.OPENSSL_VERSION_NUMBER:
            raise TicketKeyError(
                f"the OpenSSL found beside Python's ssl module is {found:#x}, ssl reports "
                f"{ssl.OPENSSL_VERSION_NUMBER:#x} ({ssl.OPENSSL_VERSION}): not the same library"
            )
        _loaded = lib
    return _loaded


def _ssl_ctx_pointer(ctx: ssl.SSLContext, lib: _LibSSL) -> int:
    """The `SSL_CTX *` inside `ctx`, once it has shown it is one (module docstring)."""
    version = sys.version_info[:2]
    low, high = _VERIFIED_PYTHONS
    if sys.implementation.name != "cpython" or not low <= version <= high:
        raise TicketKeyError(
            f"ticket keys reach OpenSSL through CPython {low[0]}.{low[1]}-{high[0]}.{high[1]}'s "
            f"ssl internals; this is {sys.implementation.name} {version[0]}.{version[1]}"
        )
    if not isinstance(ctx, _ssl._SSLContext):
        raise TicketKeyError(f"not an ssl.SSLContext: {ctx!r}")
    pointer = ctypes.c_void_p.from_address(id(ctx) + object.__basicsize__).value
    if not pointer:
        raise TicketKeyError("the context holds no SSL_CTX where CPython keeps it")
    if not _is_ssl_ctx_of(ctx, pointer, lib):
        raise TicketKeyError(
            "the pointer read from the ssl context is not its SSL_CTX (CPython's layout "
            "differs from the one this module knows): ticket keys cannot be installed"
        )
    return pointer


def _is_ssl_ctx_of(ctx: ssl.SSLContext, pointer: int, lib: _LibSSL) -> bool:
    """Whether OpenSSL sees `ctx`'s options at `pointer`, with `OP_NO_TICKET` both set and
    cleared: a pointer to anything else would have to follow both changes."""
    original = ctx.options
    try:
        for options in (original | ssl.OP_NO_TICKET, original & ~ssl.OP_NO_TICKET):
            ctx.options = options
            if lib.SSL_CTX_get_options(pointer) != int(ctx.options):
                return False
        return True
    finally:
        # Tickets are the point: leave OP_NO_TICKET cleared whatever it was.
        ctx.options = original & ~ssl.OP_NO_TICKET

"""Errors of the crypto layer.  None of them carries key material in its message."""

from gdoiserver.codec.constants import NotifyType


class CryptoError(Exception):
    """Base class of every error raised by ``gdoiserver.crypto``."""


class UnsupportedHash(CryptoError, ValueError):
    """An Oakley hash algorithm number (RFC 2409 appendix A) that this server does not implement."""


class UnsupportedGroup(CryptoError, ValueError):
    """An Oakley group description number that this server does not implement."""


class WeakGroupError(CryptoError, ValueError):
    """A Diffie-Hellman group too small for use without an explicit opt-in (MODP 1024 and 1536)."""


class InvalidKeyExchange(CryptoError, ValueError):
    """A peer's public Diffie-Hellman value that must be refused: wrong length, out of range or off the curve.

    The exchange answers it with INVALID-KEY-INFORMATION (RFC 2408 section 3.14.1), the ``notify`` attribute.
    """

    notify = NotifyType.INVALID_KEY_INFORMATION

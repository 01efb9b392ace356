"""The keylog: one line per ISAKMP SA and one per GDOI KEK, so that captures can be decrypted.

- ISAKMP SA: ``<initiator cookie hex>,<encryption key hex>``, the form of Wireshark's ``ikev1_decryption_table``
  (``tshark -o uat:ikev1_decryption_table:<line>``), so tshark and ``pcapdump --keylog`` decrypt what the SA carried.
- KEK: ``KEK <KEK SPI hex> <key hex> <key bits>``, e.g. ``KEK 00112233445566778899aabbccddeeff <32 hex> 128``, so
  ``pcapdump --keylog`` opens the GROUPKEY-PUSH messages sent under it (RFC 6407 section 4).  A line that starts
  with ``KEK`` and has no comma cannot be taken for an SA line.  tshark cannot decrypt our PUSH with any table
  (docs/wire-format.md, ``tshark-push-iv``), so the KEK line has a form of our own.

The file holds secrets: it is created with mode 0600, and an existing file that group or others may read or write
is refused.  Keys go nowhere else.
"""

import os
import stat


class KeyLogError(Exception):
    """The keylog file cannot be used; the message names the file (and never a key)."""


#: The first word of a KEK line.
KEK_TAG = "KEK"


def line(initiator_cookie: bytes, encryption_key: bytes) -> str:
    """One ``ikev1_decryption_table`` entry."""
    return f"{initiator_cookie.hex()},{encryption_key.hex()}\n"


def kek_line(spi: bytes, key: bytes, key_bits: int) -> str:
    """The line of a KEK: its 16-octet SPI (the cookies of its PUSH messages), its key and the key's size in bits.

    ValueError when the SPI is not 16 octets or the key is not ``key_bits`` long.
    """
    if len(spi) != 16:
        raise ValueError(f"a KEK SPI is 16 octets, not {len(spi)}")
    if not key or len(key) * 8 != key_bits:
        raise ValueError(f"a KEK key of {len(key)} octets is not {key_bits} bits")
    return f"{KEK_TAG} {spi.hex()} {key.hex()} {key_bits}\n"


class KeyLog:
    """Appends entries to the file at ``path``; each write opens, checks and closes the file."""

    def __init__(self, path: str):
        self.path = path

    def check(self) -> None:
        """Create the file if it is missing, and refuse it if its mode is looser than 0600."""
        os.close(self._open())

    def write(self, initiator_cookie: bytes, encryption_key: bytes) -> None:
        self._append(line(initiator_cookie, encryption_key))

    def write_kek(self, spi: bytes, key: bytes, key_bits: int) -> None:
        """The line of a KEK (:func:`kek_line`); write it before the first PUSH under the KEK leaves."""
        self._append(kek_line(spi, key, key_bits))

    def _append(self, text: str) -> None:
        data = text.encode("ascii")
        fd = self._open()
        try:
            os.write(fd, data)  # one write with O_APPEND: lines from several SAs never interleave
        finally:
            os.close(fd)

    def write_sa(self, sa) -> None:
        """The entry of an established ISAKMP SA (:class:`gdoiserver.exchanges.phase1.ISAKMPSA`)."""
        self.write(sa.initiator_cookie, sa.keys.enc_key)

    def _open(self) -> int:
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NONBLOCK, 0o600)
        except OSError as e:
            raise KeyLogError(f"keylog {self.path}: cannot open: {e.strerror or e}") from None
        try:
            info = os.fstat(fd)
            mode = stat.S_IMODE(info.st_mode)
            if not stat.S_ISREG(info.st_mode):
                raise KeyLogError(f"keylog {self.path}: not a regular file")
            if mode & 0o077:
                raise KeyLogError(
                    f"keylog {self.path}: mode {mode:04o} lets others read secret keys; expected 0600 or stricter"
                    f" (chmod 600 {self.path})"
                )
        except BaseException:
            os.close(fd)
            raise
        return fd

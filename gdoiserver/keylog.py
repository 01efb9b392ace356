"""The keylog: one line per ISAKMP SA, ``<initiator cookie hex>,<encryption key hex>``, for Wireshark.

That is the form of Wireshark's ``ikev1_decryption_table`` (``tshark -o uat:ikev1_decryption_table:<line>``), so
tshark and ``pcapdump --keylog`` can decrypt what an SA carried.  The file holds secrets: it is created with mode
0600, and an existing file that group or others may read or write is refused.  Keys go nowhere else.
"""

import os
import stat


class KeyLogError(Exception):
    """The keylog file cannot be used; the message names the file (and never a key)."""


def line(initiator_cookie: bytes, encryption_key: bytes) -> str:
    """One ``ikev1_decryption_table`` entry."""
    return f"{initiator_cookie.hex()},{encryption_key.hex()}\n"


class KeyLog:
    """Appends entries to the file at ``path``; each write opens, checks and closes the file."""

    def __init__(self, path: str):
        self.path = path

    def check(self) -> None:
        """Create the file if it is missing, and refuse it if its mode is looser than 0600."""
        os.close(self._open())

    def write(self, initiator_cookie: bytes, encryption_key: bytes) -> None:
        data = line(initiator_cookie, encryption_key).encode("ascii")
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

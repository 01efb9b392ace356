"""Decrypt captured IKEv1 messages with a keylog of Phase 1 encryption keys (``pcapdump --keylog``).

The keylog has one line per ISAKMP SA in the form of Wireshark's ``ikev1_decryption_table``: the initiator cookie
and the encryption key, both in hex, joined by a comma.  Blank lines and lines that begin with ``#`` are ignored.

A :class:`Decryptor` is fed every message of a capture in order and follows each ISAKMP SA as RFC 2409
appendix B chains it: it learns the chosen transform and g^xi, g^xr from the messages in clear, starts the Phase 1
chain from hash(g^xi | g^xr), and gives each Phase 2 or Informational M-ID a chain of its own.  It never raises on
what a capture holds: a message it cannot decrypt gets a :class:`Decryption` with the reason.
"""

import string
from collections.abc import Callable, Iterable, Mapping

import attrs

from gdoiserver.codec.attributes import attribute_map
from gdoiserver.codec.cipher import CIPHERS, IVChain, cipher_for
from gdoiserver.codec.constants import DOI, ExchangeType, OakleyAttr
from gdoiserver.codec.errors import DecodeError
from gdoiserver.codec.message import Message
from gdoiserver.codec.payloads import KE, SA

COOKIE_SIZE = 8
#: The key sizes, in octets, of the ciphers that :mod:`gdoiserver.codec.cipher` implements.
KEY_SIZES = tuple(sorted({spec.key_size for spec in CIPHERS.values()}))
#: Phase 1 exchanges whose messages in clear carry the SA and KE payloads (RFC 2409 sections 5 and 5.4).
PHASE1_EXCHANGES = (ExchangeType.MAIN_MODE, ExchangeType.AGGRESSIVE)


class KeylogError(ValueError):
    """A keylog line that is not ``<initiator cookie hex>,<encryption key hex>``; the message names file and line."""

    def __init__(self, source: str, line: int, reason: str):
        super().__init__(f"{source}:{line}: {reason}")
        self.source, self.line, self.reason = source, line, reason


def _hex(text: str, what: str) -> bytes:
    if not text or len(text) % 2 or any(c not in string.hexdigits for c in text):
        raise ValueError(f"{what} {text!r} is not an even number of hex digits")
    return bytes.fromhex(text)


def parse_keylog(lines: Iterable[str], source: str = "keylog") -> dict[bytes, bytes]:
    """{initiator cookie: encryption key} from keylog lines; raises :class:`KeylogError` at the first bad line."""
    keys: dict[bytes, bytes] = {}
    for number, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        try:
            cookie_hex, sep, key_hex = line.partition(",")
            if not sep:
                raise ValueError("no comma: expected <initiator cookie hex>,<encryption key hex>")
            cookie, key = _hex(cookie_hex, "initiator cookie"), _hex(key_hex, "encryption key")
            if len(cookie) != COOKIE_SIZE:
                raise ValueError(f"the initiator cookie is {COOKIE_SIZE} octets (16 hex digits), not {len(cookie)}")
            if len(key) not in KEY_SIZES:
                raise ValueError(f"a {len(key)}-octet encryption key fits no supported cipher "
                                 f"({', '.join(map(str, KEY_SIZES))} octets)")
            if keys.setdefault(cookie, key) != key:
                raise ValueError(f"initiator cookie {cookie_hex} appears again with another key")
        except ValueError as e:
            raise KeylogError(source, number, str(e)) from None
    return keys


def read_keylog(path) -> dict[bytes, bytes]:
    """The keylog file at ``path``; OSError when it cannot be read, :class:`KeylogError` when a line is bad."""
    with open(path, "rb") as f:
        data = f.read()
    lines = data.split(b"\n")
    for number, line in enumerate(lines, 1):
        if not line.isascii():
            raise KeylogError(str(path), number, "not ASCII text")
    return parse_keylog((line.decode("ascii") for line in lines), str(path))


@attrs.frozen
class Decryption:
    """What the decryptor made of one encrypted message.

    Either ``message`` is the message decrypted and decoded and ``chain`` the IV chain it was decrypted under, so
    that ``chain.encrypt(message)[0]`` gives back the octets captured; or ``error`` says why it was not decrypted.
    ``retransmission`` marks octets seen before, decrypted again under the chain they had the first time.
    """

    message: Message | None = None
    chain: IVChain | None = attrs.field(default=None, repr=False)
    error: str | None = None
    retransmission: bool = False


#: Decrypts a GROUPKEY-PUSH message (RFC 6407 section 4) under its KEK.  A push travels under the KEK, which the
#: header's cookies name (the KEK SPI), not under a Phase 1 SA, and its key comes from the KD payload of a
#: GROUPKEY-PULL (RFC 6407 section 5.6).  Called with (message, doi); returns a Decryption.
KEKDecryptor = Callable[[Message, int], Decryption]


@attrs.define
class _ISAKMPSA:
    """One Phase 1 SA as the capture shows it: the responder's chosen transform, the KE data in the order seen
    (g^xi, then g^xr), the Phase 1 chain once started, and the chain of each Phase 2 or Informational M-ID."""

    transform: dict | None = None
    gx: list[bytes] = attrs.Factory(list)
    phase1: IVChain | None = None
    exchanges: dict[int, IVChain] = attrs.Factory(dict)


class _Undecryptable(Exception):
    """Why no IV chain can be had for a message (a reason for :class:`Decryption`, never raised out)."""


class Decryptor:
    """Decrypts the IKEv1 messages of a capture, fed in capture order, with the Phase 1 keys of a keylog.

    ``keys`` maps initiator cookies to encryption keys (see :func:`read_keylog`); ``keks`` maps KEK SPIs (the 16
    octets of both cookies) to a :data:`KEKDecryptor` for GROUPKEY-PUSH messages.  Calling the object is
    pcapdump's decryptor hook.
    """

    def __init__(self, keys: Mapping[bytes, bytes], keks: Mapping[bytes, KEKDecryptor] | None = None):
        self.keys = dict(keys)
        self.keks = dict(keks or {})
        self._sas: dict[bytes, _ISAKMPSA] = {}
        #: The chain each encrypted message was first decrypted under, by its octets: a retransmission is the same
        #: octets again, and its chain must not advance twice (RFC 2409 appendix B; cipher.py module notes).
        self._first_chain: dict[bytes, IVChain] = {}

    def __call__(self, datagram, message: Message, doi: int) -> Decryption | None:
        return self.decrypt(message, doi)

    def decrypt(self, message: Message, doi: int = DOI.IPSEC) -> Decryption | None:
        """Learn from ``message`` when it is in clear (and return None), else decrypt it."""
        if message.ciphertext is None:
            self._learn(message)
            return None
        if doi == DOI.GDOI and message.exchange_type == ExchangeType.GROUPKEY_PUSH:
            kek = self.keks.get(message.spi)
            if kek is None:
                return Decryption(error=f"no KEK key for KEK SPI {message.spi.hex()} (GROUPKEY-PUSH)")
            return kek(message, doi)
        data = message.encode()
        chain = self._first_chain.get(data)
        if chain is not None:
            decryption, _ = self._open(message, chain, doi)
            return attrs.evolve(decryption, retransmission=True)
        try:
            chain = self._chain(message)
        except _Undecryptable as e:
            return Decryption(error=str(e))
        self._first_chain[data] = chain
        decryption, after = self._open(message, chain, doi)
        if decryption.error is None:  # a message that fails leaves the chain alone (cipher.py module notes)
            sa = self._sas[message.initiator_cookie]
            if message.message_id == 0:
                sa.phase1 = after
            else:
                sa.exchanges[message.message_id] = after
        return decryption

    def _learn(self, message: Message) -> None:
        if message.message_id != 0 or message.exchange_type not in PHASE1_EXCHANGES:
            return
        sa = self._sas.setdefault(message.initiator_cookie, _ISAKMPSA())
        if sa.phase1 is not None:
            return
        for p in message.payloads:
            # The responder's SA (MM2, AM2: the responder cookie is set) holds the one transform it chose
            # (RFC 2408 section 4.2); the initiator's may offer several.
            if isinstance(p, SA) and any(message.responder_cookie) and p.proposals and p.proposals[0].transforms:
                sa.transform = attribute_map(p.proposals[0].transforms[0].attributes)
            elif isinstance(p, KE) and p.key_exchange_data not in sa.gx and len(sa.gx) < 2:
                sa.gx.append(p.key_exchange_data)  # MM3/AM1 g^xi, then MM4/AM2 g^xr

    def _chain(self, message: Message) -> IVChain:
        """The chain ``message`` is to be decrypted under; raises _Undecryptable with the reason."""
        cookie = message.initiator_cookie
        key = self.keys.get(cookie)
        if key is None:
            raise _Undecryptable(f"no key for initiator cookie {cookie.hex()} in the keylog")
        sa = self._sas.get(cookie)
        if sa is None or sa.transform is None or len(sa.gx) < 2:
            seen = "nothing" if sa is None else f"{'a' if sa.transform else 'no'} responder's SA and {len(sa.gx)} KE"
            raise _Undecryptable(f"Phase 1 of initiator cookie {cookie.hex()} not seen in clear ({seen}): the "
                                 "IV needs the responder's SA payload and both KE payloads")
        if sa.phase1 is None:
            sa.phase1 = self._phase1_chain(sa, key)
        if message.message_id == 0:
            return sa.phase1
        # Each Phase 2 or Informational exchange starts from hash(last Phase 1 block | M-ID) (RFC 2409 appendix B).
        return sa.exchanges.get(message.message_id) or sa.phase1.for_message_id(message.message_id)

    @staticmethod
    def _phase1_chain(sa: _ISAKMPSA, key: bytes) -> IVChain:
        a = sa.transform
        try:
            length = a[OakleyAttr.KEY_LENGTH].as_int() if OakleyAttr.KEY_LENGTH in a else None
            spec = cipher_for(a[OakleyAttr.ENCRYPTION_ALGORITHM].as_int(), length)
            return IVChain.phase1(spec, key, a[OakleyAttr.HASH_ALGORITHM].as_int(), sa.gx[0], sa.gx[1])
        except KeyError as e:
            raise _Undecryptable(f"the chosen transform has no attribute {OakleyAttr(e.args[0]).name}") from None
        except ValueError as e:  # UnsupportedCipher, UnsupportedHash, or a key of the wrong size
            raise _Undecryptable(str(e)) from None

    @staticmethod
    def _open(message: Message, chain: IVChain, doi: int) -> tuple[Decryption, IVChain | None]:
        try:
            clear, after = chain.decrypt(message, doi)
        except DecodeError as e:
            return Decryption(error=f"does not decrypt under {chain.cipher.name}: {e.reason}"), None
        return Decryption(clear, chain), after

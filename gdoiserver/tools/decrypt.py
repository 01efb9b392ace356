"""Decrypt captured IKEv1 messages with a keylog of Phase 1 encryption keys (``pcapdump --keylog``).

The keylog has one line per ISAKMP SA in the form of Wireshark's ``ikev1_decryption_table``: the initiator cookie
and the encryption key, both in hex, joined by a comma.  It may also hold GDOI KEK lines, ``KEK <KEK SPI hex> <key
hex> <key bits>`` (:mod:`gdoiserver.keylog`), with which GROUPKEY-PUSH messages are opened
(:func:`gdoiserver.doi.gdoi.push.open_push`).  Blank lines and lines that begin with ``#`` are ignored.

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
from gdoiserver.codec.constants import DOI, ExchangeType, Flags, OakleyAttr
from gdoiserver.codec.errors import DecodeError, EncodeError
from gdoiserver.codec.gdoi import KEK_SPI_SIZE
from gdoiserver.codec.message import Message
from gdoiserver.codec.payload import Context
from gdoiserver.codec.payloads import KE, SA
from gdoiserver.doi.gdoi import push
from gdoiserver.keylog import KEK_TAG

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


@attrs.frozen
class KEKKey:
    """A KEK from a keylog line: its SPI (the cookies of the PUSH messages under it), key and key size in bits."""

    spi: bytes
    key: bytes = attrs.field(repr=False)
    key_bits: int


@attrs.frozen
class KeylogKeys:
    """What a keylog holds: ``phase1`` maps initiator cookies to encryption keys, ``keks`` KEK SPIs to KEKs."""

    phase1: dict[bytes, bytes] = attrs.field(repr=False)
    keks: dict[bytes, KEKKey]


#: KEK key sizes in bits (KEK_ALG_AES, RFC 6407 section 5.3; push.kek_cipher).
KEK_KEY_BITS = (128, 192, 256)


def _kek_line(line: str) -> KEKKey:
    words = line.split()
    if len(words) != 4:
        raise ValueError(f"a KEK line is '{KEK_TAG} <KEK SPI hex> <key hex> <key bits>', not {len(words)} words")
    spi, key = _hex(words[1], "KEK SPI"), _hex(words[2], "KEK key")
    if len(spi) != KEK_SPI_SIZE:
        raise ValueError(f"the KEK SPI is {KEK_SPI_SIZE} octets ({2 * KEK_SPI_SIZE} hex digits), not {len(spi)}")
    if not words[3].isdigit() or int(words[3]) not in KEK_KEY_BITS:
        raise ValueError(f"key bits {words[3]!r} is not one of {', '.join(map(str, KEK_KEY_BITS))}")
    if len(key) * 8 != int(words[3]):
        raise ValueError(f"a {len(key)}-octet KEK key is not {words[3]} bits")
    return KEKKey(spi, key, int(words[3]))


def parse_keys(lines: Iterable[str], source: str = "keylog") -> KeylogKeys:
    """The Phase 1 keys and the KEKs of keylog lines; raises :class:`KeylogError` at the first bad line."""
    keys: dict[bytes, bytes] = {}
    keks: dict[bytes, KEKKey] = {}
    for number, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        try:
            if line.split(maxsplit=1)[0] == KEK_TAG:
                kek = _kek_line(line)
                if keks.setdefault(kek.spi, kek) != kek:
                    raise ValueError(f"KEK SPI {kek.spi.hex()} appears again with another key")
                continue
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
    return KeylogKeys(keys, keks)


def parse_keylog(lines: Iterable[str], source: str = "keylog") -> dict[bytes, bytes]:
    """{initiator cookie: encryption key} from keylog lines (KEK lines are checked, then left out)."""
    return parse_keys(lines, source).phase1


def read_keys(path) -> KeylogKeys:
    """The keylog file at ``path``; OSError when it cannot be read, :class:`KeylogError` when a line is bad."""
    with open(path, "rb") as f:
        data = f.read()
    lines = data.split(b"\n")
    for number, line in enumerate(lines, 1):
        if not line.isascii():
            raise KeylogError(str(path), number, "not ASCII text")
    return parse_keys((line.decode("ascii") for line in lines), str(path))


def read_keylog(path) -> dict[bytes, bytes]:
    """The Phase 1 keys of the keylog file at ``path`` (see :func:`read_keys`)."""
    return read_keys(path).phase1


@attrs.frozen
class Decryption:
    """What the decryptor made of one encrypted message.

    Either ``message`` is the message decrypted and decoded and ``chain`` the IV chain it was decrypted under (a
    :class:`PushChain` for a GROUPKEY-PUSH), so that ``chain.encrypt(message)[0]`` gives back the octets captured; or
    ``error`` says why it was not decrypted.
    ``retransmission`` marks octets seen before, decrypted again under the chain they had the first time.
    """

    message: Message | None = None
    chain: "IVChain | PushChain | None" = attrs.field(default=None, repr=False)
    error: str | None = None
    retransmission: bool = False


#: Decrypts a GROUPKEY-PUSH message (RFC 6407 section 4) under its KEK.  A push travels under the KEK, which the
#: header's cookies name (the KEK SPI), not under a Phase 1 SA, and its key comes from the KD payload of a
#: GROUPKEY-PULL (RFC 6407 section 5.6).  Called with (message, doi); returns a Decryption.
KEKDecryptor = Callable[[Message, int], Decryption]


@attrs.frozen
class PushChain:
    """What re-encrypts a decrypted PUSH: the KEK and the IV the PUSH carried as its first block (push.py), in the
    place of an :class:`IVChain` in a :class:`Decryption`."""

    kek: KEKKey = attrs.field(repr=False)
    iv: bytes

    def encrypt(self, message: Message, ctx: Context | None = None) -> tuple[bytes, "PushChain"]:
        """The PUSH datagram: header, the IV, then the body (payloads and kept padding) under the KEK."""
        cipher = push.kek_cipher(self.kek.key_bits)
        body = message.body(ctx or push.CTX)
        if len(body) % cipher.block_size:
            raise EncodeError(f"a PUSH body of {len(body)} octets is not whole {cipher.block_size}-octet blocks")
        ciphertext = cipher.encrypt(self.kek.key, self.iv, body)
        header = attrs.evolve(message, flags=int(message.flags | Flags.ENCRYPTION))
        return header.header_bytes(len(self.iv) + len(ciphertext)) + self.iv + ciphertext, self


def kek_decryptor(kek: KEKKey) -> KEKDecryptor:
    """The :data:`KEKDecryptor` of one KEK: opens its PUSH messages with push.open_push and decodes their payloads;
    a message that does not open or decode gets a Decryption with the reason."""
    cipher = push.kek_cipher(kek.key_bits)

    def decrypt(message: Message, doi: int) -> Decryption:
        try:
            header, plaintext = push.open_push(message.encode(), kek.spi, kek.key, kek.key_bits)
            clear = header.with_plaintext(plaintext, DOI.GDOI, push.CTX)
        except push.PushError as e:
            return Decryption(error=f"does not open under the KEK ({cipher.name}): {e.reason}")
        except DecodeError as e:
            return Decryption(error=f"does not decrypt under the KEK ({cipher.name}): {e.reason}")
        return Decryption(clear, PushChain(kek, header.ciphertext[: cipher.block_size]))

    return decrypt


def kek_decryptors(keks: Mapping[bytes, KEKKey]) -> dict[bytes, KEKDecryptor]:
    """A :data:`KEKDecryptor` for each KEK of a keylog, by KEK SPI (for :class:`Decryptor`'s ``keks``)."""
    return {spi: kek_decryptor(kek) for spi, kek in keks.items()}


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
        self._pushes_seen: set[bytes] = set()

    def __call__(self, datagram, message: Message, doi: int) -> Decryption | None:
        return self.decrypt(message, doi)

    def decrypt(self, message: Message, doi: int = DOI.IPSEC) -> Decryption | None:
        """Learn from ``message`` when it is in clear (and return None), else decrypt it."""
        if message.ciphertext is None:
            self._learn(message)
            return None
        data = message.encode()
        if doi == DOI.GDOI and message.exchange_type == ExchangeType.GROUPKEY_PUSH:
            kek = self.keks.get(message.spi)
            if kek is None:
                return Decryption(error=f"no KEK key for KEK SPI {message.spi.hex()} (GROUPKEY-PUSH)")
            # A PUSH goes out several times, the same octets to the group and to each member (no chain moves).
            seen = data in self._pushes_seen
            self._pushes_seen.add(data)
            return attrs.evolve(kek(message, doi), retransmission=seen)
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
